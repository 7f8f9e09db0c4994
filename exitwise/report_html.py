"""The report's HTML page: one self-contained file a reviewer can read top to bottom.

A summary first (data, splits, calibrator, the policy's held-out result against its target,
warnings), then the per-exit table and the policy as HTML tables, the figures with captions
that say what they show and how to read them, and the policy file's content.
"""

from __future__ import annotations

import html
import json
from typing import Any

from exitwise.report_text import EXCLUDED_NOTE, interval_text

__all__ = ["CAPTIONS", "render_html"]

#: what each figure shows and how to read it
CAPTIONS = {
    "reliability": (
        "Reliability per exit on the test half. Bars: accuracy of the samples in each "
        "confidence bin after calibration, with 95 % Wilson intervals; outlines: before "
        "calibration. A calibrated exit's bars sit on the dashed diagonal; red shading is the "
        "gap. Faint hatched bars hold too few samples to read. The panels below count the "
        "samples per bin (log scale)."
    ),
    "pareto": (
        "Accuracy against mean cost on the test half, for policies tuned on the calibration "
        "half: every shared threshold (gray), the calibration half's frontier with its "
        "per-exit search points (blue, orange), each exit alone (green squares). The red "
        "circle is the chosen policy, the dotted line its accuracy target on this half. The "
        "oracle star knows the labels: an upper bound, not a policy."
    ),
    "exits": (
        "Where the test half's samples leave under the chosen policy: the share answered at "
        "each exit. Early exits are where compute is saved."
    ),
    "latency": (
        "p99 latency (log scale) against the arrival rate, simulated with the latency model: "
        "the chosen policy's exits on the test half under each scheduler (static: a batch "
        "runs to its deepest member; compact: finished requests leave at each exit; refill: "
        "freed slots take new requests) and the full model. A line ends with x where the "
        "queue grows without bound."
    ),
    "positions": (
        "Token-level data, test half. Left: each exit's top-label ECE (after calibration) by "
        "token position (equal-count position buckets). Right: the chosen policy's mean exit "
        "depth by position (1 = first exit): where in a sequence tokens leave early."
    ),
    "risk_coverage": (
        "Risk (error rate) against coverage on the test half for each exit, ordering samples "
        "by the signal: a good signal keeps the risk low while most samples are covered. "
        "AURC is the area under the curve (lower is better)."
    ),
}


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _calibration_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        interval = interval_text(r, "ece").strip() if "ece_low" in r else ""
        body.append(
            [
                r["method"],
                r["exit_name"],
                f"{r['accuracy']:.4f}",
                f"{r['ece']:.4f}",
                interval,
                f"{r['nll']:.4f}",
                f"{r['nll_calibration']:.4f}",
                f"{r['brier']:.4f}",
                f"{r['brier_calibration']:.4f}",
            ]
        )
    header = [
        "method",
        "exit",
        "accuracy",
        "ECE",
        "ECE 95% interval",
        "NLL",
        "NLL: calibration",
        "Brier",
        "Brier: calibration",
    ]
    return _table(header, body)


def _policy_rows(pol: dict[str, Any]) -> list[list[str]]:
    return [
        [
            split,
            f"{pol[split]['accuracy']:.4f}",
            f"{pol['target'][split]:.4f}",
            f"{pol[split]['relative_cost']:.3f}",
            f"{pol[split]['speed_up']:.2f}x",
        ]
        for split in ("tune", "test")
    ]


def _verdict(pol: dict[str, Any]) -> str:
    if not pol["feasible"]:
        return (
            f"No policy meets {html.escape(pol['sla'])} on the calibration half (target "
            f"{pol['target']['tune']:.4f}; the best exit reaches {pol['best_accuracy']:.4f})."
        )
    test, target = pol["test"], pol["target"]["test"]
    head = (
        f"Policy for <b>{html.escape(pol['sla'])}</b>: held-out accuracy "
        f"{test['accuracy']:.4f} against a target of {target:.4f}, at "
        f"{test['relative_cost']:.3f} of the full model's cost ({test['speed_up']:.2f}x). "
    )
    if pol["missed_by"] > 0:
        return head + (
            f"<b class='miss'>Missed on held-out data by {pol['missed_by']:.4f}</b>: the target "
            "holds on the calibration half it was tuned on; no guarantee holds elsewhere."
        )
    return head + "The target is met on held-out data too."


