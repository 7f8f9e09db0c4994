"""A one-command report for a model review: HTML + PNGs + ``summary.json``.

``build_report(outputs, out_dir)`` splits the data in a calibration and a test half, fits the
calibrators on the first, and writes:

* ``reliability.png``: per-exit reliability diagrams before/after the first calibrator;
* ``pareto.png``: accuracy against mean cost on the test half (every shared threshold, the
  Pareto frontier with per-exit points, fixed exits, the oracle, the chosen SLA policy);
* ``exits.png``: where samples leave under the chosen policy;
* ``risk_coverage.png``: risk against coverage for each exit;
* ``summary.json``: every number shown (per-exit accuracy / ECE / NLL / Brier before and
  after each calibrator with basic bootstrap intervals, the tuned policy on both halves, the
  frontier, and every warning raised while building it);
* ``report.html``: a self-contained page (images embedded) with the same tables.

An interval that lies beside its estimate is marked ``*`` with the reason (the plug-in ECE is
biased upwards). Warnings (e.g. a calibrator that did not converge) are recorded in the
summary and shown on the page, never swallowed. Figures are built as
``matplotlib.figure.Figure`` objects: the process's matplotlib backend is left alone.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exitwise import metrics
from exitwise.calibrate import Calibrator, make_calibrator
from exitwise.data import ExitOutputs
from exitwise.policies import ExitScores, PolicyResult
from exitwise.policies.scores import signal_label
from exitwise.report_html import render_html
from exitwise.report_text import EXCLUDED_NOTE, interval_text

__all__ = ["build_report", "summary_table"]


def summary_table(summary: dict[str, Any]) -> str:
    """The per-exit calibration table, the tuned policy and the warnings as aligned text."""
    lines = [
        f"{'method':<13} {'exit':<10} {'accuracy':>9} {'ECE':>7} {'ECE 95% CI':>18} "
        f"{'NLL':>7} {'Brier':>7}"
    ]
    lines.append("-" * len(lines[0]))
    for r in summary["calibration"]:
        lines.append(
            f"{r['method']:<13} {r['exit_name']:<10} {r['accuracy']:>9.4f} {r['ece']:>7.4f} "
            f"{interval_text(r, 'ece'):>18} {r['nll']:>7.4f} {r['brier']:>7.4f}"
        )
    if any(r.get("ece_excludes_estimate") for r in summary["calibration"]):
        lines.append(EXCLUDED_NOTE)
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
                f"  {split:<5} accuracy {s['accuracy']:.4f} (target {pol['target'][split]:.4f}), "
                f"mean cost {s['relative_cost']:.3f} of the full model, speed-up "
                f"{s['speed_up']:.2f}x"
            )
        if pol["missed_by"] > 0:
            lines.append(
                f"  the target is missed on held-out data by {pol['missed_by']:.4f} "
                "(tuning meets it on the calibration half only; no guarantee holds elsewhere)"
            )
        else:
            lines.append("  the target is also met on held-out data")
    else:
        lines.append(
            f"SLA {pol['sla']}: no policy meets it on the calibration half (target "
            f"{pol['target']['tune']:.4f}; the best exit reaches {pol['best_accuracy']:.4f})"
        )
    for w in summary.get("warnings", []):
        lines.append(f"warning ({w['step']}): {w['category']}: {w['message']}")
    return "\n".join(lines)


class _Recorder:
    """Runs report steps, keeping every warning they raise (with the step's name)."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.warnings: list[dict[str, str]] = []

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn(*args, **kwargs)
        for w in caught:
            entry = {"step": name, "category": w.category.__name__, "message": str(w.message)}
            if entry not in self.warnings:
                self.warnings.append(entry)
        self.bar.set_postfix_str(name)
        self.bar.update(1)
        return result


def _calibration_rows(
    test: ExitOutputs, fitted: dict[str, Any], n_resamples: int, seed: int
) -> list[dict[str, Any]]:
    """Per-exit metric rows of the test half, uncalibrated and after each calibrator, with the
    calibration/refinement parts of NLL and Brier."""
    from exitwise.calibrate.compare import metric_rows

    rows = []
    for method, out in [
        ("uncalibrated", test),
        *[(m, c.transform(test)) for m, c in fitted.items()],
    ]:
        rows += metric_rows(out, method, "test", n_resamples=n_resamples, seed=seed)
    return rows


def _policy_summary(
    cal_s: ExitScores,
    test_s: ExitScores,
    target: float,
    relative: bool,
    calibrator: str,
) -> tuple[dict[str, Any], PolicyResult]:
    """The SLA policy tuned on the calibrated calibration half's scores, reported on both
    halves with the target on each and by how much the held-out result misses it (0 when
    met). Reads the result's fields (``evaluation``, ``reason``, ``best_achievable``)."""
    from exitwise.policies import tune_for_accuracy

    tuned = tune_for_accuracy(cal_s, target=target, relative=relative)
    sla = f"accuracy >= {target:g}" + (" x final" if relative else "")
    summary: dict[str, Any] = {
        "sla": sla,
        "signal": signal_label(cal_s.signal),
        "calibrator": calibrator,
        "feasible": tuned.feasible,
        "target": {
            "tune": cal_s.accuracy_target(target, relative),
            "test": test_s.accuracy_target(target, relative),
        },
    }
    if tuned.feasible:
        summary["thresholds"] = list(tuned.policy.thresholds)
        summary["policy_file"] = tuned.policy.to_dict()
        summary["tune"] = tuned.evaluation.to_dict()
        summary["test"] = tuned.report(test_s).to_dict()
        summary["missed_by"] = max(0.0, summary["target"]["test"] - summary["test"]["accuracy"])
    else:
        summary["reason"] = tuned.reason
        summary["best_accuracy"] = tuned.best_achievable["accuracy"]
    return summary, tuned


def _frontier(cal_s: ExitScores, test_s: ExitScores) -> dict[str, Any]:
    """Policies tuned on the calibration half, scored on the test half (shared thresholds,
    the frontier with per-exit points), fixed exits and the oracle on the test half."""
    from exitwise.policies import FixedExitPolicy, OracleExit, evaluate, held_out_frontier

    return {
        "frontier": held_out_frontier(cal_s, test_s, budgets=[0.3, 0.5, 0.7]),
        "fixed": evaluate([FixedExitPolicy(e) for e in range(test_s.num_exits)], test_s),
        "oracle": evaluate(OracleExit(), test_s),
    }


def _figures(
    test: ExitOutputs,
    test_s: ExitScores,
    policy: dict[str, Any],
    tuned: PolicyResult,
    curves: dict[str, Any],
    out_dir: Path,
) -> dict[str, str]:
    """Write the four PNGs; return them base64-encoded for the page."""
    from exitwise import plots

    full = test_s.full_cost
    fixed, oracle, front = curves["fixed"], curves["oracle"], curves["frontier"]
    chosen = tuned.report(test_s) if tuned.feasible else None
    figures = {"reliability": plots.reliability_grid(test, test_s.outputs)}
    ax = plots.new_figure((6, 4.5)).subplots()
    plots.pareto_plot(
        front,
        fixed=fixed,
        oracle=oracle,
        chosen=chosen,
        full_cost=full,
        target=policy["target"]["test"],
        held_out=True,
        ax=ax,
    )
    ax.set_title(
        f"test half: policies tuned on the calibration half\n"
        f"({policy['calibrator']}-calibrated {policy['signal']})",
        fontsize=10,
    )
    figures["pareto"] = ax.figure
    ax = plots.new_figure((5, 3.5)).subplots()
    fractions = (
        policy["test"]["exit_fractions"]
        if policy["feasible"]
        else [0.0] * (test.num_exits - 1) + [1.0]
    )
    plots.exit_distribution(fractions, test.exit_names, ax=ax)
    ax.set_title(f"test half: where samples leave ({policy['sla']})", fontsize=10)
    figures["exits"] = ax.figure
    ax = plots.new_figure((5, 4)).subplots()
    plots.risk_coverage_plot(test_s, ax=ax)
    ax.set_title(f"test half: risk against coverage ({policy['signal']})", fontsize=10)
    figures["risk_coverage"] = ax.figure
    images = {}
    for name, fig in figures.items():
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        images[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    return images


def _chosen_policy(policy: dict[str, Any]) -> Any:
    """The tuned policy of the summary, or the full model when no policy met the SLA."""
    from exitwise.policies import FixedExitPolicy, policy_from_dict

    return policy_from_dict(policy["policy_file"]) if policy["feasible"] else FixedExitPolicy(-1)


def _token_section(
    test: ExitOutputs, test_s: ExitScores, policy: dict[str, Any], out_dir: Path
) -> dict[str, Any]:
    """Token-level data: calibration and exit depth by position (PNG) and the
    self-speculative decoding plan of the test half."""
    from exitwise.generation import plan_self_speculation
    from exitwise.plots_generation import position_plot

    chosen = _chosen_policy(policy)
    axes = position_plot(test_s.outputs, chosen.exit_indices(test_s))
    path = out_dir / "positions.png"
    axes[0].figure.savefig(path, dpi=110, bbox_inches="tight")
    plan = plan_self_speculation(test, max_draft=8)
    return {
        "num_sequences": test.num_groups,
        "speculation": {"best": plan.best, "rows": plan.rows, "text": plan.to_text()},
        "image": base64.b64encode(path.read_bytes()).decode("ascii"),
    }


def _serving_curves(
    test_s: ExitScores, policy: dict[str, Any], latency: Any, max_batch: int = 32
) -> dict[str, Any]:
    """p99 latency against arrival rate for the chosen policy (per scheduler) and the full
    model, on the test half's exit depths; rates up to 1.5x the full model's capacity."""
    from exitwise.serving import latency_by_rate

    chosen = _chosen_policy(policy)
    exits = chosen.exit_indices(test_s).cpu().numpy()
    capacity = max_batch / latency.full_time(max_batch)
    rates = [float(capacity * (0.1 + 0.125 * k)) for k in range(12)]
    curves = latency_by_rate(exits, latency, rates, max_batch=max_batch, num_requests=5000)
    return {"rates": rates, "p99_seconds": curves, "max_batch": max_batch}


def build_report(
    outputs: ExitOutputs,
    out_dir: str | Path,
    *,
    calibrators: Sequence[str | Calibrator] = ("temperature", "isotonic"),
    signal: str = "max_probability",
    target_accuracy: float = 0.99,
    relative: bool = True,
    split: float = 0.5,
    n_resamples: int = 200,
    seed: int = 0,
    progress: bool = False,
    latency: Any = None,
) -> dict[str, Any]:
    """Write the report files to ``out_dir`` and return the summary (as in summary.json).

    ``calibrators`` are method names (see ``exitwise.calibrate.METHODS``) or unfitted
    calibrator objects; ``progress=True`` shows a progress bar over the steps (on stderr).
    With a ``latency`` model (:class:`~exitwise.serving.LatencyModel`) the report adds p99
    latency against arrival rate for the chosen policy under each scheduler and for the full
    model (``latency.png``).

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
    from tqdm.auto import tqdm

    if outputs.labels is None:
        raise ValueError("The report needs labelled outputs (accuracy and calibration).")
    if not calibrators:
        raise ValueError("Expected at least one calibrator method in `calibrators`.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cal, test = outputs.split(split, seed=seed)
    bar = tqdm(total=len(calibrators) + 5, desc="report", unit=" step", disable=not progress)
    steps = _Recorder(bar)
    fitted = {}
    for method in calibrators:
        name = method if isinstance(method, str) else type(method).__name__
        fitted[name] = steps.run(name, make_calibrator(method).fit, cal)
    rows = steps.run("metrics", _calibration_rows, test, fitted, n_resamples, seed)
    main_method = next(iter(fitted))
    # the signal is computed once per split, here; every later step reads these scores
    cal_s = ExitScores(fitted[main_method].transform(cal), signal)
    test_s = ExitScores(fitted[main_method].transform(test), signal)
    policy, tuned = steps.run(
        "tune", _policy_summary, cal_s, test_s, target_accuracy, relative, main_method
    )
    curves = steps.run("frontier", _frontier, cal_s, test_s)
    images = steps.run("figures", _figures, test, test_s, policy, tuned, curves, out_dir)
    serving = None
    if latency is not None:
        serving = steps.run("serving", _serving_curves, test_s, policy, latency)
        from exitwise.plots_serving import latency_rate_plot

        ax = latency_rate_plot(serving["rates"], serving["p99_seconds"])
        path = out_dir / "latency.png"
        ax.figure.savefig(path, dpi=110, bbox_inches="tight")
        images["latency"] = base64.b64encode(path.read_bytes()).decode("ascii")
    if outputs.groups is not None and outputs.positions is not None:
        tokens = steps.run("tokens", _token_section, test, test_s, policy, out_dir)
        images["positions"] = tokens.pop("image")
    frontier, fixed, oracle = curves["frontier"], curves["fixed"], curves["oracle"]
    frontier = {k: v for k, v in frontier.items() if not k.startswith("shared_")}
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
            "interval": metrics.table.INTERVAL_METHOD,
        },
        "calibration": rows,
        "policy": policy,
        "frontier": {k: v.tolist() for k, v in frontier.items()},
        "fixed_exits": {"accuracy": fixed.accuracy.tolist(), "mean_cost": fixed.mean_cost.tolist()},
        "oracle": {"accuracy": float(oracle.accuracy[0]), "mean_cost": float(oracle.mean_cost[0])},
        "warnings": steps.warnings,
    }
    if serving is not None:
        summary["serving"] = serving
    if outputs.groups is not None and outputs.positions is not None:
        summary["tokens"] = tokens
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "report.html").write_text(render_html(summary, images))
    steps.run("write", lambda: None)
    bar.close()
    return summary
