"""Plots (structure and drawn values), the report files, and the command line."""

from __future__ import annotations

import html
import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from exitwise import metrics, plots
from exitwise.cli import main
from exitwise.policies import pareto_frontier, sweep_shared_threshold
from exitwise.report import build_report, summary_table
from exitwise.signals import compute_signal


def test_reliability_diagram_draws_the_metric_values(real_outputs):
    probs = real_outputs.probs()[:, 1]
    ax = plots.reliability_diagram(probs, real_outputs.labels, n_bins=10, show_counts=False)
    bars = ax.patches[:10]
    bins = metrics.reliability_bins(probs, real_outputs.labels, 10)
    heights = torch.tensor([b.get_height() for b in bars], dtype=torch.float64)
    assert torch.allclose(heights, torch.nan_to_num(bins.accuracy, nan=0.0), atol=1e-12)
    ece = float(metrics.expected_calibration_error(probs, real_outputs.labels, 10))
    assert f"ECE {ece:.4f}" in ax.get_legend().get_texts()[0].get_text()
    assert ax.get_xlabel() == "confidence" and ax.get_ylabel() == "accuracy"


def test_reliability_diagram_is_readable(real_outputs):
    # issue 11 item 3: counts in their own panel, small bins faint, per-bin Wilson intervals
    from scipy.stats import binomtest

    from exitwise.plots import new_figure

    out = real_outputs[:400]
    probs, labels = out.probs()[:, 0], out.labels
    ax, count_ax = new_figure().subplots(2, 1)
    plots.reliability_diagram(probs, labels, 10, ax=ax, count_ax=count_ax, min_count=20)
    bins = metrics.reliability_bins(probs, labels, 10)
    assert [p.get_height() for p in count_ax.patches] == bins.count.tolist()
    for bar, n in zip(ax.patches[:10], bins.count.tolist(), strict=True):
        assert (bar.get_alpha() < 0.5) == (n < 20)
    for b in range(10):
        n = int(bins.count[b])
        if n:
            k = round(float(bins.accuracy[b]) * n)
            ci = binomtest(k, n).proportion_ci(method="wilson")
            assert float(bins.accuracy_low[b]) == pytest.approx(ci.low, abs=1e-9)
            assert float(bins.accuracy_high[b]) == pytest.approx(ci.high, abs=1e-9)


def test_grid_and_other_plots(real_outputs):
    fig = plots.reliability_grid(real_outputs, real_outputs)
    e = real_outputs.num_exits
    assert [ax.get_title().split("\n")[0] for ax in fig.axes[:e]] == real_outputs.exit_names
    assert [ax.get_ylabel() for ax in fig.axes[e:]] == ["samples"] * e
    ax = plots.exit_distribution([0.5, 0.25, 0.125, 0.125], real_outputs.exit_names)
    assert [round(p.get_height(), 3) for p in ax.patches] == [0.5, 0.25, 0.125, 0.125]
    ax = plots.risk_coverage_plot(real_outputs)
    assert len(ax.lines) == 4 and ax.get_xlabel() == "coverage"
    ax = plots.confidence_histogram(real_outputs, exit=0)
    assert ax.get_xlabel() == "confidence"
    scores = compute_signal(real_outputs[:2000], "max_probability")
    sweep = sweep_shared_threshold(scores, real_outputs[:2000].correct(), real_outputs.costs)
    front = pareto_frontier(real_outputs[:2000], "max_probability", budgets=[0.5])
    from exitwise.policies import OracleExit, ThresholdPolicy, evaluate, evaluate_policy

    ax = plots.pareto_plot(
        front,
        sweep=sweep,
        oracle=evaluate(OracleExit(), real_outputs[:2000]),
        chosen=evaluate_policy(ThresholdPolicy("max_probability", 0.9), real_outputs[:2000]),
        full_cost=float(real_outputs.costs[-1]),
    )
    assert "Pareto frontier" in [t.get_text() for t in ax.get_legend().get_texts()]
    ax = plots.threshold_sweep_plot(sweep, full_cost=float(real_outputs.costs[-1]))
    assert ax.get_xlabel() == "shared threshold"


def test_report_files_and_numbers(real_outputs, tmp_path):
    summary = build_report(
        real_outputs[:3000], tmp_path, calibrators=["temperature"], n_resamples=30
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "exits.png",
        "pareto.png",
        "reliability.png",
        "report.html",
        "risk_coverage.png",
        "summary.json",
    ]
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["policy"]["feasible"] is True
    rows = {(r["method"], r["exit_name"]): r for r in on_disk["calibration"]}
    test = real_outputs[:3000].split(0.5, seed=0)[1]
    ece = metrics.expected_calibration_error(test.probs(), test.labels)
    assert rows[("uncalibrated", "block1")]["ece"] == pytest.approx(float(ece[0]))
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert summary["policy"]["test"]["speed_up"] > 1.0


