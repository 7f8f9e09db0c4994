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
else:
    small = ExitOutputs(torch.randn(20_000, 4, 3, generator=g), labels=torch.arange(20_000) % 3)
    size = 200_001 * 20_000 * 8                                # the [G, N] float64 of before
    risk_controlled_threshold(small, "max_probability", delta=0.3, epsilon=0.1,
                              grid=np.linspace(0, 1, 200_001))
print((rss("VmHWM:") - before) / size)
"""


def test_regression_signals_ece_and_risk_grids_do_not_copy_the_input():
    # issue 10 defects 8 and 9: max_probability made float64 copies of ~7.8x the input, ECE
    # 2x, and risk control a [grid, N] float64 loss matrix (1.1 GB at N = 1M, 1,400 points).
    if not Path("/proc/self/clear_refs").exists():
        import pytest

        pytest.skip("needs Linux /proc to read the peak memory of a process")
    # limits are shares of the input; one float32 copy would be 1.0. The signal's peak varies
    # from 0.07 to 0.33 between runs (per-thread allocator arenas keep freed chunks), so its
    # limit is 0.5: any copy of the input still fails.
    for what, limit in (("signal", 0.5), ("ece", 0.3), ("risk", 0.01)):
        run = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, what], capture_output=True, text=True, check=True
        )
        assert float(run.stdout.strip()) <= limit, (what, run.stdout)
