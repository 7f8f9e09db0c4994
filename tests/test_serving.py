"""Latency model and the serving simulator against hand-computed timelines and queueing laws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exitwise.serving import LatencyModel, simulate_serving

# segment times: batch of 1 -> [1, 2] ms, batch of 2 -> [1.5, 3] ms
LM = LatencyModel([1, 2], [[0.001, 0.002], [0.0015, 0.003]])


def run(arrivals, depths, scheduler, max_batch=2, replicas=1, model=LM):
    return simulate_serving(
        np.asarray(depths),
        model,
        arrivals=arrivals,
        scheduler=scheduler,
        max_batch=max_batch,
        replicas=replicas,
    )


@pytest.mark.parametrize(
    ("scheduler", "depth", "answer"),
    [
        ("full", 0, 0.003),
        ("static", 0, 0.001),
        ("compact", 0, 0.001),
        ("refill", 0, 0.001),
        ("full", 1, 0.003),
        ("static", 1, 0.003),
        ("compact", 1, 0.003),
        ("refill", 1, 0.003),
    ],
)
def test_one_request(scheduler, depth, answer):
    r = run([0.0], [depth], scheduler)
    assert r.answers[0] == pytest.approx(answer) and r.starts[0] == 0.0


def test_two_requests_in_one_batch():
    full = run([0.0, 0.0], [0, 1], "full")
    assert full.answers == pytest.approx([0.0045, 0.0045])
    static = run([0.0, 0.0], [0, 1], "static")
    assert static.answers == pytest.approx([0.0045, 0.0045])
    assert static.involuntary == pytest.approx([0.003, 0.0])  # answer ready at 1.5 ms
    compact = run([0.0, 0.0], [0, 1], "compact")
    assert compact.answers == pytest.approx([0.0015, 0.0035])  # then 1 request runs seg 1
    refill = run([0.0, 0.0], [0, 1], "refill")
    assert refill.answers == pytest.approx([0.0015, 0.0035])
    assert compact.busy == pytest.approx(0.0035) and full.busy == pytest.approx(0.0045)


def test_compaction_and_refill_timelines():
    # request 1 arrives while request 0 runs its first segment
    compact = run([0.0, 0.0005], [1, 0], "compact")
    assert compact.starts == pytest.approx([0.0, 0.003])
    assert compact.answers == pytest.approx([0.003, 0.004])
    # refill: request 1 joins at the next step (1 ms) and runs segment 0 beside request 0's
    # segment 1 (1 + 2 ms): both answer at 4 ms, request 1 started at 1 ms
    refill = run([0.0, 0.0005], [1, 0], "refill")
    assert refill.starts == pytest.approx([0.0, 0.001])
    assert refill.answers == pytest.approx([0.003 + 0.001, 0.004])
    # one slot: request 1 waits for request 0 to finish both segments
    one_slot = run([0.0, 0.0], [1, 0], "refill", max_batch=1)
    assert one_slot.starts == pytest.approx([0.0, 0.003])
    assert one_slot.answers == pytest.approx([0.003, 0.004])
    # two replicas serve two simultaneous requests at once
    two = run([0.0, 0.0], [1, 1], "compact", max_batch=1, replicas=2)
    assert two.starts == pytest.approx([0.0, 0.0]) and two.answers == pytest.approx([0.003] * 2)


def test_static_batch_waits_for_the_deepest_member_and_batches_form_from_the_queue():
    # three requests at once with max_batch 2: [0, 1] run together, then [2] alone
    r = run([0.0, 0.0, 0.0], [0, 1, 0], "static")
    assert r.starts == pytest.approx([0.0, 0.0, 0.0045])
    assert r.answers == pytest.approx([0.0045, 0.0045, 0.0055])


@pytest.mark.parametrize("scheduler", ["static", "compact", "refill", "full"])
def test_littles_law_and_percentiles_on_a_long_run(scheduler):
    depths = np.array([0, 0, 0, 1, 1])
    r = simulate_serving(
        depths, LM, rate=300.0, num_requests=40000, scheduler=scheduler, max_batch=8, seed=1
    )
    assert r.stable
    # time-average queue length (from the step function) = arrival rate x mean wait
    assert r.mean_queue_length() == pytest.approx(300.0 * r.waits.mean(), rel=0.03)
    p = r.percentiles((50, 99))
    assert p[99] == pytest.approx(float(np.percentile(r.latency, 99)))
    assert p[50] <= p[99] and 0.0 < r.utilisation < 1.0
    assert r.throughput == pytest.approx(300.0, rel=0.03)
    lo, hi = r.percentile_intervals((99,), n_resamples=100)[99]
    assert lo <= p[99] <= hi


def test_rates_above_capacity_are_unstable():
    # a full batch of 8 takes 8.5 + 17 = ... the model extrapolates linearly; 1 s of work per
    # 1 / (max_batch / full time) requests: far above capacity here
    capacity = 8 / LM.full_time(8)
    r = simulate_serving(
        [1], LM, rate=2 * capacity, num_requests=20000, scheduler="full", max_batch=8
    )
    assert not r.stable and math.isinf(r.percentiles()[99])
    ok = simulate_serving(
        [1], LM, rate=0.5 * capacity, num_requests=20000, scheduler="full", max_batch=8
    )
    assert ok.stable


def test_latency_model_table_save_load_and_errors(tmp_path):
    model = LatencyModel([1, 4, 16], [[1.0, 2.0], [2.0, 5.0], [5.0, 17.0]])
    t = model.table(40)
    assert t[0].tolist() == [0.0, 0.0]
    assert t[4].tolist() == [2.0, 5.0]
    assert t[10, 1] == pytest.approx(np.interp(10, [1, 4, 16], [2.0, 5.0, 17.0]))
    assert t[30, 0] == pytest.approx(5.0 + model.slope[0] * 14)  # beyond the table: the fit
    model.save(tmp_path / "lm.json")
    again = LatencyModel.load(tmp_path / "lm.json")
    assert np.array_equal(again.seconds, model.seconds)
    noisy = LatencyModel([1], [[1.0]], wake_up=[(0.001, 0.1), (0.01, 0.3)], jitter=[0.9, 1.2])
    noisy.save(tmp_path / "noisy.json")
    back = LatencyModel.load(tmp_path / "noisy.json")
    assert np.array_equal(back.jitter, noisy.jitter)
    assert back.wake_up_time(0.0055) == pytest.approx(0.2) and back.wake_up_time(1.0) == 0.3
    with pytest.raises(ValueError, match="increasing integers"):
        LatencyModel([4, 1], [[1.0], [2.0]])
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        LatencyModel([1, 2], [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"`exits` in \[0, 1\]"):
        simulate_serving([2], LM, rate=1.0)
    with pytest.raises(ValueError, match="`scheduler` to be one of"):
        simulate_serving([0], LM, rate=1.0, scheduler="fifo")
    with pytest.raises(ValueError, match="Pass `rate`"):
        simulate_serving([0], LM)


def test_planning_answers_are_the_boundaries_the_simulator_sees():
    from exitwise.serving import max_rate, replicas_needed

    lm = LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]])
    kw = {"num_requests": 4000, "max_batch": 8, "scheduler": "compact"}

    def p99(rate, replicas=1):
        res = simulate_serving([0, 1], lm, rate=rate, replicas=replicas, **kw)
        return res.percentiles((99,))[99]

    rate = max_rate([0, 1], lm, limit=0.02, tolerance=0.005, **kw)
    assert p99(rate) <= 0.02 < p99(rate * 1.01)
    n = replicas_needed([0, 1], lm, rate=4000.0, limit=0.02, **kw)
    assert p99(4000.0, n) <= 0.02 < p99(4000.0, n - 1)
    assert replicas_needed([1], lm, rate=10.0, limit=0.001, max_replicas=4, **kw) is None
    assert max_rate([1], lm, limit=0.001, **kw) == 0.0


@pytest.mark.parametrize("scheduler", ["compact", "static", "refill", "full"])
def test_a_server_waking_from_idle_pays_the_wake_up_once(scheduler):
    cold = LatencyModel([1, 2], [[0.001, 0.002], [0.0015, 0.003]], wake_up=0.0005)
    # request 0 finds the server idle; request 1 arrives while it works and follows at once;
    # request 2 arrives after a long pause: idle again
    r = run([0.0, 0.0002, 1.0], [1, 1, 1], scheduler, max_batch=1, model=cold)
    assert r.answers == pytest.approx([0.0035, 0.0065, 1.0035])
    assert (
        LatencyModel.from_observations(
            [0, 0, 0, 1], [1, 1, 1, 1], [3.0, 1.0, 1.2, 2.0], 2, idle=[True, False, False, False]
        ).wake_up
        == 1.9
    )


def test_jitter_multiplies_segment_times_and_is_fitted_from_logged_timings():
    base = LatencyModel([1, 2], [[0.001, 0.002], [0.0015, 0.003]])
    ones = LatencyModel([1, 2], base.seconds, jitter=[1.0, 1.0])
    double = LatencyModel([1, 2], base.seconds, jitter=[2.0])
    for scheduler in ("compact", "static", "refill", "full"):
        a = simulate_serving(
            np.array([0, 1]), base, rate=200.0, num_requests=500, scheduler=scheduler
        )
        b = simulate_serving(
            np.array([0, 1]), ones, rate=200.0, num_requests=500, scheduler=scheduler
        )
        assert np.array_equal(a.answers, b.answers)
    one = run([0.0], [1], "compact", model=double)
    assert one.answers == pytest.approx([0.006])
    # fitted: quantiles of every busy timing over its cell's median (cells of >= 5 timings)
    rng = np.random.default_rng(0)
    seg = np.repeat([0, 1], 50)
    bat = np.ones(100, dtype=int)
    sec = np.where(seg == 0, 0.001, 0.002) * rng.lognormal(0, 0.2, 100)
    lm = LatencyModel.from_observations(seg, bat, sec, 2)
    ratios = np.r_[sec[:50] / np.median(sec[:50]), sec[50:] / np.median(sec[50:])]
    assert np.allclose(lm.jitter, np.quantile(ratios, np.linspace(0.0025, 0.9975, 200)))


def test_tune_for_serving_picks_the_best_feasible_candidate(real_outputs):
    from exitwise.serving import tune_for_serving

    cal = real_outputs.split(0.5, seed=0)[0]
    lm = LatencyModel([1, 32], [[1e-4] * 4, [1e-3, 4e-3, 4e-3, 3e-3]])
    kw = {"rate": 3000.0, "limit": 0.02, "num_candidates": 10, "num_requests": 3000}
    plan = tune_for_serving(cal, "max_probability", lm, **kw)
    feasible = [r for r in plan.candidates if r.latency <= 0.02]
    assert plan.chosen.evaluation.accuracy == max(r.evaluation.accuracy for r in feasible)
    assert plan.full_model.evaluation.relative_cost == 1.0 and plan.full_model.latency > 0.02
    target = tune_for_serving(cal, "max_probability", lm, target_accuracy=0.87, **kw)
    ok = [r for r in feasible if r.evaluation.accuracy >= 0.87]
    assert target.chosen.evaluation.relative_cost == min(r.evaluation.relative_cost for r in ok)
    assert target.accuracy_tuned.evaluation.accuracy >= 0.87
    with pytest.warns(DeprecationWarning, match=r"candidate\.latency"):
        assert plan.chosen["p"] == plan.chosen.latency  # the old dict keys, one release
    hopeless = tune_for_serving(cal, "max_probability", lm, **{**kw, "limit": 1e-9})
    assert hopeless.policy is None and "no candidate has p99 latency <= 1e-09" in hopeless.reason
    cheap = tune_for_serving(cal, "max_probability", lm, budget=0.5, **kw)
    assert cheap.chosen.evaluation.relative_cost <= 0.5
    with pytest.raises(ValueError, match="not both"):
        tune_for_serving(cal, "max_probability", lm, budget=0.5, target_accuracy=0.8, **kw)
