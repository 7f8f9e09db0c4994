"""Cross-fitting, the proper-score decomposition, compare_calibrators' ranking and
calibrate(method="auto"), against naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exitwise import ExitOutputs, metrics
from exitwise.calibrate import (
    PerExitCalibration,
    TemperatureScaling,
    calibrate,
    compare_calibrators,
    cross_fitted,
    load_calibrator,
    proper_score_decomposition,
)
from exitwise.calibrate._folds import fold_ids


@pytest.fixture(scope="module")
def small(real_outputs):
    cal, test = real_outputs.split(0.5, seed=3)
    return cal[:1500], test[:1500]


def test_cross_fitted_equals_a_naive_fold_loop(small):
    cal, _ = small
    out = cross_fitted(cal, "temperature", folds=4, seed=7)
    ids = fold_ids(len(cal), 4, seed=7)
    assert ids.bincount().tolist() == [375] * 4
    for k in range(4):
        rows = torch.nonzero(ids == k).flatten()
        others = torch.nonzero(ids != k).flatten()
        ts = TemperatureScaling().fit(cal.logits[others], cal.labels[others])
        assert torch.equal(out.logits[rows], ts.transform(cal.logits[rows]))


def _naive_nll(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-lp[np.arange(len(labels)), labels].mean())


def test_decomposition_equals_a_naive_computation(small):
    cal, _ = small
    hot = cal.with_logits(cal.logits * 3.0)  # overconfident
    d = proper_score_decomposition(hot, "nll", folds=5, seed=0)
    ids = fold_ids(len(hot), 5, seed=0)
    for e in range(hot.num_exits):
        loss = _naive_nll(hot.logits[:, e].double().numpy(), hot.labels.numpy())
        recal = np.empty(len(hot))
        for k in range(5):
            tr, te = ids != k, ids == k
            t = float(TemperatureScaling().fit(hot.logits[tr], hot.labels[tr]).temperatures_[e])
            z = hot.logits[te, e].double().numpy() / t
            z -= z.max(1, keepdims=True)
            lp = z - np.log(np.exp(z).sum(1, keepdims=True))
            recal[te.numpy()] = -lp[np.arange(int(te.sum())), hot.labels[te].numpy()]
        assert float(d.loss[e]) == pytest.approx(loss, abs=1e-6)  # float32 logits
        assert float(d.refinement[e]) == pytest.approx(recal.mean(), abs=1e-6)
    assert bool((d.calibration > 0.1).all())  # x3 logits: most of the excess is calibration
    calibrated = TemperatureScaling().fit(cal).transform(cal)
    again = proper_score_decomposition(calibrated, "brier")
    assert bool((again.calibration.abs() < 0.005).all()), again.calibration
    assert torch.allclose(again.loss, again.calibration + again.refinement)


def test_ranking_uses_only_the_calibration_split(small):
    cal, test = small
    methods = ["temperature", "isotonic", "venn_abers"]
    with_test = compare_calibrators(cal, test, methods)
    wrong = ExitOutputs(test.logits, (test.labels + 1) % 10, test.costs, test.exit_names)
    corrupted = compare_calibrators(cal, wrong, methods)
    alone = compare_calibrators(cal, None, methods)
    assert with_test.best == corrupted.best == alone.best
    for e in range(cal.num_exits):
        rows = [r for r in alone.rows if r["exit"] == e and r["split"] == "cross-fit"]
        assert alone.best[e] == min(rows, key=lambda r: r["nll"])["method"]
    by_brier = compare_calibrators(cal, None, methods, score="brier")
    for e in range(cal.num_exits):
        rows = [r for r in by_brier.rows if r["exit"] == e]
        assert by_brier.best[e] == min(rows, key=lambda r: r["brier"])["method"]
    # the cross-fitted NLL of a method is the NLL of its out-of-fold predictions
    oof = cross_fitted(cal, "isotonic")
    nll = metrics.negative_log_likelihood(oof.logits, oof.labels, input="logits")
    assert alone.value("isotonic", 2, "nll") == pytest.approx(float(nll[2]))


def test_bootstrap_intervals_beside_the_score(small):
    cal, _ = small
    table = compare_calibrators(cal, None, ["temperature"], n_resamples=50)
    row = table.rows[-1]
    for metric in ("ece", "brier", "auroc", "nll"):
        assert row[f"{metric}_low"] <= row[f"{metric}_high"]
    assert row["auroc_low"] <= row["auroc"] <= row["auroc_high"]


def test_auto_fits_the_per_exit_winners_and_round_trips(small, tmp_path):
    cal, test = small
    auto = calibrate(cal, "auto", methods=["temperature", "isotonic", "sms"])
    assert isinstance(auto, PerExitCalibration)
    assert tuple(auto.methods) == auto.comparison_.best
    auto.save(tmp_path / "auto.json")
    back = load_calibrator(tmp_path / "auto.json")
    assert torch.equal(back.transform(test).logits, auto.transform(test).logits)
    # every exit reads its own method's calibration
    for e, method in enumerate(auto.methods):
        alone = calibrate(cal, method).transform(test)
        assert torch.allclose(auto.transform(test).logits[:, e], alone.logits[:, e].double())


def test_bad_arguments_are_named(small):
    cal, test = small
    with pytest.raises(ValueError, match="`score`"):
        compare_calibrators(cal, test, ["temperature"], score="ece")
    with pytest.raises(ValueError, match="`methods`"):
        compare_calibrators(cal, test, [])
    with pytest.raises(ValueError, match="`folds`"):
        compare_calibrators(cal, test, ["temperature"], folds=1)
    with pytest.raises(ValueError, match="needs labels"):
        compare_calibrators(ExitOutputs(cal.logits), test, ["temperature"])
    with pytest.raises(ValueError, match="one method name per exit"):
        PerExitCalibration(["temperature"]).fit(cal)


def test_cli_calibrate_auto_saves_the_per_exit_winners(tmp_path, capsys):
    import json

    from exitwise.cli import main
    from exitwise.datasets import load_default

    data = tmp_path / "data.npz"
    load_default()[:1600].save(data)
    out = tmp_path / "auto.json"
    assert main(["calibrate", str(data), "--method", "auto", "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["best"]) == 4
    fitted = load_calibrator(out)
    assert isinstance(fitted, PerExitCalibration) and list(fitted.methods) == payload["best"]
    splits = {row["split"] for row in payload["table"]}
    assert splits == {"cross-fit", "test"}
    assert main(["calibrate", str(data), "--score", "brier"]) == 0
    assert "ranks by brier" in capsys.readouterr().out


@pytest.mark.parametrize(
    "method", ["vector", "matrix", "dirichlet", "sms", "venn_abers", "centred_isotonic"]
)
def test_new_calibrators_run_on_the_input_device(device, method, real_outputs):
    cal, test = real_outputs[:1200].split(0.5, seed=0)
    ref = calibrate(cal, method).transform(test)
    out = calibrate(cal.to(device), method).transform(test.to(device))
    assert out.logits.device.type == device
    assert torch.allclose(out.logits.cpu().double(), ref.logits.double(), atol=1e-5)


def test_cross_fitting_and_auto_run_on_the_input_device(device, real_outputs):
    cal = real_outputs[:900].to(device)
    table = compare_calibrators(cal, None, ["temperature", "venn_abers"], folds=3)
    auto = calibrate(cal, "auto", methods=["temperature", "sms"], folds=3)
    assert auto.transform(cal).logits.device.type == device and len(table.best) == 4
