"""One coherent policy API (issue 20): a regression test per finding, named after it."""

from __future__ import annotations

import inspect
import json
import math
import tempfile
import warnings

import numpy as np
import pytest
import torch

from exitwise.policies import (
    AccuracyAtLeast,
    DecayedSignal,
    Evaluation,
    ExitScores,
    Guarantee,
    PolicyResult,
    certify,
    evaluate,
    evaluate_policy,
    evaluate_thresholds,
    geometric_budget_policy,
    risk_controlled_threshold,
    tune,
    tune_for_accuracy,
    tune_for_budget,
    tune_for_latency,
)
from tests.conftest import as_sequences

LATENCIES = [2.0, 4.0, 6.0, 8.0]


@pytest.fixture(scope="module")
def halves(real_outputs):
    return real_outputs[:6000].split(0.5, seed=0)


@pytest.fixture(scope="module")
def tokens(real_outputs):
    """Real logits cut into dependent 'sequences' of 40 tokens (groups and positions)."""
    return as_sequences(real_outputs[:6000], 40).split(0.5, seed=0)[0]


# ------------------------------------------------------------------ 1. wrong or silent results
def test_regression_tune_for_latency_keeps_groups_and_positions(tokens):
    decayed = DecayedSignal("max_probability", length=40.0)
    point = tune_for_latency(tokens, decayed, LATENCIES, 90, 6.0)  # raised "no positions"
    assert point.feasible and point.evaluation.cost_percentiles[90.0] <= 6.0
    sure = tune_for_latency(tokens, "max_probability", LATENCIES, 90, 6.0, confidence=0.9)
    assert sure.guarantee.unit == "sequence"  # was certified over tokens as if independent
    assert sure.guarantee.num_units == tokens.num_groups
    timed = ExitScores(tokens, decayed).with_costs(LATENCIES)
    assert torch.equal(timed.groups, tokens.groups) and torch.equal(
        timed.positions, tokens.positions
    )


def test_regression_certify_takes_a_decayed_signal(tokens):
    decayed = DecayedSignal("max_probability", length=40.0)
    res = certify(tokens, decayed, {"disagreement": 0.1, "cost": 0.8}, confidence=0.9)
    assert res.certified and res.policy.signal == decayed
    assert res.guarantee.unit == "sequence"


