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