def render_html(summary: dict[str, Any], images: dict[str, str]) -> str:
    """The report page for ``summary`` (as in summary.json) and base64 PNGs by name."""
    d, pol = summary["data"], summary["policy"]
    warnings = summary.get("warnings", [])
    warning_items = "".join(
        f"<li>{html.escape(w['step'])}: {html.escape(w['category'])}: "
        f"{html.escape(w['message'])}</li>"
        for w in warnings
    )
    excluded = any(r.get("ece_excludes_estimate") for r in summary["calibration"])
    figures = "\n".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{data}">'
        f"<figcaption><b>{name}.</b> {html.escape(CAPTIONS.get(name, ''))}</figcaption></figure>"
        for name, data in images.items()
    )
    policy_section = ""
    if pol["feasible"]:
        policy_section = _table(
            ["split", "accuracy", "target", "cost / full", "speed-up"], _policy_rows(pol)
        ) + (
            "<p>The policy file (<code>ThresholdPolicy</code>, signal "
            f"<code>{html.escape(pol['signal'])}</code> after "
            f"<code>{html.escape(pol['calibrator'])}</code> calibration):</p><pre>"
            f"{html.escape(json.dumps(pol['policy_file'], indent=2))}</pre>"
        )
    speculation = ""
    if "tokens" in summary:
        spec = summary["tokens"]["speculation"]
        speculation = (
            "<h2>Self-speculative decoding (test half, teacher-forced)</h2><p>Draft with the "
            "first exits, verify with the full model: acceptance, tokens per verification from "
            "the sequences' own runs of agreement (and the i.i.d. formula), and the expected "
            "speed-up from the exits' costs. Free generation can accept fewer drafts than "
            f"teacher forcing shows.</p><pre>{html.escape(spec['text'])}</pre>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>exitwise report</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}}
pre{{background:#f6f6f6;padding:1em}} img{{max-width:100%}}
table{{border-collapse:collapse;margin:1em 0}} td,th{{border:1px solid #ccc;padding:3px 8px;
text-align:right}} th{{background:#eee}} .miss{{color:#b00}} .summary{{background:#f3f7fb;
padding:1em;border-left:4px solid #48c}} figcaption{{max-width:900px;margin-bottom:2em}}
</style></head>
<body><h1>exitwise report</h1>
<div class="summary">
<p>{d["num_samples"]} samples, {d["num_exits"]} exits ({html.escape(", ".join(d["exit_names"]))}),
{d["num_classes"]} classes. Calibration and tuning on {d["calibration_samples"]} samples;
every number and figure below is on the other {d["test_samples"]} (held out), with
{d["bootstrap_resamples"]} bootstrap resamples ({d["interval"]} intervals).
Calibrator used for tuning: <b>{html.escape(pol["calibrator"])}</b>.</p>
<p>{_verdict(pol)}</p>
{
        f"<p>Warnings while building this report:</p><ul>{warning_items}</ul>"
        if warnings
        else "<p>No warnings were raised while building this report.</p>"
    }
</div>
<h2>Calibration per exit (test half)</h2>
{_calibration_table(summary["calibration"])}
<p>"calibration" columns: the part of each proper score that recalibration removes (loss
minus the loss after temperature scaling cross-fitted on the test half, Berta et al. 2025);
the rest is refinement, which no recalibration can lower. Near 0 (it can be slightly
negative on finite samples): nothing left to calibrate.</p>
{f"<p>{html.escape(EXCLUDED_NOTE)}.</p>" if excluded else ""}
<h2>The tuned policy</h2>
{policy_section}
{speculation}
<h2>Figures</h2>
{figures}
</body></html>
"""
