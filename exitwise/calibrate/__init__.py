"""Calibrators for every exit: scikit-learn estimators over per-exit logits."""

from exitwise.calibrate.base import Calibrator, load_calibrator
from exitwise.calibrate.binning import HistogramBinning, Isotonic
from exitwise.calibrate.compare import (
    METHODS,
    CalibrationTable,
    calibrate,
    compare_calibrators,
    make_calibrator,
)
from exitwise.calibrate.halting import HaltingNetwork, halting_features
from exitwise.calibrate.netcal_adapter import NetcalCalibrator
from exitwise.calibrate.platt import BetaCalibration, PlattScaling
from exitwise.calibrate.scaling import (
    DirichletCalibration,
    MatrixScaling,
    TemperatureFit,
    TemperatureScaling,
    VectorScaling,
    fit_temperatures,
)

#: calibrator classes by name, used to read files
CALIBRATORS = {
    cls.__name__: cls
    for cls in (
        BetaCalibration,
        DirichletCalibration,
        HaltingNetwork,
        HistogramBinning,
        Isotonic,
        MatrixScaling,
        PlattScaling,
        TemperatureScaling,
        VectorScaling,
    )
}

__all__ = [
    "CALIBRATORS",
    "METHODS",
    "BetaCalibration",
    "CalibrationTable",
    "Calibrator",
    "DirichletCalibration",
    "HaltingNetwork",
    "HistogramBinning",
    "Isotonic",
    "MatrixScaling",
    "NetcalCalibrator",
    "PlattScaling",
    "TemperatureFit",
    "TemperatureScaling",
    "VectorScaling",
    "calibrate",
    "compare_calibrators",
    "fit_temperatures",
    "halting_features",
    "load_calibrator",
    "make_calibrator",
]
