"""``exitwise certify`` and ``exitwise monitor`` on the bundled data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exitwise import ExitOutputs
from exitwise.cli import main
from exitwise.datasets import load_default
from exitwise.monitor import read_log, write_log
from exitwise.policies import evaluate, load_policy
from exitwise.signals import compute_signal


def served_log(path, policy, outputs, shadow, rng):
    """Requests served by ``policy`` on ``outputs``, a ``shadow`` share with the full answer."""
    part = outputs
    idx = np.arange(outputs.num_samples)
    answers = policy.answer_indices(part)
    conf = compute_signal(part, policy.signal).gather(1, answers[:, None])[:, 0]
    full = part.predictions()[:, -1].numpy()
    write_log(
        path,
        {
            "exit": policy.exit_indices(part).numpy(),
            "confidence": conf.numpy(),
            "prediction": policy.predictions(part).numpy(),
            "full_prediction": np.where(rng.random(len(idx)) < shadow, full, -1),
        },
    )


def test_certify_writes_the_guarantee_and_monitor_checks_logs(tmp_path, capsys):
    policy_file = tmp_path / "policy.json"
    rc = main(
        [
            "certify",
            "--risk",
            "disagreement=0.04",
            "--risk",
            "cost=0.5",
            "--confidence",
            "0.95",
            "--out",
            str(policy_file),
            "--json",
        ]
    )
    assert rc == 0
    payload = json.loads(capsys.readouterr().out)
    policy = load_policy(policy_file)
    g = policy.context["guarantee"]
    assert g["limits"] == {"disagreement": 0.04, "cost": 0.5} and g["confidence"] == 0.95
    assert g["num_units"] == 2500 and g["unit"] == "sample"
    assert set(g["p_values"]) == {"disagreement", "cost"}
    assert g["data_fingerprint"].startswith("sha256:") and len(g["exit_rates"]) == 4
    assert max(g["p_values"].values()) <= 0.05
    # the held-out risks printed are the evaluator's
    test = load_default().split(0.5, seed=0)[1]
    ev = evaluate(policy, test, reference="final")
    assert payload["held_out"]["disagreement"] == pytest.approx(float(ev.mean_loss[0]))
    assert payload["held_out"]["cost"] == pytest.approx(float(ev.mean_cost[0]) / ev.full_cost)

    rng = np.random.default_rng(0)
    served_log(tmp_path / "ok.jsonl", policy, test, 1.0, rng)
    assert main(["monitor", str(tmp_path / "ok.jsonl"), "--policy", str(policy_file)]) == 0
    assert "no alarm" in capsys.readouterr().out
    # the same traffic served by two ranks (alternate requests, timed): merged, the same verdict
    log = read_log(tmp_path / "ok.jsonl")
    log["time"] = np.arange(len(log["exit"]), dtype=np.float64)
    for rank in (0, 1):
        write_log(tmp_path / f"rank{rank}.jsonl", {k: v[rank::2] for k, v in log.items()})
    ranks = [str(tmp_path / f"rank{rank}.jsonl") for rank in (0, 1)]
    assert main(["monitor", *ranks, "--policy", str(policy_file), "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["requests"] == len(log["exit"]) and not merged["alarm"]
    # drift: the heads became overconfident (logits x 2, e.g. after quantisation), so the
    # same thresholds let more requests leave early; disagreement rises to about 11 %
    drifted = ExitOutputs(test.logits * 2, labels=test.labels, costs=test.costs)
    served_log(tmp_path / "shift.jsonl", policy, drifted, 0.3, rng)
    png = tmp_path / "risk.png"
    with pytest.raises(SystemExit) as alarm:  # status 1: an alarm, for cron jobs and CI
        main(
            [
                "monitor",
                str(tmp_path / "shift.jsonl"),
                "--policy",
                str(policy_file),
                "--plot",
                str(png),
            ]
        )
    out = capsys.readouterr().out
    assert alarm.value.code == 1 and "ALARM at request" in out and png.stat().st_size > 0


def test_certify_and_monitor_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["certify", "--risk", "disagreement"])
    assert "expected NAME=LIMIT" in capsys.readouterr().err
    assert main(["certify", "--risk", "latency=0.1"]) == 2
    assert "`limits` to be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as nothing:
        main(["certify", "--risk", "error=0.001"])
    assert nothing.value.code == 1
    out = capsys.readouterr().out.strip()
    # issue 24 item 7: the reason was cut off mid-sentence ("... looser limits may")
    assert out.startswith("nothing certified: no candidate on the Pareto front")
    assert out.endswith("more calibration data, looser limits or a lower confidence may certify one")
    (tmp_path / "p.json").write_text(
        '{"format": "exitwise.ExitPolicy/1", "kind": "fixed", "params": {"exit": 1}}'
    )
    (tmp_path / "log.jsonl").write_text('{"exit": 0, "confidence": 0.5, "prediction": 1}\n')
    assert main(["monitor", str(tmp_path / "log.jsonl"), "--policy", str(tmp_path / "p.json")]) == 2
    assert "records no guarantee" in capsys.readouterr().err
