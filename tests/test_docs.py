"""Every Python snippet in docs/ runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
SNIPPETS = [
    pytest.param(block, id=f"{path.name}-{i}")
    for path in sorted(DOCS.rglob("*.md"))
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


@pytest.mark.parametrize("code", SNIPPETS)
def test_docs_snippet_runs(code):
    exec(compile(code, "docs", "exec"), {})


def test_there_are_snippets():
    assert len(SNIPPETS) >= 5
