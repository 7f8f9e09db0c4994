"""The estimator contract, files, bad inputs, the netcal adapter and the comparison table."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from exitwise import ExitOutputs
from exitwise.calibrate import (
    CALIBRATORS,
    BetaCalibration,
    Calibrator,
    CentredIsotonic,
    DirichletCalibration,
    HaltingNetwork,
    HistogramBinning,
    Isotonic,
    MatrixScaling,
    NetcalCalibrator,
    PerExitCalibration,
    PlattScaling,
    StructuredMatrixScaling,
    TemperatureScaling,
    VectorScaling,
    VennAbers,
    calibrate,
    compare_calibrators,
    load_calibrator,
)

FAST = [
    TemperatureScaling(),
    VectorScaling(max_iter=50),
    MatrixScaling(max_iter=30),
    DirichletCalibration(max_iter=30),
    StructuredMatrixScaling(),
    StructuredMatrixScaling(penalty="cv", penalty_grid=[0.1, 1.0], cv=3),
    Isotonic(),
    Isotonic(mode="one_vs_rest"),
    CentredIsotonic(),
    CentredIsotonic(mode="one_vs_rest"),
    VennAbers(),
    VennAbers(mode="one_vs_rest"),
    PerExitCalibration(["isotonic", "temperature", "venn_abers", "sms"]),
    HistogramBinning(n_bins=8),
    HistogramBinning(n_bins=8, binning="uniform"),
    PlattScaling(),
    BetaCalibration(),
]


@pytest.fixture(scope="module")
def small(real_outputs):
    cal, test = real_outputs.split(0.5, seed=1)
    return cal[:1500], test[:1000]


@pytest.mark.parametrize("calibrator", FAST, ids=lambda c: repr(c))
def test_save_load_round_trip_is_identical(calibrator, small, tmp_path):
    cal, test = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = clone(calibrator).fit(cal)
    fitted.save(tmp_path / "cal.json")
    back = load_calibrator(tmp_path / "cal.json")
    assert type(back) is type(fitted) and back.get_params() == fitted.get_params()
    assert torch.equal(back.transform(test).logits, fitted.transform(test).logits)
    text = (tmp_path / "cal.json").read_text()
    assert "format" in text


@pytest.mark.parametrize("calibrator", FAST, ids=lambda c: repr(c))
def test_estimator_contract(calibrator, small):
    cal, test = small
    fresh = clone(calibrator)
    assert fresh.get_params() == calibrator.get_params()
    assert repr(fresh).startswith(type(calibrator).__name__)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        fresh.transform(test)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fresh.fit(cal) is fresh
    assert not any(k.endswith("_") for k in vars(clone(calibrator)))
    # array input: [N, E, C] and [N, C]
    out = fresh.transform(test.logits)
    assert out.shape == test.logits.shape
    if isinstance(calibrator, PerExitCalibration):  # one method per exit: needs all exits
        with pytest.raises(ValueError, match="one method name per exit"):
            clone(calibrator).fit(cal.logits[:, 2], cal.labels)
        return
    one = clone(calibrator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one.fit(cal.logits[:, 2], cal.labels)
    assert one.transform(test.logits[:, 2]).shape == (len(test), 10)


def test_bad_inputs(small):
    cal, test = small
    with pytest.raises(ValueError, match="at least 2 classes"):
        TemperatureScaling().fit(cal.logits, torch.zeros(len(cal), dtype=torch.long))
    with pytest.raises(ValueError, match="at least 20 samples"):
        HistogramBinning(n_bins=20).fit(cal.logits[:10], cal.labels[:10])
    bad = cal.logits.clone()
    bad[3, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN value, first at sample 3, exit 1, class 2"):
        Isotonic().fit(bad, cal.labels)
    with pytest.raises(ValueError, match="needs labels"):
        TemperatureScaling().fit(ExitOutputs(cal.logits))
    with pytest.raises(ValueError, match=r"fitted on 4 exit\(s\) x 10 classes, got 2 x 10"):
        TemperatureScaling().fit(cal).transform(test.logits[:, :2])
    with pytest.raises(ValueError, match="`mode` to be one of"):
        Isotonic(mode="both").fit(cal)
    with pytest.raises(ValueError, match="`n_bins` to be an integer >= 1"):
        HistogramBinning(n_bins=0).fit(cal)
    with pytest.raises(ValueError, match=r"`\.json` path"):
        TemperatureScaling().fit(cal).save("x.txt")
    with pytest.raises(ValueError, match="`method` to be one of"):
        calibrate(cal, "magic")


def test_calibrators_registry_covers_all_classes():
    assert set(CALIBRATORS) == {type(c).__name__ for c in FAST} | {"HaltingNetwork"}


@pytest.mark.parametrize("method_name", ["TemperatureScaling", "HistogramBinning", "BBQ", "ENIR"])
def test_netcal_adapter(method_name, small):
    import netcal.binning
    import netcal.scaling

    method = getattr(netcal.scaling, method_name, None) or getattr(netcal.binning, method_name)
    cal, test = small
    cal, test = cal[:600], test[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nc = NetcalCalibrator(method).fit(cal)
        out = nc.transform(test)
    assert len(nc.calibrators_) == 4
    rows = out.logits.exp().sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-9)
    assert bool(torch.isfinite(out.logits).all())
    with pytest.raises(TypeError, match="pickle"):
        nc.save("nc.json")


def test_netcal_temperature_adapter_close_to_ours(small):
    import netcal.scaling

    cal, test = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = NetcalCalibrator(netcal.scaling.TemperatureScaling).fit(cal).transform(test)
    ours = TemperatureScaling().fit(cal).transform(test)
    assert torch.allclose(theirs.logits.exp(), ours.logits.exp().double(), atol=2e-3)


def test_compare_calibrators_table(small):
    cal, test = small
    table = compare_calibrators(cal, test, ["temperature", "isotonic", PlattScaling()])
    methods = {row["method"] for row in table.rows}
    assert methods == {"uncalibrated", "temperature", "isotonic", "PlattScaling"}
    assert len(table.rows) == 2 * 4 * 4  # cross-fitted and test rows
    text = table.to_text()
    assert text.splitlines()[1].split() == [
        "method",
        "exit",
        "accuracy",
        "ECE",
        "NLL",
        "Brier",
        "AUROC",
        "NLL-cal",
    ]
    # accuracy is unchanged by argmax-keeping calibrators
    for e in range(4):
        assert table.value("temperature", e, "accuracy") == table.value(
            "uncalibrated", e, "accuracy"
        )


def test_halting_network(real_outputs, tmp_path):
    from exitwise import metrics
    from exitwise.policies import evaluate_thresholds
    from exitwise.signals import compute_signal

    cal, test = real_outputs.split(0.5, seed=2)
    halt = HaltingNetwork(max_epochs=60, seed=3).fit(cal)
    again = HaltingNetwork(max_epochs=60, seed=3).fit(cal)
    q = halt.predict_proba(test)
    assert q.shape == (len(test), 4) and bool(((q >= 0) & (q <= 1)).all())
    assert torch.equal(q, again.predict_proba(test))  # deterministic on CPU
    ece = halt.calibration_error(test)
    assert bool((ece < 0.05).all()), ece
    auc_halt = metrics.auroc(q, test.correct())
    auc_maxprob = metrics.auroc(compute_signal(test, "max_probability"), test.correct())
    assert bool((auc_halt > auc_maxprob - 0.02).all())
    # usable as a signal
    scores = compute_signal(test, halt)
    r = evaluate_thresholds(scores, test.correct(), test.costs, torch.full((1, 4), 0.9))
    assert r.num_samples == len(test)
    halt.save(tmp_path / "halt.json")
    assert torch.equal(load_calibrator(tmp_path / "halt.json").predict_proba(test), q)
    # a signal provider, not a calibrator: no transform that can only raise
    assert not isinstance(halt, Calibrator) and not hasattr(halt, "transform")
    # the consistency target needs no labels
    unlabelled = ExitOutputs(cal.logits)
    HaltingNetwork(target="consistent", max_epochs=5).fit(unlabelled)
    with pytest.raises(ValueError, match=r"shape \[N, E, F\]"):
        halt.fit(cal, features=np.zeros((3, 4, 2)))