def test_regression_tensor_and_callable_signals_are_checked_before_the_search(halves):
    cal, _ = halves
    wrong = torch.rand(cal.num_samples + 1, cal.num_exits)
    with pytest.raises(ValueError, match=r"shape \[3001, 4\], but the outputs have"):
        tune_for_budget(cal, wrong, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        tune_for_budget(cal, torch.full((cal.num_samples, cal.num_exits), math.nan), 0.5)
    with pytest.raises(TypeError, match="signal"):
        tune_for_budget(cal, 3.0, 0.5)
    # a tensor and a callable are both signals: the tuners return policies on them
    scores = ExitScores(cal, "max_probability").scores
    by_tensor = tune_for_budget(cal, scores.clone(), 0.5)
    by_name = tune_for_budget(cal, "max_probability", 0.5)
    assert by_tensor.evaluation == by_name.evaluation
    by_callable = tune_for_budget(cal, lambda out: ExitScores(out, "max_probability").scores, 0.5)
    assert by_callable.evaluation == by_name.evaluation
    assert torch.equal(by_callable.policy.exit_indices(cal), by_name.policy.exit_indices(cal))
    with pytest.raises(TypeError, match="register_signal"):
        by_callable.policy.to_dict()


# ------------------------------------------------------------------ 2. one name per concept
def test_regression_one_word_for_confidence_and_limit(halves):
    cal, _ = halves
    new = risk_controlled_threshold(cal, "max_probability", limit=0.05, confidence=0.9)
    with pytest.warns(DeprecationWarning, match="use `limit`"):
        old = risk_controlled_threshold(cal, "max_probability", delta=0.05, confidence=0.9)
    assert old.shared_threshold == new.shared_threshold
    with pytest.warns(DeprecationWarning, match="use `confidence"):
        old = risk_controlled_threshold(cal, "max_probability", limit=0.05, epsilon=0.1)
    assert old.shared_threshold == new.shared_threshold
    with pytest.raises(TypeError, match="not both"):
        risk_controlled_threshold(cal, "max_probability", limit=0.05, delta=0.05, confidence=0.9)
    limits = {"disagreement": 0.05, "cost": 0.6}
    a = certify(cal, "max_probability", limits, confidence=0.9)
    with pytest.warns(DeprecationWarning, match="use `confidence"):
        b = certify(cal, "max_probability", limits, 0.1)  # the old fourth argument, epsilon
    with pytest.warns(DeprecationWarning, match="use `limits`"):
        c = certify(cal, "max_probability", risks=limits, confidence=0.9)
    assert a.policy == b.policy == c.policy and b.guarantee.confidence == pytest.approx(0.9)
    from exitwise.monitor import RiskMonitor

    with pytest.warns(DeprecationWarning, match="use `confidence"):
        m = RiskMonitor(0.05, num_exits=4, alpha=0.1)
    assert m.confidence == pytest.approx(0.9) and m.summary()["confidence"] == m.confidence


def test_regression_relative_has_one_default_and_percentiles_one_style(halves):
    cal, _ = halves
    with pytest.warns(FutureWarning, match="relative` now defaults to True"):
        implicit = tune_for_accuracy(cal, "max_probability", 0.99)
    explicit = tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
    assert implicit.policy == explicit.policy
    assert implicit.limits["accuracy"] == pytest.approx(
        0.99 * float(cal.correct()[:, -1].double().mean())
    )
    budget = tune_for_budget(cal, "max_probability", 0.5)  # relative, as before
    assert budget.evaluation.relative_cost <= 0.5 + 1e-12
    with pytest.warns(DeprecationWarning, match="use `relative`"):
        old = AccuracyAtLeast(0.87, relative_to_final=False)
    assert old == AccuracyAtLeast(0.87, relative=False)
    # one style of percentile: percent everywhere; quantiles (fractions) warn
    s = ExitScores(cal, "max_probability")
    thr = torch.tensor([[0.9, 0.9, 0.9, 0.0]], dtype=torch.float64)
    new = evaluate_thresholds(s.scores, s.correct(), s.costs, thr, percentiles=[50, 99])
    with pytest.warns(DeprecationWarning, match="use `percentiles"):
        old = evaluate_thresholds(s.scores, s.correct(), s.costs, thr, quantiles=[0.5, 0.99])
    assert torch.equal(new.cost_quantiles, old.cost_quantiles) and new.percentiles == (50.0, 99.0)
    tuned = tune(s, None, "cost", [AccuracyAtLeast(0.87, relative=False)], percentiles=[99])
    assert set(tuned.evaluation.cost_percentiles) == {99.0}


def test_regression_unit_token_is_accepted_and_sequences_are_the_default(tokens):
    by_seq = risk_controlled_threshold(tokens, "max_probability", limit=0.1, confidence=0.9)
    by_token = risk_controlled_threshold(
        tokens, "max_probability", limit=0.1, confidence=0.9, unit="token"
    )
    assert by_seq.guarantee.unit == "sequence" and by_token.guarantee.unit == "sample"
    assert by_token.guarantee.num_units == tokens.num_samples
    assert by_seq.guarantee.num_units == tokens.num_groups


# ------------------------------------------------------------------ 3. one result type
def test_regression_every_chooser_returns_one_typed_result(halves):
    cal, test = halves
    s = ExitScores(cal, "max_probability")
    results = [
        tune(s, None, "cost", [AccuracyAtLeast(0.87, relative=False)]),
        tune_for_accuracy(s, target=0.99, relative=True),
        tune_for_accuracy(s, target=0.85, relative=False, confidence=0.9),
        tune_for_budget(s, budget=0.5),
        tune_for_budget(s, budget=0.5, confidence=0.9),
        tune_for_latency(s, latencies=LATENCIES, percentile=90, limit=6.0),
        tune_for_latency(s, latencies=LATENCIES, percentile=90, limit=6.0, confidence=0.9),
        risk_controlled_threshold(s, limit=0.05, confidence=0.9),
        certify(s, limits={"disagreement": 0.05, "cost": 0.6}, confidence=0.9),
        geometric_budget_policy(s, budget=0.5),
    ]
    for r in results:
        assert type(r) is PolicyResult and r.feasible
        assert isinstance(r.evaluation, Evaluation) and r.reason is None
        assert isinstance(r.report(ExitScores(test, "max_probability")), Evaluation)
        json.dumps(r.summary())  # every field is JSON
    for r in (results[2], results[4], results[6], results[7], results[8]):
        assert isinstance(r.guarantee, Guarantee) and r.guarantee.unit == "sample"
        assert max(r.guarantee.p_values.values()) <= 0.1 + 1e-12
    # one route to a certified shared threshold
    direct = risk_controlled_threshold(s, risk="error", limit=0.15, confidence=0.9)
    assert results[2].policy == direct.policy
    assert results[2].guarantee.p_values["error"] == pytest.approx(
        direct.guarantee.p_values["error"]
    )
    assert results[2].guarantee.procedure == direct.guarantee.procedure == "learn_then_test"


def test_regression_no_policy_carries_the_reason_and_the_best_achievable(halves):
    cal, _ = halves
    for r in (
        tune_for_accuracy(cal, "max_probability", 0.999, relative=False),
        tune_for_accuracy(cal[:50], "max_probability", 0.99, relative=False, confidence=0.9),
        risk_controlled_threshold(
            cal[:20], "max_probability", risk="error", limit=0.01, confidence=0.99
        ),
        certify(cal, "max_probability", {"disagreement": 0.0001, "cost": 0.1}),
    ):
        assert r.policy is None and not r.feasible and r.evaluation is None
        assert r.reason and r.reason[-1] != " " and r.best_achievable
        with pytest.raises(ValueError, match="nothing to report"):
            r.report(cal)
    best = tune_for_accuracy(cal, "max_probability", 0.999, relative=False).best_achievable
    assert best["accuracy"] == pytest.approx(float(cal.correct().double().mean(0).max()), abs=0.01)


def test_regression_old_result_names_and_fields_warn():
    import exitwise.policies as policies

    for old in ("TunedPolicy", "RiskControlResult", "CertifiedPolicy"):
        with pytest.warns(DeprecationWarning, match="use `PolicyResult`"):
            assert getattr(policies, old) is PolicyResult


def test_regression_old_result_fields_warn_and_agree(halves):
    cal, _ = halves
    tuned = tune_for_budget(cal, "max_probability", 0.5)
    with pytest.warns(DeprecationWarning, match="PolicyResult.achieved"):
        achieved = tuned.achieved
    assert achieved["accuracy"] == tuned.evaluation.accuracy
    res = risk_controlled_threshold(cal, "max_probability", limit=0.05, confidence=0.9)
    with pytest.warns(DeprecationWarning, match="shared_threshold"):
        assert res.threshold == res.shared_threshold
    with pytest.warns(DeprecationWarning, match="1 - guarantee.confidence"):
        assert res.epsilon == pytest.approx(0.1)
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        res.nonsense  # noqa: B018


# ------------------------------------------------------------------ 4. sequences on every path
def test_every_tuner_and_certifier_keeps_sequences(tokens):
    decayed = DecayedSignal("max_probability", length=40.0)
    s = ExitScores(tokens, decayed)
    assert s.groups is tokens.groups and s.positions is tokens.positions
    point = [
        tune(s, None, "cost", [AccuracyAtLeast(0.99, relative=True)]),
        tune_for_accuracy(s, target=0.99, relative=True),
        tune_for_budget(s, budget=0.6),
        tune_for_latency(s, latencies=LATENCIES, percentile=90, limit=6.0),
    ]
    certified = [
        tune_for_accuracy(s, target=0.8, relative=False, confidence=0.9),
        tune_for_budget(s, budget=0.6, confidence=0.9),
        tune_for_latency(s, latencies=LATENCIES, percentile=90, limit=6.0, confidence=0.9),
        risk_controlled_threshold(s, limit=0.1, confidence=0.9),
        certify(s, limits={"disagreement": 0.1, "cost": 0.8}, confidence=0.9),
    ]
    for r in point + certified:
        assert r.feasible and r.policy.signal == decayed
        # the decayed policy runs on the same tokens (positions were kept)
        assert r.policy.exit_indices(tokens).shape == (tokens.num_samples,)
    for r in certified:
        assert r.guarantee.unit == "sequence" and r.unit == "sequence"
        assert r.guarantee.num_units <= tokens.num_groups


# ------------------------------------------------------------------ 5. work done once
def _count_signal_computations(monkeypatch):
    import exitwise.signals as signals

    calls = {"n": 0}
    original = signals._scores_of_code

    def spy(code, logits, rest=0):
        calls["n"] += 1
        return original(code, logits, rest)

    monkeypatch.setattr(signals, "_scores_of_code", spy)
    return calls


def test_regression_one_tuning_call_computes_the_signal_once(halves, monkeypatch):
    cal, test = halves
    calls = _count_signal_computations(monkeypatch)
    tuned = tune_for_accuracy(cal, "max_probability", 0.99, relative=True)
    assert calls["n"] == 1
    s = ExitScores(test, "max_probability")
    calls["n"] = 0
    tuned.report(s)
    evaluate(tuned.policy, s)
    evaluate_policy(tuned.policy, s)
    tuned.policy.exit_indices(s)
    certify(s, limits={"disagreement": 0.05, "cost": 0.6})
    assert calls["n"] == 0  # scores are read, not recomputed


def test_regression_build_report_computes_each_signal_once_per_split(real_outputs, monkeypatch):
    from exitwise.report import build_report

    calls = _count_signal_computations(monkeypatch)
    with tempfile.TemporaryDirectory() as d:
        build_report(real_outputs[:2000], d, n_resamples=10, calibrators=("temperature",))
    assert calls["n"] == 2  # was 9: one per split now


# ------------------------------------------------------------------ 6. no kwargs dicts passed on
def test_regression_certified_tuning_takes_named_arguments():
    from exitwise.policies.certified_tuning import certified_tuning

    params = inspect.signature(certified_tuning).parameters
    assert not any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values())
    assert "kwargs" not in params


