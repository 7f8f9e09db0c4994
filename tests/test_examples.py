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
