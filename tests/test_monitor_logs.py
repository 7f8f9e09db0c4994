"""Request logs of several servers or ranks, merged in the order their requests were served:
against a naive sort, the monitor on merged logs equals the monitor on one log in that order,
and logs without times refuse to merge."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise.monitor import RiskMonitor
from exitwise.monitor_logs import merge_logs, read_log, write_log


def _log(rng: np.random.Generator, n: int, times: list[float]) -> dict[str, np.ndarray]:
    return {
        "exit": rng.integers(0, 3, n),
        "confidence": rng.random(n),
        "prediction": rng.integers(0, 5, n),
        "full_prediction": np.where(rng.random(n) < 0.5, rng.integers(0, 5, n), -1),
        "time": np.asarray(times, dtype=np.float64),
    }


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_merge_orders_by_time_then_log_then_line(tmp_path_factory, sizes, seed):
    rng = np.random.default_rng(seed)
    d = tmp_path_factory.mktemp("logs")
    paths, expected = [], []
    for i, n in enumerate(sizes):
        times = sorted(rng.integers(0, 6, n).astype(float))  # a server's clock: ties allowed
        log = _log(rng, n, times)
        write_log(d / f"rank{i}.jsonl", log)
        paths.append(d / f"rank{i}.jsonl")
        expected += [
            (t, i, line, int(p))
            for line, (t, p) in enumerate(zip(times, log["prediction"], strict=True))
        ]
    merged = merge_logs(paths)
    assert merged["prediction"].tolist() == [p for *_, p in sorted(expected)]  # naive sort
    assert np.all(np.diff(merged["time"]) >= 0)


def test_the_monitor_on_merged_logs_is_the_monitor_on_one_log_in_serving_order(tmp_path):
    rng = np.random.default_rng(3)
    a = _log(rng, 300, np.arange(300) * 2.0)  # one server: even seconds
    b = _log(rng, 200, np.arange(200) * 2.0 + 1.0)  # another: odd seconds
    b["prediction"][:100] = (b["full_prediction"][:100] + 1) % 5  # it disagrees early on
    write_log(tmp_path / "a.jsonl", a)
    write_log(tmp_path / "b.jsonl", b)
    order = np.argsort(np.concatenate([a["time"], b["time"]]), kind="stable")
    one = {k: np.concatenate([a[k], b[k]])[order] for k in a}
    write_log(tmp_path / "one.jsonl", one)
    summaries = []
    for run in (
        merge_logs([tmp_path / "a.jsonl", tmp_path / "b.jsonl"]),
        read_log(tmp_path / "one.jsonl"),
    ):
        monitor = RiskMonitor(0.2, num_exits=3, window=100)
        monitor.update(run["exit"], run["confidence"], run["prediction"], run["full_prediction"])
        summaries.append(monitor.summary())
    assert summaries[0] == summaries[1]
    assert summaries[0]["requests"] == 500


def test_merging_needs_times(tmp_path):
    rng = np.random.default_rng(0)
    timed = _log(rng, 4, [0.0, 1.0, 2.0, 3.0])
    untimed = {k: v for k, v in _log(rng, 3, [0.0, 0.0, 0.0]).items() if k != "time"}
    write_log(tmp_path / "t.jsonl", timed)
    write_log(tmp_path / "u.jsonl", untimed)
    with pytest.raises(ValueError, match=r"u\.jsonl has 3 request\(s\) without one"):
        merge_logs([tmp_path / "t.jsonl", tmp_path / "u.jsonl"])
    assert (
        merge_logs([tmp_path / "u.jsonl"])["prediction"].tolist() == untimed["prediction"].tolist()
    )  # one log: read as it is
    with pytest.raises(TypeError, match="non-empty list of log files"):
        merge_logs(str(tmp_path / "t.jsonl"))
    (tmp_path / "bad.jsonl").write_text(
        '{"exit": 0, "confidence": 0.5, "prediction": 1, "time": "x"}\n'
    )
    with pytest.raises(ValueError, match=r"expected `time` to be a number \(seconds\)"):
        read_log(tmp_path / "bad.jsonl")
