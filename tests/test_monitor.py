"""The streaming risk monitor: anytime-valid alarm, confidence sequence, drift, ECE, logs."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from exitwise.metrics.binning import calibration_error_from_confidence
from exitwise.monitor import RiskMonitor, check_log, read_log, write_log
from exitwise.policies import ThresholdPolicy, load_policy
from exitwise.policies.p_values import betting_capital


def stream(n, risk, seed, num_exits=3):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, 5, n)
    full = np.where(rng.random(n) < risk, (pred + 1) % 5, pred)
    return {
        "exit": rng.integers(0, num_exits, n),
        "confidence": rng.random(n),
        "prediction": pred,
        "full_prediction": full,
    }


def test_one_request_at_a_time_equals_one_batch_and_the_reference_capital():
    s = stream(900, 0.2, 0)
    s["full_prediction"][::3] = -1  # only two thirds are shadow requests
    whole = RiskMonitor(0.08, num_exits=3, confidence=0.9)
    whole.update(**s)
    single = RiskMonitor(0.08, num_exits=3, confidence=0.9)
    for i in range(900):
        single.update(**{k: v[i] for k, v in s.items()})
    assert whole.alarm and single.alarm_at == whole.alarm_at
    for key in whole.history:
        assert np.allclose(single.history[key], whole.history[key])
    # the alarm is the first shadow request where the capital of "risk <= limit" reaches 1/alpha
    shadow = s["full_prediction"] >= 0
    losses = (s["prediction"] != s["full_prediction"])[shadow].astype(float)
    log_k = betting_capital(losses, 0.08, alternative="greater", alpha=0.1)
    first = int(np.argmax(log_k >= math.log(10)))
    assert whole.alarm_at == int(np.flatnonzero(shadow)[first])
    assert whole.summary()["scored_requests"] == int(shadow.sum())


def test_false_alarm_rate_is_at_most_alpha_when_the_risk_is_at_the_limit():
    alpha, runs = 0.1, 300
    alarms = 0
    for seed in range(runs):
        m = RiskMonitor(0.1, num_exits=3, confidence=1 - alpha, grid_size=20)
        alarms += m.update(**stream(3000, 0.1, seed))
    assert alarms / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_confidence_sequence_covers_at_all_times_and_tightens():
    covered, widths, alarms = 0, [], 0
    for seed in range(100):
        m = RiskMonitor(0.5, num_exits=3, confidence=0.9, grid_size=100)
        alarms += m.update(**stream(4000, 0.2, seed))
        lower, upper = np.array(m.history["lower"]), np.array(m.history["upper"])
        assert (lower <= upper + 0.011).all()
        covered += bool(((lower <= 0.2) & (upper >= 0.2)).all())
        widths.append(upper[-1] - lower[-1])
    assert covered >= 75  # each side fails with probability <= 0.1 (plus noise)
    assert np.median(widths) < 0.07 and alarms <= 10 + 9  # alarm level 0.1, 3 sigma


def test_exit_rate_drift_and_windowed_ece_against_references():
    s = stream(5000, 0.1, 1)
    m = RiskMonitor(0.2, num_exits=3, reference_exit_rates=[0.5, 0.3, 0.2], window=1000)
    m.update(**s)
    last = s["exit"][-1000:]
    counts = np.bincount(last, minlength=3)
    drift = m.exit_rate_drift()
    assert drift["rates"] == pytest.approx((counts / 1000).tolist())
    assert drift["total_variation"] == pytest.approx(
        0.5 * np.abs(counts / 1000 - [0.5, 0.3, 0.2]).sum()
    )
    assert drift["p_value"] == pytest.approx(
        chisquare(counts, np.array([0.5, 0.3, 0.2]) * 1000).pvalue
    )
    ece = m.windowed_ece(n_bins=10)
    hit = s["prediction"][-1000:] == s["full_prediction"][-1000:]
    conf = s["confidence"][-1000:]
    for e in range(3):
        sel = last == e
        expected = float(calibration_error_from_confidence(conf[sel], hit[sel], 10))
        assert ece[e] == pytest.approx(expected)


def test_validation_errors():
    m = RiskMonitor(0.1, num_exits=2)
    with pytest.raises(ValueError, match=r"`exit` to hold exits in \[0, 1\]"):
        m.update([2], [0.5], [1])
    with pytest.raises(ValueError, match="`confidence` of length 2"):
        m.update([0, 1], [0.5], [1, 1])
    with pytest.raises(ValueError, match="`limit` to be in"):
        RiskMonitor(1.5, num_exits=2)
    with pytest.raises(ValueError, match="reference_exit_rates"):
        RiskMonitor(0.1, num_exits=2, reference_exit_rates=[0.5, 0.6])
    with pytest.raises(ValueError, match="records no guarantee"):
        RiskMonitor.from_policy(ThresholdPolicy("max_probability", 0.9))


def test_log_round_trip_and_check_against_a_policy_file(tmp_path):
    s = stream(2000, 0.3, 2)
    s["full_prediction"][1::2] = -1
    s["label"] = np.full(2000, -1)
    s["label"][:5] = 1
    write_log(tmp_path / "log.jsonl", s)
    log = read_log(tmp_path / "log.jsonl")
    for k in ("exit", "prediction", "full_prediction", "label"):
        assert np.array_equal(log[k], s[k])
    assert np.allclose(log["confidence"], s["confidence"])
    policy = ThresholdPolicy("max_probability", [0.9, 0.9, -math.inf])
    guarantee = {"risks": {"disagreement": 0.05}, "epsilon": 0.05, "exit_rates": [0.4, 0.3, 0.3]}
    policy.save(tmp_path / "p.json", context={"guarantee": guarantee})
    monitor = check_log(tmp_path / "log.jsonl", load_policy(tmp_path / "p.json"))
    assert monitor.alarm and monitor.limit == 0.05 and monitor.num_requests == 2000
    (tmp_path / "bad.jsonl").write_text(
        '{"exit": 0, "confidence": 0.5, "prediction": 1}\n{"exit": 1}\n'
    )
    with pytest.raises(ValueError, match="line 2: missing confidence, prediction"):
        read_log(tmp_path / "bad.jsonl")


@pytest.mark.slow
def test_replayed_traffic_is_silent_and_a_class_mix_shift_is_detected(capsys):
    example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "monitor_drift.py"))
    false_alarm_rate, delays = example["main"](replays=200, requests=20000)
    assert false_alarm_rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 200)
    assert np.isfinite(delays).mean() >= 0.8
    assert "false-alarm rate" in capsys.readouterr().out


def _certified_file(tmp_path, num_exits=3, limit=0.05, rates=None):
    thresholds = [0.9] * (num_exits - 1) + [-math.inf]
    rates = rates or [1 / num_exits] * num_exits
    guarantee = {"limits": {"disagreement": limit}, "confidence": 0.95, "exit_rates": rates}
    ThresholdPolicy("max_probability", thresholds).save(
        tmp_path / "p.json", context={"guarantee": guarantee}
    )
    return tmp_path / "p.json"


def test_regression_monitor_without_shadow_requests_gives_no_verdict(tmp_path, capsys):
    # issue 24 item 2: "no alarm ... estimate nan" with exit code 0 and no reference data
    from exitwise.cli import main

    s = stream(3000, 0.5, 3)
    del s["full_prediction"]  # no shadow request at all
    write_log(tmp_path / "log.jsonl", s)
    policy = _certified_file(tmp_path)
    monitor = check_log(tmp_path / "log.jsonl", load_policy(policy))
    assert monitor.verdict == "no verdict" and not monitor.alarm
    with pytest.raises(SystemExit) as status:
        main(["monitor", str(tmp_path / "log.jsonl"), "--policy", str(policy)])
    out = capsys.readouterr().out
    assert status.value.code == 3 and out.startswith("NO VERDICT: none of the 3000 requests")
    assert "no alarm" not in out


def test_regression_monitor_refuses_bad_types_and_alarms_on_exit_rate_drift(tmp_path, capsys):
    # issue 24 item 3: "exit": 1.5 or true became exit 1; a policy of another model passed
    from exitwise.cli import main

    for bad, message in (
        ('"exit": 1.5', "`exit` to be an integer, got 1.5"),
        ('"exit": true', "`exit` to be an integer, got True"),
        ('"exit": 1, "confidence": "high"', "`confidence` to be a number"),
    ):
        (tmp_path / "bad.jsonl").write_text(
            '{"exit": 0, "confidence": 0.5, "prediction": 1}\n'
            + "{"
            + bad
            + (', "confidence": 0.5' if "confidence" not in bad else "")
            + ', "prediction": 1}\n'
        )
        with pytest.raises(ValueError, match=rf"line 2: expected {message}"):
            read_log(tmp_path / "bad.jsonl")
    m = RiskMonitor(0.1, num_exits=3)
    with pytest.raises(ValueError, match=r"`exit` to hold integers, got 1\.5"):
        m.update([1.5], [0.5], [1])
    with pytest.raises(TypeError, match="`exit` to hold numbers"):
        m.update([True], [0.5], [1])
    # traffic whose exit rates are far from the certified ones: a drift alarm of its own,
    # even though the disagreement itself is below the limit
    s = stream(4000, 0.0, 4)
    s["exit"] = np.where(np.arange(4000) % 10 == 0, 1, 0)  # 90 % leave at the first exit
    write_log(tmp_path / "drift.jsonl", s)
    policy = _certified_file(tmp_path, limit=0.3, rates=[0.2, 0.3, 0.5])
    monitor = check_log(tmp_path / "drift.jsonl", load_policy(policy))
    assert not monitor.alarm and monitor.drift_alarm and monitor.verdict == "drift"
    with pytest.raises(SystemExit) as status:
        main(["monitor", str(tmp_path / "drift.jsonl"), "--policy", str(policy)])
    assert status.value.code == 1
    assert capsys.readouterr().out.startswith("ALARM (exit-rate drift)")
    # the same traffic against its own exit rates: silent
    rates = (np.bincount(s["exit"][-2000:], minlength=3) / 2000).tolist()
    policy = _certified_file(tmp_path, limit=0.3, rates=rates)
    assert check_log(tmp_path / "drift.jsonl", load_policy(policy)).verdict == "no alarm"
    # a policy whose thresholds do not match its own guarantee's exits
    guarantee = {"limits": {"disagreement": 0.3}, "exit_rates": [0.5, 0.5]}
    ThresholdPolicy("max_probability", [0.9, 0.9, -math.inf]).save(
        tmp_path / "q.json", context={"guarantee": guarantee}
    )
    with pytest.raises(ValueError, match="3 thresholds but its guarantee records exit rates"):
        check_log(tmp_path / "drift.jsonl", load_policy(tmp_path / "q.json"))