def test_report_frontier_is_tuned_on_calibration_and_scored_on_test(real_outputs, tmp_path):
    # issue 11 item 1: nothing is tuned on the data it is shown on
    from exitwise.calibrate import TemperatureScaling
    from exitwise.policies import ThresholdPolicy, evaluate

    out = real_outputs[:3000]
    summary = build_report(out, tmp_path, calibrators=["temperature"], n_resamples=5)
    cal, test = out.split(0.5, seed=0)
    ts = TemperatureScaling().fit(cal)
    cal_c, test_c = ts.transform(cal), ts.transform(test)
    tuned_on_cal = pareto_frontier(cal_c, "max_probability", budgets=[0.3, 0.5, 0.7])
    front = summary["frontier"]
    assert torch.equal(
        torch.tensor(front["thresholds"], dtype=torch.float64), tuned_on_cal["thresholds"]
    )
    policies = [ThresholdPolicy("max_probability", t) for t in front["thresholds"]]
    ev = evaluate(policies, test_c)
    assert torch.allclose(torch.tensor(front["accuracy"], dtype=torch.float64), ev.accuracy)
    assert torch.allclose(torch.tensor(front["mean_cost"], dtype=torch.float64), ev.mean_cost)
    # issue 11 item 2: the target on each split and the held-out miss are stated
    pol = summary["policy"]
    final_test = float(test_c.correct()[:, -1].double().mean())
    assert pol["target"]["test"] == pytest.approx(0.99 * final_test)
    assert pol["missed_by"] == pytest.approx(
        max(0.0, pol["target"]["test"] - pol["test"]["accuracy"])
    )
    table = summary_table(summary)
    assert ("missed on held-out data by" in table) == (pol["missed_by"] > 0)


def test_regression_plots_and_report_leave_the_matplotlib_backend_alone(real_outputs, tmp_path):
    # issue 10 defect 7: matplotlib.use("Agg") inside plot functions switched the user's
    # backend for the whole process (a notebook lost its inline plots).
    import matplotlib
    import matplotlib.pyplot as plt

    from exitwise import plots

    before = matplotlib.get_backend()
    figures = plt.get_fignums()
    matplotlib.use("svg")  # a user's choice, which exitwise must keep
    try:
        plots.reliability_diagram(real_outputs.probs()[:, 0], real_outputs.labels)
        plots.reliability_grid(real_outputs[:500])
        build_report(real_outputs[:1000], tmp_path, calibrators=["temperature"], n_resamples=5)
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
    finally:
        matplotlib.use(before)


def test_regression_report_records_warnings_instead_of_hiding_them(real_outputs, tmp_path):
    # issue 10 defect 7: the report ran calibrators under warnings.simplefilter("ignore").
    from exitwise.calibrate import TemperatureScaling
    from exitwise.exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning):  # what the calibrator says when fitted directly
        TemperatureScaling(max_iter=1).fit(real_outputs[:1000])
    summary = build_report(
        real_outputs[:2000],
        tmp_path,
        calibrators=["isotonic", TemperatureScaling(max_iter=1)],
        n_resamples=5,
    )
    recorded = [w for w in summary["warnings"] if w["category"] == "ConvergenceWarning"]
    assert recorded and recorded[0]["step"] == "TemperatureScaling"
    page = (tmp_path / "report.html").read_text()
    assert "TemperatureScaling: ConvergenceWarning" in page