def test_regression_pareto_plot_takes_computed_results(halves):
    pytest.importorskip("matplotlib")
    from exitwise import plots
    from exitwise.policies import FixedExitPolicy, OracleExit, held_out_frontier

    cal, test = halves
    cal_s, test_s = ExitScores(cal, "max_probability"), ExitScores(test, "max_probability")
    front = held_out_frontier(cal_s, test_s, budgets=[0.5])
    tuned = tune_for_accuracy(cal_s, target=0.99, relative=True)
    ax = plots.pareto_plot(
        front,
        fixed=evaluate([FixedExitPolicy(e) for e in range(4)], test_s),
        oracle=evaluate(OracleExit(), test_s),
        chosen=tuned.report(test_s),
        full_cost=test_s.full_cost,
        held_out=True,
    )
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("shared thresholds" in t for t in labels) and "chosen policy" in labels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.risk_coverage_plot(test_s)
    assert np.isfinite(test_s.full_cost)


def test_regression_library_internals_print_no_progress_bars(halves, monkeypatch):
    # issue 24 item 11: one certify call printed 24 tqdm bars (its per-exit searches)
    import exitwise.policies.search as search

    asked = []
    original = search._progress_bar

    def spy(total, size, progress):
        asked.append(progress)
        return original(total, size, progress)

    monkeypatch.setattr(search, "_progress_bar", spy)
    cal, _ = halves
    certify(cal, "max_probability", {"disagreement": 0.05, "cost": 0.6})
    assert asked and set(asked) == {False}  # internal searches stay quiet
    asked.clear()
    tune_for_budget(cal, "max_probability", 0.5)  # a long top-level call may show one
    assert asked == [None]
