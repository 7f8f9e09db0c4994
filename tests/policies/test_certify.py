"""Bounded losses, p-values (binomial, Hoeffding-Bentkus, WSR), recall policies, Pareto Testing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom

from exitwise import ExitOutputs
from exitwise.policies import (
    ExitController,
    ThresholdPolicy,
    certify,
    evaluate,
    evaluate_thresholds,
    first_exit,
    load_policy,
    risk_controlled_threshold,
    tune_for_accuracy,
)
from exitwise.policies.losses import loss_table
from exitwise.policies.p_values import (
    betting_capital,
    hoeffding_bentkus_p_value,
    p_value_of_losses,
    wsr_p_value,
)
from exitwise.policies.pareto_testing import non_dominated
from exitwise.policies.recall import recall_indices, recalled_outcome
from exitwise.signals import compute_signal


# ----------------------------------------------------------------------------- p-values
def naive_wsr_p_value(x, delta, alpha):
    """Waudby-Smith & Ramdas' predictable plug-in capital, one sample at a time."""
    n = len(x)
    total, sq, capital, best = 0.0, 0.0, 1.0, 1.0
    var_before = 0.25
    for t in range(1, n + 1):
        lam = min(math.sqrt(2 * math.log(1 / alpha) / (var_before * n)), 0.75 / (1 - delta))
        capital *= 1 + lam * (delta - x[t - 1])
        best = max(best, capital)
        total += x[t - 1]
        mu = (0.5 + total) / (t + 1)
        sq += (x[t - 1] - mu) ** 2
        var_before = (0.25 + sq) / (t + 1)
    return min(1.0, 1.0 / best)


