"""AUROC, AURC and the risk–coverage curve against scikit-learn and naive loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import metrics as M
from exitwise.exceptions import UndefinedMetricWarning


def naive_aurc(conf, hit):
    """Mean over all orders of tied samples of the sorted-order AURC (brute force)."""
    conf, hit = np.asarray(conf, float), np.asarray(hit, bool)
    values = sorted(set(conf.tolist()), reverse=True)
    groups = [np.flatnonzero(conf == v) for v in values]
    totals = []
    for orders in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
        order = np.concatenate(orders)
        err = (~hit[order]).cumsum() / np.arange(1, len(order) + 1)
        totals.append(err.mean())
    return float(np.mean(totals))


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=2, max_size=40),
)
def test_auroc_equals_scikit_learn_with_ties(data):
    from sklearn.metrics import roc_auc_score

    conf = np.array([d[0] for d in data], dtype=float) / 4
    hit = np.array([d[1] for d in data])
    if hit.all() or not hit.any():
        with pytest.warns(UndefinedMetricWarning, match="all correct or all wrong"):
            assert math.isnan(float(M.auroc(conf, hit)))
        return
    assert float(M.auroc(conf, hit)) == pytest.approx(roc_auc_score(hit, conf), abs=1e-12)


def test_auroc_batched_over_exits_and_undefined_exit():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    conf = rng.random((200, 3))
    hit = rng.random((200, 3)) < conf
    hit[:, 2] = True
    with pytest.warns(UndefinedMetricWarning, match="1 exit"):
        result = M.auroc(conf, hit)
    for e in range(2):
        assert float(result[e]) == pytest.approx(roc_auc_score(hit[:, e], conf[:, e]), abs=1e-12)
    assert math.isnan(float(result[2]))


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=7))
def test_aurc_is_expected_value_over_tie_orders(data):
    conf = np.array([d[0] for d in data], dtype=float)
    hit = np.array([d[1] for d in data])
    assert float(M.aurc(conf, hit)) == pytest.approx(naive_aurc(conf, hit), abs=1e-12)


def test_aurc_without_ties_is_the_plain_definition_and_batched():
    rng = np.random.default_rng(1)
    conf = rng.random((300, 2))
    hit = rng.random((300, 2)) < conf
    result = M.aurc(conf, hit)
    for e in range(2):
        order = np.argsort(-conf[:, e])
        risks = (~hit[order, e]).cumsum() / np.arange(1, 301)
        assert float(result[e]) == pytest.approx(risks.mean(), abs=1e-12)


def test_risk_coverage_curve_points():
    conf = torch.tensor([0.9, 0.5, 0.9, 0.1, 0.5])
    hit = torch.tensor([True, False, False, True, True])
    cov, risk, thr = M.risk_coverage_curve(conf, hit)
    assert thr.tolist() == [0.8999999761581421, 0.5, 0.10000000149011612]
    assert cov.tolist() == [0.4, 0.8, 1.0]
    assert risk.tolist() == pytest.approx([0.5, 0.5, 0.4])
    for t, c, r in zip(thr, cov, risk, strict=True):
        m = conf >= t
        assert float(m.double().mean()) == pytest.approx(float(c))
        assert float((~hit[m]).double().mean()) == pytest.approx(float(r))


def test_selective_validation():
    with pytest.raises(TypeError, match="`correct` to be a boolean tensor"):
        M.auroc(torch.rand(5), torch.ones(5))
    with pytest.raises(ValueError, match="shape of `confidence`"):
        M.aurc(torch.rand(5), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"shape \[N\] \(one exit\)"):
        M.risk_coverage_curve(torch.rand(5, 2), torch.ones(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="NaN"):
        M.auroc(torch.tensor([0.1, float("nan")]), torch.tensor([True, False]))


def test_selective_on_device(device):
    rng = np.random.default_rng(2)
    conf = rng.random((100, 2))
    hit = rng.random((100, 2)) < conf
    for fn in [M.auroc, M.aurc]:
        out = fn(torch.tensor(conf, device=device), torch.tensor(hit, device=device))
        assert out.device.type == device
        assert torch.allclose(out.cpu(), fn(conf, hit))
