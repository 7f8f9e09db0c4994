"""Centred isotonic regression against a plain pool-adjacent-violators loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise.calibrate import CentredIsotonic, Isotonic, load_calibrator
from exitwise.calibrate.centred_isotonic import centred_isotonic_knots


def naive_centred_isotonic(x, y):
    """PAV on the points sorted by x (equal x pooled first), then block centroids."""
    xs = sorted(set(x))
    blocks = [
        [
            sum(yy for xx, yy in zip(x, y, strict=True) if xx == v),
            sum(1 for xx in x if xx == v),
            sum(xx for xx in x if xx == v),
        ]
        for v in xs
    ]  # [sum y, count, sum x]
    merged = []
    for b in blocks:
        merged.append(list(b))
        while len(merged) > 1 and merged[-2][0] / merged[-2][1] >= merged[-1][0] / merged[-1][1]:
            last = merged.pop()
            merged[-1] = [merged[-1][i] + last[i] for i in range(3)]
    return (np.array([b[2] / b[1] for b in merged]), np.array([b[0] / b[1] for b in merged]))


@given(
    st.lists(
        st.tuples(
            st.sampled_from([0.1, 0.2, 0.35, 0.5, 0.7, 0.9, 0.95]), st.sampled_from([0.0, 1.0])
        ),
        min_size=1,
        max_size=40,
    )
)
@settings(max_examples=80, deadline=None)
def test_knots_equal_a_naive_pav_loop(points):
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    knots, values = centred_isotonic_knots(x, y)
    ref_knots, ref_values = naive_centred_isotonic(x.tolist(), y.tolist())
    assert np.allclose(knots, ref_knots) and np.allclose(values, ref_values)


def test_calibrator_is_increasing_between_centroids_and_round_trips(real_outputs, tmp_path):
    cal, test = real_outputs.split(0.5, seed=0)
    cir = CentredIsotonic().fit(cal)
    iso = Isotonic().fit(cal)
    grid = torch.linspace(0.3, 0.99, 200, dtype=torch.float64)
    for e in range(cal.num_exits):
        knots = cir.exit_maps_[e]["x"]
        inside = grid[(grid > knots[0]) & (grid < knots[-1])]
        mapped = cir.confidence_map(inside, exit=e)
        assert bool((mapped[1:] >= mapped[:-1]).all())
        # isotonic's steps and the centred fit share their values at the centroids' blocks
        assert float(mapped.max()) <= 1.0 and float(iso.confidence_map(inside, e).max()) <= 1.0
    out = cir.transform(test)
    assert torch.equal(out.predictions(), test.predictions())
    assert torch.allclose(out.probs().sum(-1), torch.ones((), dtype=out.probs().dtype), atol=1e-6)
    cir.save(tmp_path / "cir.json")
    again = load_calibrator(tmp_path / "cir.json")
    assert torch.allclose(again.transform(test).logits, out.logits)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        centred_isotonic_knots(np.array([]), np.array([]))


def test_one_vs_rest_mode_is_per_class_centred_isotonic(real_outputs):
    from exitwise.calibrate._toplabel import interpolate

    cal, test = real_outputs[:4000].split(0.5, seed=0)
    out = CentredIsotonic(mode="one_vs_rest").fit(cal).transform(test)
    probs_cal = torch.softmax(cal.logits[:, 2].double(), -1).numpy()
    probs_test = torch.softmax(test.logits[:, 2].double(), -1)
    raw = []
    for c in range(10):
        x, y = centred_isotonic_knots(probs_cal[:, c], (cal.labels == c).double().numpy())
        raw.append(interpolate(probs_test[:, c], torch.as_tensor(x), torch.as_tensor(y)))
    raw = torch.stack(raw, -1).clamp(min=1e-12)
    assert torch.allclose(out.logits[:, 2].exp(), raw / raw.sum(-1, keepdim=True))