@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=60),
    st.floats(0.01, 0.99),
    st.floats(0.01, 0.5),
)
@settings(max_examples=60, deadline=None)
def test_wsr_p_value_equals_a_naive_loop(x, delta, alpha):
    assert wsr_p_value(np.array(x), delta, alpha) == pytest.approx(
        naive_wsr_p_value(x, delta, alpha), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("method", ["binomial", "hoeffding_bentkus", "wsr"])
def test_p_values_are_valid_at_the_boundary(method):
    """H0 true with the risk exactly at delta: P(p <= alpha) <= alpha (+ Monte-Carlo noise)."""
    rng = np.random.default_rng(1)
    delta, alpha, n, trials = 0.1, 0.1, 200, 2000
    rejections = sum(
        p_value_of_losses(rng.random(n) < delta, delta, method, alpha=alpha) <= alpha
        for _ in range(trials)
    )
    assert rejections / trials <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


def test_p_values_on_bounded_losses_and_their_errors():
    rng = np.random.default_rng(0)
    small = rng.beta(1, 60, size=2000)  # mean ~0.016, small variance
    assert wsr_p_value(small, 0.03) < hoeffding_bentkus_p_value(small.mean(), 2000, 0.03)
    assert p_value_of_losses(np.zeros(50), 0.1) == pytest.approx(binom.cdf(0, 50, 0.1))
    with pytest.raises(ValueError, match="0/1 losses only"):
        p_value_of_losses(small, 0.03, "binomial")
    with pytest.raises(ValueError, match=r"`losses` in \[0, 1\].*1.5 at position 1"):
        wsr_p_value([0.0, 1.5], 0.1)
    with pytest.raises(ValueError, match="`p_value` to be one of"):
        p_value_of_losses([0.0], 0.1, "bonferroni")
    with pytest.raises(ValueError, match="`null_mean` in"):
        betting_capital([0.0], 1.0, alternative="less", alpha=0.1)


def test_betting_capital_rows_for_several_nulls():
    x = np.r_[np.zeros(30), np.ones(5)]
    grid = np.array([0.1, 0.3])
    rows = betting_capital(x, grid, alternative="greater", alpha=0.05)
    for row, m in zip(rows, grid, strict=True):
        assert np.allclose(row, betting_capital(x, m, alternative="greater", alpha=0.05))


# ----------------------------------------------------------------------------- losses, recall
def test_loss_tables_against_a_naive_loop(real_outputs):
    out = real_outputs[:200]
    pred, log_p = out.predictions(), out.log_probs().double()
    scores = compute_signal(out, "max_probability")
    for recall in ("none", "most_confident"):
        tables = {
            r: loss_table(out, r, scores=scores, recall=recall, nll_bound=0.5)
            for r in ("error", "disagreement", "nll_excess", "cost")
        }
        for n in range(0, 200, 17):
            for e in range(out.num_exits):
                a = e
                if recall == "most_confident":
                    a = max(j for j in range(e + 1) if scores[n, j] == scores[n, : e + 1].max())
                y = int(out.labels[n])
                assert tables["error"][n, e] == float(pred[n, a] != y)
                assert tables["disagreement"][n, e] == float(pred[n, a] != pred[n, -1])
                excess = float(log_p[n, -1, y] - log_p[n, a, y])
                assert tables["nll_excess"][n, e] == pytest.approx(min(1, max(0, excess) / 0.5))
                assert tables["cost"][n, e] == float(out.costs[e] / out.costs[-1])
    with pytest.raises(ValueError, match="needs labels"):
        loss_table(ExitOutputs(out.logits), "error")
    with pytest.raises(ValueError, match="needs the policy's `scores`"):
        loss_table(out, "error", recall="most_confident")


@given(
    st.lists(
        st.lists(st.sampled_from([0.1, 0.5, 0.9, 1.0]), min_size=3, max_size=3),
        min_size=1,
        max_size=8,
    )
)
@settings(max_examples=50, deadline=None)
def test_recall_indices_equal_a_naive_loop(rows):
    scores = torch.tensor(rows, dtype=torch.float64)
    got = recall_indices(scores)
    for n, row in enumerate(rows):
        for e in range(3):
            best = max(row[: e + 1])
            assert int(got[n, e]) == max(j for j in range(e + 1) if row[j] == best)


def test_recall_policy_evaluation_tuning_and_controller_are_exact(real_outputs):
    out = real_outputs[:1500]
    scores = compute_signal(out, "max_probability")
    policy = ThresholdPolicy("max_probability", [0.97, 0.9, 0.85, 0.0], recall="most_confident")
    exits, answers = policy.exit_indices(out), policy.answer_indices(out)
    naive = []
    for n in range(out.num_samples):
        e = next(j for j in range(4) if j == 3 or scores[n, j] >= policy.thresholds[j])
        naive.append(max(j for j in range(e + 1) if scores[n, j] == scores[n, : e + 1].max()))
    assert torch.equal(answers, torch.tensor(naive)) and bool((answers <= exits).all())
    acc = (out.predictions().gather(1, answers[:, None])[:, 0] == out.labels).double().mean()
    ev = evaluate(policy, out)
    assert float(ev.accuracy[0]) == pytest.approx(float(acc))
    # the dense and bitset kernels on the recalled outcome, and the mixed-policy path
    thr = torch.tensor([policy.thresholds] * 20, dtype=torch.float64)
    recalled = recalled_outcome(out.correct(), scores)
    for backend in ("dense", "bitset"):
        r = evaluate_thresholds(scores, recalled, out.costs, thr, backend=backend)
        assert float(r.accuracy[0]) == pytest.approx(float(acc))
    mixed = evaluate([policy, ThresholdPolicy("max_probability", 0.9)], out)
    assert float(mixed.accuracy[0]) == pytest.approx(float(acc))
    # controller (eager and TorchScript) answers like the offline policy
    controller = ExitController.from_policy(policy)
    for ctl in (controller, torch.jit.script(controller)):
        state = controller.initial_recall_state(out.num_samples)
        answer = torch.full((out.num_samples,), -1)
        done_before = torch.zeros(out.num_samples, dtype=torch.bool)
        for e in range(4):
            done, ans, state = ctl.decide_with_recall(e, out.logits[:, e], state)
            new = done & ~done_before
            answer[new] = ans[new]
            done_before |= done
        assert torch.equal(answer, policy.predictions(out))
    # tuning a recall policy, and the policy file round trip
    tuned = tune_for_accuracy(out, "max_probability", 0.85, recall="most_confident", relative=False)
    assert tuned.policy.recall == "most_confident"
    assert float(evaluate(tuned.policy, out).accuracy[0]) == pytest.approx(
        tuned.evaluation.accuracy
    )
    assert ThresholdPolicy("max_probability", 0.5).params().get("recall") is None
    with pytest.raises(ValueError, match="fallback='most_confident'"):
        ThresholdPolicy("max_probability", 0.5, fallback="most_confident", recall="most_confident")


def test_recall_policy_file_round_trips(tmp_path):
    policy = ThresholdPolicy("margin", [0.5, math.inf, 0.1], recall="most_confident")
    policy.save(tmp_path / "p.json")
    assert load_policy(tmp_path / "p.json") == policy


# ----------------------------------------------------------------------------- risk control
def test_shared_ltt_with_bounded_risks_and_wsr(real_outputs):
    cal = real_outputs[:3000]
    res = risk_controlled_threshold(
        cal, "max_probability", risk="nll_excess", limit=0.05, confidence=0.95
    )
    assert res.certified  # default p-value for a bounded loss is WSR
    exits = first_exit(
        compute_signal(cal, "max_probability"),
        torch.full((4,), res.shared_threshold, dtype=torch.float64),
    )
    table = loss_table(cal, "nll_excess")
    assert res.guarantee.empirical_risks["nll_excess"] == pytest.approx(
        float(table.gather(1, exits[:, None]).mean())
    )
    with pytest.raises(ValueError, match="0/1 losses only"):
        risk_controlled_threshold(
            cal, "max_probability", risk="cost", limit=0.5, confidence=0.9, p_value="binomial"
        )


# ----------------------------------------------------------------------------- Pareto Testing
def test_non_dominated_against_a_naive_loop():
    rng = np.random.default_rng(0)
    pts = torch.as_tensor(rng.integers(0, 6, size=(300, 3)).astype(float))
    mask = non_dominated(pts, chunk=64)
    for i in range(300):
        dominated = any(
            bool((pts[j] <= pts[i]).all() and (pts[j] < pts[i]).any()) for j in range(300)
        )
        duplicate = any(bool((pts[j] == pts[i]).all()) for j in range(i))
        assert bool(mask[i]) == (not dominated and not duplicate)


def test_certify_reports_every_risk_and_is_reproducible(real_outputs):
    cal = real_outputs[:4000]
    res = certify(cal, "max_probability", {"disagreement": 0.05, "cost": 0.6}, confidence=0.95, seed=3)
    assert res.certified and set(res.guarantee.p_values) == {"disagreement", "cost"}
    assert max(res.guarantee.p_values.values()) <= 0.05
    assert res.guarantee.p_value_methods == {"disagreement": "binomial", "cost": "wsr"}
    assert res.path.num_tested in (res.path.num_passed, res.path.num_passed + 1)
    assert res.path.num_optimisation + res.guarantee.num_units == 4000
    again = certify(cal, "max_probability", {"disagreement": 0.05, "cost": 0.6}, confidence=0.95, seed=3)
    assert again.policy == res.policy
    g = res.guarantee.to_dict()
    assert g["limits"] == {"disagreement": 0.05, "cost": 0.6} and g["num_units"] == 2000
    impossible = certify(cal[:100], "max_probability", {"error": 0.01}, confidence=0.95)
    assert not impossible.certified and impossible.policy is None
    with pytest.raises(TypeError, match="non-empty dict"):
        certify(cal, "max_probability", {}, confidence=0.95)
    with pytest.raises(ValueError, match="`limits` to be one of"):
        certify(cal, "max_probability", {"latency": 0.1}, 0.05)
    with pytest.raises(ValueError, match=r"limits\['cost'\]"):
        certify(cal, "max_probability", {"cost": 1.5}, 0.05)


@pytest.mark.slow
def test_pareto_testing_validity_over_500_splits(real_outputs):
    """Each certified risk is violated on held-out data at rate <= epsilon (+ MC noise)."""
    limits, epsilon, n_cal, trials = {"disagreement": 0.05, "cost": 0.5}, 0.1, 2000, 500
    scores = compute_signal(real_outputs, "max_probability").double()
    tables = {r: loss_table(real_outputs, r) for r in limits}
    gen = torch.Generator().manual_seed(0)
    violations = dict.fromkeys(limits, 0)
    certified = 0
    for trial in range(trials):
        perm = torch.randperm(real_outputs.num_samples, generator=gen)
        cal_idx, test_idx = perm[:n_cal], perm[n_cal:]
        res = certify(
            real_outputs[cal_idx],
            "max_probability",
            limits,
            confidence=1 - epsilon,
            seed=trial,
            num_candidates=300,
            tuned_levels=4,
        )
        if not res.certified:
            continue
        certified += 1
        thr = torch.tensor(res.policy.thresholds, dtype=torch.float64)
        exits = first_exit(scores[test_idx], thr)[:, None]
        for r, limit in limits.items():
            violations[r] += float(tables[r][test_idx].gather(1, exits).mean()) > limit
    allowed = epsilon + 3 * math.sqrt(epsilon * (1 - epsilon) / trials)
    assert certified >= trials * 0.9
    for r in limits:
        assert violations[r] / trials <= allowed, (r, violations[r] / trials, certified)


def test_regression_certify_at_large_n_searches_a_bounded_optimisation_part(real_outputs):
    # issue 24 item 7: certify on N = 2M ran 1,148 s and returned nothing without a reason;
    # the front is now found on at most `max_optimisation` samples (the testing part stays
    # whole, so the guarantee is unchanged) and a failure states its reason in full
    cal = real_outputs[:6000]
    limits = {"disagreement": 0.05, "cost": 0.6}
    small = certify(cal, "max_probability", limits, max_optimisation=500, seed=1)
    assert small.certified and small.path.num_optimisation == 3000  # units of the whole part
    assert small.guarantee.num_units == 3000  # tested on the whole testing part
    assert max(small.guarantee.p_values.values()) <= 0.05
    none = certify(cal, "max_probability", {"cost": 0.01, "disagreement": 0.001})
    assert none.policy is None and none.reason.endswith("may certify one")
    with pytest.raises(TypeError, match="`max_optimisation` to be an integer"):
        certify(cal, "max_probability", limits, max_optimisation=0.5)
