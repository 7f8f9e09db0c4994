"""Issue 23: the simulator's batch log, the bookkeeping between batches, the latency model
fitted from batch logs, and capacity answers with their interval."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise.serving import (
    BatchLog,
    BatchRecorder,
    LatencyModel,
    fit_latency_model,
    latency_percentile_intervals,
    max_rate,
    replicas_needed,
    simulate_serving,
)
from exitwise.serving.estimates import RateEstimate, ReplicaEstimate

# batch of 1 -> [1, 2] ms, batch of 2 -> [1.5, 3] ms; 0.25 ms + 0.05 ms per request after a batch
LM = LatencyModel([1, 2], [[0.001, 0.002], [0.0015, 0.003]], overhead=(0.00025, 0.00005))


def compact_logs(truth: LatencyModel, rates) -> list[BatchLog]:
    """Batch logs of 3,000 simulated requests per rate (compact, batches of 4, exits 0/1)."""
    rng = np.random.default_rng(0)
    return [
        simulate_serving(rng.integers(0, 2, 100), truth, rate=rate, num_requests=3000,
                         scheduler="compact", max_batch=4, seed=k).batches
        for k, rate in enumerate(rates)
    ]  # fmt: skip


def test_batch_log_and_bookkeeping_on_a_hand_computed_timeline():
    # three requests at 0, 0, 0.001 s; compact, batches of 2. Batch 1 = requests 0, 1 (depths
    # 0, 1): segment 0 at size 2 (1.5 ms), segment 1 at size 1 (2 ms): ends at 3.5 ms; then
    # 0.25 + 2 * 0.05 = 0.35 ms of bookkeeping; batch 2 = request 2 formed at 3.85 ms
    res = simulate_serving(
        np.array([0, 1, 1]), LM, arrivals=[0.0, 0.0, 0.001], scheduler="compact", max_batch=2
    )
    log = res.batches
    assert len(log) == 2
    np.testing.assert_allclose(log.formed, [0.0, 0.00385])
    np.testing.assert_array_equal(log.size, [2, 1])
    np.testing.assert_array_equal(log.queue, [0, 0])
    np.testing.assert_array_equal(log.segment_sizes, [[2, 1], [1, 1]])
    np.testing.assert_allclose(log.segment_seconds, [[0.0015, 0.002], [0.001, 0.002]])
    np.testing.assert_allclose(log.end, [0.0035, 0.00685])
    np.testing.assert_allclose(log.overhead()[:1], [0.00035])
    assert np.isnan(log.overhead()[1])
    np.testing.assert_allclose(res.answers, [0.0015, 0.0035, 0.00685])
    assert res.busy == pytest.approx(0.00685 + 0.0003)  # both batches and their bookkeeping


def test_refill_steps_pay_the_bookkeeping_per_slot():
    # two requests at 0 of depth 1, refill: step 1 (both at segment 0) 1.5 ms, then 0.35 ms,
    # step 2 (both at segment 1) 3 ms
    res = simulate_serving(np.array([1, 1]), LM, arrivals=[0.0, 0.0], scheduler="refill")
    np.testing.assert_allclose(res.batches.formed, [0.0, 0.00185])
    np.testing.assert_allclose(res.answers, [0.00485, 0.00485])
    np.testing.assert_array_equal(res.batches.segment_sizes, [[2, 0], [0, 2]])


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 0.004), min_size=1, max_size=30),
    depths=st.lists(st.integers(0, 1), min_size=30, max_size=30),
    scheduler=st.sampled_from(["full", "static", "compact"]),
    max_batch=st.integers(1, 4),
    replicas=st.integers(1, 2),
)
def test_batches_form_when_a_server_is_free_after_its_bookkeeping(
    gaps, depths, scheduler, max_batch, replicas
):
    arrivals = np.cumsum(gaps)
    res = simulate_serving(
        np.array(depths[: arrivals.size]), LM, arrivals=arrivals, scheduler=scheduler,
        max_batch=max_batch, replicas=replicas,
    )  # fmt: skip
    log = res.batches
    # naive check, batch by batch: a server forms its next batch at the later of its previous
    # end plus the bookkeeping after it and the first waiting request's arrival
    first = 0
    for k in range(len(log)):
        prev = log.previous()[k]
        free = -np.inf if prev < 0 else log.end[prev] + LM.overhead_time(log.size[prev])
        assert log.formed[k] == pytest.approx(max(free, arrivals[first]))
        assert log.idle[k] == pytest.approx(max(0.0, arrivals[first] - free))
        first += log.size[k]
    assert first == arrivals.size
    assert log.size.max() <= max_batch
    np.testing.assert_allclose(log.overhead()[log.previous()[log.previous() >= 0]], [
        LM.overhead_time(s) for s in log.size[log.previous()[log.previous() >= 0]]
    ])  # fmt: skip


def test_fit_latency_model_recovers_table_bookkeeping_and_wake_up_from_a_log():
    truth = LatencyModel(
        [1, 2, 3, 4],
        [[0.001, 0.002], [0.0015, 0.003], [0.002, 0.0041], [0.0024, 0.005]],
        overhead=(0.0002, 0.00003),
        wake_up=0.0004,
    )
    logs = compact_logs(truth, (150.0, 600.0, 900.0))
    fitted = fit_latency_model(logs)
    np.testing.assert_allclose(fitted.seconds, truth.seconds, rtol=1e-9)
    np.testing.assert_allclose(fitted.overhead, truth.overhead, rtol=1e-6)
    # a constant wake-up of 0.4 ms after any idle time
    assert fitted.wake_up_time(0.001) == pytest.approx(0.0004, rel=1e-6)
    assert fitted.wake_up_time(0.05) == pytest.approx(0.0004, rel=1e-6)
    assert fitted.speed_range == pytest.approx((1.0, 1.0))
    # a second run 30 % slower: the drift shows in the speed range
    (slow,) = compact_logs(truth.scaled(1.3), (600.0,))
    low, high = fit_latency_model([*logs, slow]).speed_range
    assert low == pytest.approx(1.0, abs=0.05) and high == pytest.approx(1.3, abs=0.08)


def test_drift_between_logs_is_taken_out_by_speeds_and_is_not_jitter():
    truth = LatencyModel([1, 2, 4], [[0.001, 0.002], [0.0015, 0.003], [0.0024, 0.005]])
    rng = np.random.default_rng(3)
    logs = [
        simulate_serving(rng.integers(0, 2, 100), truth.scaled(f), rate=500.0,
                         num_requests=2000, scheduler="compact", max_batch=4, seed=k).batches
        for k, f in enumerate((1.0, 1.3))
    ]  # fmt: skip
    fitted = fit_latency_model(logs, speeds=[1.0, 1.3], taus=())
    np.testing.assert_allclose(fitted.table(5), truth.table(5), rtol=1e-9)
    # no spread within a log: the jitter is all ones; the drift is the speed range (as logged)
    np.testing.assert_allclose(fitted.jitter, 1.0)
    assert fitted.speed_range == pytest.approx((1.0, 1.3), abs=1e-9)
    pooled = fit_latency_model(logs, taus=())
    np.testing.assert_allclose(pooled.jitter, 1.0)  # within each log, even without speeds
    assert not np.allclose(pooled.table(5), truth.table(5))  # the table mixes both speeds
    with pytest.raises(ValueError, match=r"Expected `speeds`: one factor > 0 per log \(2\)"):
        fit_latency_model(logs, speeds=[1.0])


def test_fit_latency_model_median_table_equals_a_naive_loop():
    rec = BatchRecorder(2)
    rng = np.random.default_rng(1)
    rows = []
    t = 0.0
    for _ in range(300):
        size = int(rng.integers(1, 4))
        sizes = [size, int(rng.integers(0, size + 1))]
        secs = [
            float(rng.uniform(0.001, 0.002)) * size,
            float(rng.uniform(0.002, 0.003)) * sizes[1],
        ]
        rec.add(0, t, size, 1, sizes, secs, t + sum(secs))
        rows.append((sizes, secs))
        t += sum(secs) + 0.0001
    fitted = fit_latency_model(rec.finish(), taus=())  # no warmth: plain cell medians
    assert fitted.warmth == (0.0, 0.0)
    for e in range(2):
        for b in fitted.batch_sizes:
            cell = [s[e] for z, s in rows if z[e] == b]
            if cell:
                assert fitted.time(e, b) == pytest.approx(np.median(cell), rel=1e-12)


def test_warmth_slows_a_server_that_idled_and_is_recovered_from_its_logs():
    truth = LatencyModel(
        [1, 2, 4], [[0.001, 0.002], [0.0015, 0.003], [0.0024, 0.005]], warmth=(0.4, 0.02)
    )
    # a server starts at its steady state, its utilisation (here under 1 %: nearly cold);
    # after idling 1 s (50 time constants) it is cold: the full factor 1.4
    two = simulate_serving(np.array([1, 1]), truth, arrivals=[0.0, 1.0], scheduler="compact")
    assert 0.003 * 1.39 < two.batches.service[0] < 0.003 * 1.4
    assert two.batches.service[1] == pytest.approx(1.4 * 0.003, rel=1e-9)
    # a busier server is warmer: the mean factor falls with the load
    factors = []
    for rate in (20.0, 800.0):
        res = simulate_serving(np.array([1]), truth, rate=rate, num_requests=2000,
                               scheduler="compact", max_batch=4)  # fmt: skip
        typical = truth.table(5)[res.batches.segment_sizes, np.arange(2)].sum(axis=1)
        factors.append(np.mean(res.batches.segment_seconds.sum(axis=1) / typical))
    assert 1.3 < factors[0] <= 1.4 and 1.0 <= factors[1] < factors[0] - 0.1
    fitted = fit_latency_model(compact_logs(truth, (150.0, 500.0, 800.0)))
    assert fitted.warmth == pytest.approx((0.4, 0.02), rel=1e-6)
    np.testing.assert_allclose(fitted.table(5), truth.table(5), rtol=1e-6)


def test_fit_latency_model_refuses_bad_logs():
    with pytest.raises(TypeError, match="Expected `logs`: a BatchLog"):
        fit_latency_model([])
    rec = BatchRecorder(2)
    rec.add(0, 0.0, 1, 0, [1, 0], [0.001, 0.0], 0.001, idle=0.5)
    with pytest.raises(ValueError, match="Every segment needs timings from batches formed"):
        fit_latency_model(rec.finish())
    other = BatchRecorder(3)
    other.add(0, 0.0, 1, 0, [1, 1, 1], [0.001] * 3, 0.003)
    with pytest.raises(ValueError, match="one number of segments, got \\[2, 3\\]"):
        fit_latency_model([rec.finish(), other.finish()])


def test_latency_model_overhead_speed_range_scaled_and_json(tmp_path):
    lm = LatencyModel([1, 2], [[1.0, 2.0], [1.5, 3.0]], unit="ms", wake_up=[[1.0, 0.2]],
                      overhead=(0.1, 0.01), speed_range=(0.9, 1.25))  # fmt: skip
    assert lm.overhead_time(3) == pytest.approx(0.00013)
    lm.save(tmp_path / "lm.json")
    back = LatencyModel.load(tmp_path / "lm.json")
    assert back.speed_range == (0.9, 1.25)
    np.testing.assert_allclose(back.overhead, [0.0001, 0.00001])
    slow = lm.scaled(2.0)
    np.testing.assert_allclose(slow.seconds, lm.seconds * 2)
    np.testing.assert_allclose(slow.overhead, lm.overhead * 2)
    assert slow.wake_up_time(0.002) == pytest.approx(2 * lm.wake_up_time(0.002))
    assert "speed_range" in json.loads((tmp_path / "lm.json").read_text())
    with pytest.raises(ValueError, match="Expected `overhead`: seconds >= 0"):
        LatencyModel([1], [[1.0]], overhead=(0.1, -1.0))
    with pytest.raises(ValueError, match="Expected `overhead`"):
        LatencyModel([1], [[1.0]], overhead=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="Expected `speed_range`: \\(slowest, fastest\\)"):
        LatencyModel([1], [[1.0]], speed_range=(1.2, 0.9))
    with pytest.raises(ValueError, match="Expected `factor` > 0"):
        lm.scaled(0.0)


def test_capacity_answers_carry_the_model_spread_and_the_seeds():
    lm = LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]], speed_range=(0.9, 1.2))
    kw = {"num_requests": 3000, "max_batch": 8, "scheduler": "compact"}
    rate = max_rate([0, 1], lm, limit=0.02, **kw)
    assert isinstance(rate, RateEstimate) and rate.low < float(rate) < rate.high
    # reference: the ends are the plain search on the scaled models, over the seeds used
    slow = [max_rate([0, 1], lm.scaled(1.2), limit=0.02, interval_seeds=0, seed=s, **kw)
            for s in (1000,)]  # fmt: skip
    fast = [max_rate([0, 1], lm.scaled(0.9), limit=0.02, interval_seeds=0, seed=s, **kw)
            for s in (1000,)]  # fmt: skip
    assert rate.low == pytest.approx(min(float(r) for r in slow))
    assert rate.high == pytest.approx(max(float(r) for r in fast))
    point = LatencyModel([1, 8], [[0.001, 0.002], [0.002, 0.006]])
    exact = max_rate([0, 1], point, limit=0.02, interval_seeds=0, **kw)
    assert exact.low == float(exact) == exact.high
    need = replicas_needed([0, 1], lm, rate=6000.0, limit=0.02, **kw)
    assert isinstance(need, ReplicaEstimate) and need.low <= int(need) <= need.high
    assert need.high >= replicas_needed([0, 1], lm.scaled(1.2), rate=6000.0, limit=0.02,
                                        interval_seeds=0, **kw)  # fmt: skip
    with pytest.raises(ValueError, match="Expected low <= value <= high"):
        RateEstimate(1.0, 2.0, 3.0)


def test_latency_percentile_intervals_refuses_too_little_data():
    lo, hi = latency_percentile_intervals(np.linspace(0.001, 0.01, 400), (50,))[50]
    assert lo <= np.percentile(np.linspace(0.001, 0.01, 400), 50) <= hi
    with pytest.raises(ValueError, match="Expected `latency`: at least 4 finite seconds"):
        latency_percentile_intervals([0.001, np.nan, 0.002, 0.003])


def test_an_empty_recorder_gives_an_empty_log():
    log = BatchRecorder(3).finish()
    assert isinstance(log, BatchLog) and len(log) == 0 and log.segment_sizes.shape == (0, 3)