def test_cli_commands(tmp_path, capsys):
    data = tmp_path / "data.npz"
    from exitwise.datasets import load_default

    load_default()[:3000].save(data)
    assert main(["info", str(data), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_exits"] == 4 and len(info["accuracy"]) == 4
    assert (
        main(
            ["calibrate", str(data), "--method", "temperature", "--out", str(tmp_path / "cal.json")]
        )
        == 0
    )
    assert "temperature" in capsys.readouterr().out
    assert (
        main(
            [
                "tune",
                str(data),
                "--calibrator",
                str(tmp_path / "cal.json"),
                "--target-accuracy",
                "0.99",
                "--relative",
                "--out",
                str(tmp_path / "policy.json"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                str(data),
                "--calibrator",
                str(tmp_path / "cal.json"),
                "--policy",
                str(tmp_path / "policy.json"),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["speed_up"] > 1.0
    assert main(["tune", str(data), "--budget", "0.5"]) == 0
    assert main(["tune", str(data), "--risk", "disagreement=0.05", "--confidence", "0.9"]) == 0
    assert main(["report", str(data), "--out", str(tmp_path / "rep"), "--resamples", "20"]) == 0
    assert "report written to" in capsys.readouterr().out


def test_report_page_reads_top_to_bottom(real_outputs, tmp_path):
    # issue 11 item 4: summary first, HTML tables, captions, the policy file, one file
    from exitwise.report_html import CAPTIONS

    summary = build_report(
        real_outputs[:3000], tmp_path, calibrators=["temperature"], n_resamples=5
    )
    page = (tmp_path / "report.html").read_text()
    pol = summary["policy"]
    assert page.index('class="summary"') < page.index("<table>") < page.index("<figure>")
    assert f"held-out accuracy {pol['test']['accuracy']:.4f} against a target of" in page
    assert page.count("<table>") == 2 and "<th>ECE 95% interval</th>" in page
    for name in ("reliability", "pareto", "exits", "risk_coverage"):
        assert html.escape(CAPTIONS[name][:40]) in page
    assert html.escape('"kind": "threshold"') in page  # the policy file's content
    assert 'src="data:image/png;base64,' in page and "<img" in page and '.png"' not in page
    assert ("Missed on held-out data by" in page) == (pol["missed_by"] > 0)


def test_cli_tune_risk_reports_held_out_disagreement(tmp_path, capsys):
    from exitwise.datasets import load_default
    from exitwise.policies import evaluate, load_policy

    data = tmp_path / "data.npz"
    out = load_default()[:4000]
    out.save(data)
    args = ["tune", str(data), "--risk", "disagreement=0.05", "--confidence", "0.9", "--json"]
    assert main([*args, "--out", str(tmp_path / "p.json")]) == 0
    payload = json.loads(capsys.readouterr().out)
    test = out.split(0.5, seed=0)[1]
    ev = evaluate(load_policy(tmp_path / "p.json"), test, reference="final")
    assert payload["test"]["risks"]["disagreement"] == pytest.approx(float(ev.mean_loss[0]))
    assert payload["test"]["agreement"] == pytest.approx(1 - float(ev.mean_loss[0]))
    assert payload["guarantee"]["vacuous"] is False
    assert payload["guarantee"]["limits"] == {"disagreement": 0.05}
    assert load_policy(tmp_path / "p.json").context["guarantee"]["confidence"] == 0.9


def test_cli_infeasible_tune_states_target_and_best_achievable(tmp_path, capsys):
    from exitwise.datasets import load_default

    data = tmp_path / "data.npz"
    load_default()[:3000].save(data)
    with pytest.raises(SystemExit) as info:
        main(["tune", str(data), "--target-accuracy", "0.99", "--json"])
    assert info.value.code == 1
    payload = json.loads(capsys.readouterr().out)
    cal = load_default()[:3000].split(0.5, seed=0)[0]
    sw = sweep_shared_threshold(compute_signal(cal, "max_probability"), cal.correct(), cal.costs)
    assert payload["best_achievable"]["accuracy"] == pytest.approx(float(sw.accuracy.max()))
    with pytest.raises(SystemExit):
        main(["tune", str(data), "--target-accuracy", "0.99"])
    text = capsys.readouterr().out
    assert text.startswith("no policy: no policy meets accuracy >= 0.9900 on the 1500 tuning")
    assert "best accuracy" in text and text.rstrip().endswith(")")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("exitwise info: error:") and "\n" not in err
    (tmp_path / "bad.npz").write_bytes(b"junk")
    assert main(["info", str(tmp_path / "bad.npz")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as info:  # argparse names the valid choices
        main(["calibrate", str(tmp_path / "bad.npz"), "--method", "magic"])
    assert info.value.code == 2
    assert "invalid choice: 'magic' (choose from" in capsys.readouterr().err
    capsys.readouterr()
    for data in (b"", b"PK\x03\x04" + b"\x00" * 20):  # empty, a truncated zip header
        (tmp_path / "cut.npz").write_bytes(data)
        assert main(["info", str(tmp_path / "cut.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("exitwise info: error:") and "not a readable npz file" in err
        assert "\n" not in err


@pytest.mark.parametrize("command", ["report", "calibrate", "tune", "evaluate", "info"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: exitwise" in capsys.readouterr().out


def test_cli_flags_mean_one_thing_and_list_their_choices(tmp_path, capsys):
    # issue 11 item 5
    for command, flag, choice in (
        ("report", "--signal", "normalized_entropy_confidence"),
        ("tune", "--signal", "normalized_entropy_confidence"),
        ("calibrate", "--method", "dirichlet"),
        ("report", "--calibrators", "dirichlet"),
    ):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert flag in text and choice in text
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    tune_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    report_help = capsys.readouterr().out
    for text in (tune_help, report_help):  # --target-accuracy: absolute unless --relative
        assert "--relative" in text and "an absolute accuracy" in " ".join(text.split())
    with pytest.raises(SystemExit):  # info has no split, so no --seed
        main(["info", "--seed", "3"])
    capsys.readouterr()
    from exitwise.datasets import load_default

    summary = build_report(
        load_default()[:2000],
        tmp_path / "r",
        calibrators=["temperature"],
        n_resamples=5,
        target_accuracy=0.85,
        relative=False,
    )
    assert summary["policy"]["sla"] == "accuracy >= 0.85"


def test_cli_tunes_unlabelled_files_against_the_final_exit(tmp_path, capsys):
    from exitwise import ExitOutputs
    from exitwise.datasets import load_default

    data = tmp_path / "unlabelled.npz"
    ExitOutputs(load_default()[:3000].logits).save(data)
    assert main(["tune", str(data), "--budget", "0.5", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["feasible"] and payload["test"]["accuracy"] is None  # no labels
    assert payload["test"]["agreement"] > 0.8 and payload["evaluation"]["agreement"] > 0.8


def test_policy_files_carry_their_context(tmp_path, capsys):
    # issue 11 item 6
    from exitwise.datasets import load_default
    from exitwise.policies import evaluate, load_policy

    out = load_default()[:4000]
    data, cal_file, pol_file = tmp_path / "d.npz", tmp_path / "ts.json", tmp_path / "p.json"
    out.save(data)
    assert main(["calibrate", str(data), "--out", str(cal_file)]) == 0
    args = [
        "tune",
        str(data),
        "--target-accuracy",
        "0.99",
        "--relative",
        "--calibrator",
        str(cal_file),
        "--seed",
        "3",
        "--out",
        str(pol_file),
    ]
    assert main(args) == 0
    capsys.readouterr()
    policy = load_policy(pol_file)
    assert policy.context["calibrator"] == str(cal_file) and policy.context["seed"] == 3
    # evaluated on the held-out part of the policy's own split by default
    assert (
        main(
            [
                "evaluate",
                str(data),
                "--policy",
                str(pol_file),
                "--calibrator",
                str(cal_file),
                "--json",
            ]
        )
        == 0
    )
    payload = json.loads(capsys.readouterr().out)
    from exitwise.calibrate import load_calibrator

    held_out = load_calibrator(cal_file).transform(out.split(0.5, seed=3)[1])
    assert payload["accuracy"] == pytest.approx(float(evaluate(policy, held_out).accuracy[0]))
    assert "held-out" in payload["evaluated_on"] and payload["warnings"] == []
    # a calibrated policy on raw logits: said, not silent
    assert main(["evaluate", str(data), "--policy", str(pol_file), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["warnings"] and "--calibrator" in payload["warnings"][0]
    # a calibrator whose sidecar is missing names it
    cal_file.with_suffix(".safetensors").unlink()
    assert (
        main(["evaluate", str(data), "--policy", str(pol_file), "--calibrator", str(cal_file)]) == 2
    )
    assert "ts.safetensors" in capsys.readouterr().err


def test_regression_cli_risk_and_confidence_have_one_meaning(tmp_path, capsys):
    # issue 20 finding 6: --risk was a float in tune, NAME=LIMIT in certify, a name in monitor
    from exitwise.datasets import load_default

    data = tmp_path / "data.npz"
    load_default()[:3000].save(data)
    new = ["tune", str(data), "--risk", "disagreement=0.05", "--confidence", "0.9", "--json"]
    assert main(new) == 0
    by_new = json.loads(capsys.readouterr().out)
    assert main(["tune", str(data), "--risk", "0.05", "--epsilon", "0.1", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["policy"] == by_new["policy"]
    assert "--risk 0.05 is deprecated" in captured.err and "--epsilon is deprecated" in captured.err
    assert main(["certify", str(data), "--risk", "disagreement=0.05", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["guarantee"]["limits"] == {"disagreement": 0.05}
    # issue 24 item 6: a risk named twice is refused, not silently overwritten
    assert main(["certify", str(data), "--risk", "cost=0.5", "--risk", "cost=0.6"]) == 2
    assert "given twice" in capsys.readouterr().err
    twice = ["--risk", "disagreement=0.03", "--risk", "disagreement=0.05"]
    assert main(["tune", str(data), *twice]) == 2
    assert "tune takes one --risk, got 2" in capsys.readouterr().err
