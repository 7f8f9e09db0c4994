"""A one-command report for a model review: HTML + PNGs + ``summary.json``.

``build_report(outputs, out_dir)`` splits the data in a calibration and a test half, fits the
calibrators on the first, and writes:

* ``reliability.png``: per-exit reliability diagrams before/after the first calibrator;
* ``pareto.png``: accuracy against mean cost on the test half (every shared threshold, the
  Pareto frontier with per-exit points, fixed exits, the oracle, the chosen SLA policy);
* ``exits.png``: where samples leave under the chosen policy;
* ``risk_coverage.png``: risk against coverage for each exit;
* ``summary.json``: every number shown (per-exit accuracy / ECE / NLL / Brier before and
  after each calibrator with bias-corrected bootstrap intervals, the tuned policy on both
  halves, the frontier);
* ``report.html``: a self-contained page (images embedded) with the same tables.
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exitwise import metrics
from exitwise.calibrate import make_calibrator
from exitwise.data import ExitOutputs

__all__ = ["build_report", "summary_table"]


def _metric_rows(outputs: ExitOutputs, method: str, n_resamples: int, seed: int) -> list[dict]:
    probs, labels = outputs.probs(), outputs.labels
    rows = []
    values: dict[str, Any] = {}
    for name, fn, kwargs in [
        ("accuracy", metrics.per_exit_accuracy, {}),
        ("ece", metrics.expected_calibration_error, {}),
        ("brier", metrics.brier_score, {}),
    ]:
        values[name] = metrics.bootstrap(
            fn, probs, labels, n_resamples=n_resamples, seed=seed, method="bc", **kwargs
        )
    values["nll"] = metrics.bootstrap(
        metrics.negative_log_likelihood,
        outputs.logits,
        labels,
        n_resamples=n_resamples,
        seed=seed,
        method="bc",
        input="logits",
    )
    for e, exit_name in enumerate(outputs.exit_names):
        row = {"method": method, "exit": exit_name}
        for name, res in values.items():
            row[name] = float(res.estimate[e])
            row[f"{name}_low"] = float(res.low[e])
            row[f"{name}_high"] = float(res.high[e])
        rows.append(row)
    return rows


def summary_table(summary: dict[str, Any]) -> str:
    """The per-exit calibration table and the tuned policy as aligned text."""
    lines = [
        f"{'method':<13} {'exit':<10} {'accuracy':>9} {'ECE':>7} {'ECE 95% CI':>17} "
        f"{'NLL':>7} {'Brier':>7}"
    ]
    lines.append("-" * len(lines[0]))
    for r in summary["calibration"]:
        ci = f"[{r['ece_low']:.4f}, {r['ece_high']:.4f}]"
        lines.append(
            f"{r['method']:<13} {r['exit']:<10} {r['accuracy']:>9.4f} {r['ece']:>7.4f} "
            f"{ci:>17} {r['nll']:>7.4f} {r['brier']:>7.4f}"
        )
    pol = summary["policy"]
    lines.append("")
    if pol["feasible"]:
        lines.append(
            f"SLA {pol['sla']}: {pol['signal']} thresholds "
            f"{[round(t, 4) for t in pol['thresholds']]}"
        )
        for split in ("tune", "test"):
            s = pol[split]
            lines.append(
                f"  {split:<5} accuracy {s['accuracy']:.4f}, mean cost {s['relative_cost']:.3f} "
                f"of the full model, speed-up {s['speed_up']:.2f}x"
            )
    else:
        lines.append(f"SLA {pol['sla']}: no policy meets it on the calibration half")
    return "\n".join(lines)


def _png(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(path.read_bytes()).decode("ascii")


def build_report(
    outputs: ExitOutputs,
    out_dir: str | Path,
    *,
    calibrators: Sequence[str] = ("temperature", "isotonic"),
    signal: str = "max_probability",
    target_accuracy: float = 0.99,
    relative: bool = True,
    split: float = 0.5,
    n_resamples: int = 200,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the report files to ``out_dir`` and return the summary (as in summary.json).

    ``progress=True`` shows a progress bar over the steps (on stderr).

    The SLA is "accuracy >= ``target_accuracy`` (x the final exit's accuracy if
    ``relative``) at the least mean cost", tuned on the calibration half after the first
    calibrator and reported on the test half.

    Examples
    --------
    >>> import tempfile
    >>> from exitwise.datasets import load_default
    >>> with tempfile.TemporaryDirectory() as d:
    ...     summary = build_report(load_default()[:2000], d, n_resamples=20)
    ...     sorted(p.name for p in Path(d).iterdir())
    ['exits.png', 'pareto.png', 'reliability.png', 'report.html', 'risk_coverage.png',
     'summary.json']
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from exitwise import plots
    from exitwise.policies import (
        FixedExitPolicy,
        OracleExit,
        evaluate,
        pareto_frontier,
        sweep_shared_threshold,
        tune_for_accuracy,
    )
    from exitwise.signals import compute_signal

    if outputs.labels is None:
        raise ValueError("The report needs labelled outputs (accuracy and calibration).")
    if not calibrators:
        raise ValueError("Expected at least one calibrator method in `calibrators`.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cal, test = outputs.split(split, seed=seed)
    full = float(outputs.costs[-1])
    from tqdm.auto import tqdm

    bar = tqdm(total=len(calibrators) + 4, desc="report", unit=" step", disable=not progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    rows = _metric_rows(test, "uncalibrated", n_resamples, seed)
    step("metrics")
    calibrated = {}
    for method in calibrators:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted = make_calibrator(method).fit(cal)
        calibrated[method] = (fitted.transform(cal), fitted.transform(test))
        rows += _metric_rows(calibrated[method][1], method, n_resamples, seed)
        step(method)
    main_method = calibrators[0]
    cal_c, test_c = calibrated[main_method]

    tuned = tune_for_accuracy(cal_c, signal, target_accuracy, relative=relative)
    sla = f"accuracy >= {target_accuracy:g}" + (" x final" if relative else "")
    policy_summary: dict[str, Any] = {
        "sla": sla,
        "signal": signal,
        "calibrator": main_method,
        "feasible": tuned.feasible,
    }
    if tuned.feasible:
        test_rep = tuned.report(test_c)
        policy_summary["thresholds"] = list(tuned.policy.thresholds)
        for name, rep in (("tune", tuned.achieved), ("test", test_rep)):
            policy_summary[name] = {**rep, "relative_cost": rep["mean_cost"] / full}

    step("tune")
    scores = compute_signal(test_c, signal)
    sweep = sweep_shared_threshold(scores, test_c.correct(), test_c.costs)
    frontier = pareto_frontier(test_c, signal, budgets=[0.3, 0.5, 0.7])
    fixed = evaluate([FixedExitPolicy(e) for e in range(outputs.num_exits)], test_c)
    oracle = evaluate(OracleExit(), test_c)
    step("frontier")

    images = {}
    images["reliability"] = _png(plots.reliability_grid(test, test_c), out_dir / "reliability.png")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    chosen = None
    if tuned.feasible:
        chosen = (policy_summary["test"]["mean_cost"], policy_summary["test"]["accuracy"])
    plots.pareto_plot(
        frontier,
        sweep=sweep,
        fixed={"cost": fixed.mean_cost.tolist(), "accuracy": fixed.accuracy.tolist()},
        oracle=(float(oracle.mean_cost[0]), float(oracle.accuracy[0])),
        chosen=chosen,
        full_cost=full,
        ax=ax,
    )
    ax.set_title(f"test half, {main_method}-calibrated {signal}")
    images["pareto"] = _png(fig, out_dir / "pareto.png")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    fractions = (
        policy_summary["test"]["exit_fractions"]
        if tuned.feasible
        else [0.0] * (outputs.num_exits - 1) + [1.0]
    )
    plots.exit_distribution(fractions, outputs.exit_names, ax=ax)
    ax.set_title(f"where samples leave ({sla})")
    images["exits"] = _png(fig, out_dir / "exits.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    plots.risk_coverage_plot(test_c, signal, ax=ax)
    images["risk_coverage"] = _png(fig, out_dir / "risk_coverage.png")

    summary = {
        "data": {
            "num_samples": outputs.num_samples,
            "num_exits": outputs.num_exits,
            "num_classes": outputs.num_classes,
            "exit_names": outputs.exit_names,
            "costs": outputs.costs.tolist(),
            "calibration_samples": len(cal),
            "test_samples": len(test),
            "bootstrap_resamples": n_resamples,
        },
        "calibration": rows,
        "policy": policy_summary,
        "frontier": {k: v.tolist() for k, v in frontier.items()},
        "fixed_exits": {"accuracy": fixed.accuracy.tolist(), "mean_cost": fixed.mean_cost.tolist()},
        "oracle": {"accuracy": float(oracle.accuracy[0]), "mean_cost": float(oracle.mean_cost[0])},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.html").write_text(_html(summary, images))
    step("figures")
    bar.close()
    return summary


def _html(summary: dict[str, Any], images: dict[str, str]) -> str:
    table = html.escape(summary_table(summary))
    figs = "\n".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name}'
        "</figcaption></figure>"
        for name, data in images.items()
    )
    d = summary["data"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>exitwise report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}
pre{{background:#f6f6f6;padding:1em}} img{{max-width:100%}}</style></head>
<body><h1>exitwise report</h1>
<p>{d["num_samples"]} samples, {d["num_exits"]} exits ({", ".join(d["exit_names"])}),
{d["num_classes"]} classes; calibration on {d["calibration_samples"]} samples, metrics on
{d["test_samples"]} held-out samples with {d["bootstrap_resamples"]} bootstrap resamples.</p>
<h2>Calibration per exit and the tuned policy</h2><pre>{table}</pre>
<h2>Figures</h2>{figs}
</body></html>
"""
