"""The digits example runs end to end offline (the text example needs extra packages)."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_digits_example_runs(capsys):
    runpy.run_path(str(EXAMPLES / "digits_early_exit.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "after temperature scaling" in out
    assert "policy: exit when max-probability >=" in out
    assert out.count("block") >= 6


def test_runtime_controller_example_matches_prediction(capsys):
    runpy.run_path(str(EXAMPLES / "runtime_controller.py"), run_name="__main__")
    out = capsys.readouterr().out
    for line in out.splitlines():
        if "accuracy served" in line:
            served, predicted = line.split("served")[1].split(", predicted")
            assert float(served) == float(predicted)
        if "FLOP speed-up measured" in line:
            parts = line.split()
            assert parts[3] == parts[6]  # measured == predicted per-sample speed-up
    assert out.count("FLOP speed-up measured") == 2


def test_sla_table_example_runs(capsys):
    runpy.run_path(str(EXAMPLES / "sla_table.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert out.count("per-exit") == 4 and "Learn-then-Test" in out


def test_certify_several_risks_example_runs(capsys):
    example = runpy.run_path(str(EXAMPLES / "certify_several_risks.py"))
    rows = example["compare_procedures"](example["load_default"](), splits=3)
    out = capsys.readouterr().out
    assert "Pareto Testing, disagreement <= 5% & cost <= 42%" in out
    assert all(r["ok"] for r in rows["pt1"])  # the bundled data always certifies 5 %


def test_language_model_example_runs_end_to_end(capsys, monkeypatch):
    """Train the tiny LM on the standard library's docstrings (offline anywhere), collect,
    tune, certify, plan, generate: self-speculative greedy output must equal the full
    model's greedy output (it is exact), and the planner's tokens per verification must
    match what generation measures closely."""
    import sys

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "early_exit_lm.py",
            "--corpus",
            "stdlib",
            "--steps",
            "250",
            "--sequences",
            "120",
            "--prompts",
            "6",
        ],
    )
    runpy.run_path(str(EXAMPLES / "early_exit_lm.py"), run_name="__main__")
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "self-speculation" in x and "measured" in x)
    assert "output equals the full model's greedy output in 6/6 generations" in line
    predicted = float(line.split(":")[1].split("tokens per verification predicted")[0])
    measured = float(line.split("predicted,")[1].split("measured")[0])
    assert abs(predicted - measured) < 0.5, line
    assert "layers per token" in out and "sequence-level certificate" in out
