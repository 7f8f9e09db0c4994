"""Structure the issue tracker asked for: light imports, small modules, one registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import exitwise

PACKAGE = Path(exitwise.__file__).parent


def test_regression_importing_calibrate_and_policies_stays_light():
    # issue 10: scikit-learn and scipy are imported where used, not by `import exitwise.*`
    code = (
        "import sys, exitwise, exitwise.calibrate, exitwise.policies, exitwise.metrics, "
        "exitwise.signals\n"
        "heavy = [m for m in ('sklearn', 'scipy', 'matplotlib', 'netcal') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_modules_stay_small():
    sizes = {
        str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert max(sizes.values()) <= 450, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_one_registry_of_estimators():
    from exitwise.calibrate import CALIBRATORS, METHODS, Calibrator, make_calibrator
    from exitwise.calibrate._estimator import REGISTRY, FittedEstimator

    assert CALIBRATORS is REGISTRY
    for name in METHODS:
        assert type(make_calibrator(name)).__name__ in REGISTRY

    class _Private(Calibrator):  # private classes stay out
        pass

    class Plugged(FittedEstimator):
        method_name = None

    try:
        assert "Plugged" in REGISTRY and "_Private" not in REGISTRY
    finally:
        REGISTRY.pop("Plugged", None)


MEMORY_PROBE = r"""
import sys, numpy as np, torch
from pathlib import Path
from exitwise import ExitOutputs, metrics
from exitwise.policies import risk_controlled_threshold
from exitwise.signals import max_probability

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024

g = torch.Generator().manual_seed(0)
logits = torch.randn(400, 4, 50_000, generator=g)          # 320 MB of float32
labels = torch.randint(0, 50_000, (400,), generator=g)
logits[torch.arange(400), :, labels] += 8.0
out = ExitOutputs(logits, labels=labels)
size = logits.numel() * 4
what = sys.argv[1]
Path("/proc/self/clear_refs").write_text("5")
before = rss("VmRSS:")
if what == "signal":
    max_probability(out)
elif what == "ece":
    metrics.expected_calibration_error(logits, labels, input="logits")
elif what in ("transform", "probs"):
    from exitwise.calibrate import TemperatureScaling

    fitted = TemperatureScaling().fit(out[:40])
    calibrated = fitted.transform(out) if what == "probs" else None
    Path("/proc/self/clear_refs").write_text("5")
    before = rss("VmRSS:")
    if what == "transform":
        fitted.transform(out)  # its output is one input's size
    else:
        calibrated.probs()
else:
    small = ExitOutputs(torch.randn(20_000, 4, 3, generator=g), labels=torch.arange(20_000) % 3)
    size = 200_001 * 20_000 * 8                                # the [G, N] float64 of before
    risk_controlled_threshold(small, "max_probability", limit=0.3, confidence=0.9,
                              grid=np.linspace(0, 1, 200_001))
print((rss("VmHWM:") - before) / size)
"""


def test_regression_signals_ece_risk_grids_and_calibrated_outputs_do_not_copy_the_input():
    # issue 10 defects 8 and 9: max_probability made float64 copies of ~7.8x the input, ECE
    # 2x, and risk control a [grid, N] float64 loss matrix (1.1 GB at N = 1M, 1,400 points).
    if not Path("/proc/self/clear_refs").exists():
        import pytest

        pytest.skip("needs Linux /proc to read the peak memory of a process")
    # issue 24 item 10: TemperatureScaling.transform(out) peaked at 2x the logits (a scaled
    # copy, then log_softmax); a calibrated output now costs its own size plus one chunk of
    # rows, and so do its probabilities (limit 1.3x each).
    # limits are shares of the input; one float32 copy would be 1.0. The signal's peak varies
    # from 0.07 to 0.33 between runs (per-thread allocator arenas keep freed chunks), so its
    # limit is 0.5: any copy of the input still fails.
    checks = (("signal", 0.5), ("ece", 0.3), ("risk", 0.01), ("transform", 1.3), ("probs", 1.3))
    for what, limit in checks:
        run = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, what], capture_output=True, text=True, check=True
        )
        assert float(run.stdout.strip()) <= limit, (what, run.stdout)


# ----------------------------------------------------------------------------- import graph
DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """Every exitwise module -> the exitwise modules it imports (at any depth of the file:
    function-level imports count, they are still dependencies)."""
    import ast

    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if not node.module.startswith("exitwise"):
                    continue
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("exitwise."))
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def design_layers() -> dict[str, int]:
    """The layer table of docs/design.md: backticked paths (``exitwise/x.py`` or a folder
    ``exitwise/x/``) -> layer number."""
    import re

    layers = {}
    for line in DESIGN.read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s+[a-z ]+\|(.*)\|", line)
        if not m:
            continue
        for path in re.findall(r"`(exitwise/[\w/.]*)`", m.group(2)):
            layers[path] = int(m.group(1))
    return layers


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    path = module.replace(".", "/")
    candidates = [p for p in layers if p in (path + ".py", path + "/") or path.startswith(p)]
    candidates = [p for p in candidates if p.endswith("/") or p == path + ".py"]
    if not candidates:
        return None
    return layers[max(candidates, key=len)]


def test_design_layer_table_names_every_module():
    layers = design_layers()
    assert layers, "docs/design.md has no layer table"
    missing = [m for m in _modules() if m != "exitwise" and layer_of(m, layers) is None]
    assert not missing, f"modules missing from the layer table of docs/design.md: {missing}"


def test_regression_imports_point_down_the_layers_and_nothing_imports_the_cli():
    layers = design_layers()
    wrong = []
    for module, deps in import_graph().items():
        if module == "exitwise":
            continue
        mine = layer_of(module, layers)
        for dep in deps:
            if dep == "exitwise":
                continue
            theirs = layer_of(dep, layers)
            if theirs is not None and mine is not None and theirs > mine:
                wrong.append(f"{module} (layer {mine}) imports {dep} (layer {theirs})")
            command_line = module.startswith("exitwise.cli") or module == "exitwise.__main__"
            if dep.startswith("exitwise.cli") and not command_line:
                wrong.append(f"{module} imports the CLI ({dep})")
    assert not wrong, "\n".join(sorted(wrong))


def test_regression_import_graph_has_no_cycles():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep.startswith(node + ".") or node == "exitwise":
                continue  # a package's __init__ re-exporting its own submodules
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)
