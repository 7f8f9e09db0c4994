"""Calibrators for every exit: scikit-learn-style estimators over per-exit logits.

Every public estimator class registers itself (``__init_subclass__``): ``CALIBRATORS`` maps
class names to classes (files are read through it) and ``METHODS`` lists the short names
``make_calibrator`` and the CLI accept. scikit-learn and scipy are imported where used.
"""

from exitwise.calibrate._estimator import REGISTRY, FittedEstimator
from exitwise.calibrate.base import Calibrator, load_calibrator
from exitwise.calibrate.binning import HistogramBinning, Isotonic
from exitwise.calibrate.centred_isotonic import CentredIsotonic
from exitwise.calibrate.compare import (
    AUTO_METHODS,
    CalibrationTable,
    calibrate,
    compare_calibrators,
)
from exitwise.calibrate.cross_fit import cross_fitted
from exitwise.calibrate.decomposition import (
    ScoreDecomposition,
    proper_score,
    proper_score_decomposition,
)
from exitwise.calibrate.halting import HaltingNetwork, halting_features
from exitwise.calibrate.netcal_adapter import NetcalCalibrator
from exitwise.calibrate.per_exit import PerExitCalibration
from exitwise.calibrate.platt import BetaCalibration, PlattScaling
from exitwise.calibrate.registry import make_calibrator, methods
from exitwise.calibrate.scaling import DirichletCalibration, MatrixScaling, VectorScaling
from exitwise.calibrate.structured import StructuredMatrixScaling
from exitwise.calibrate.temperature import (
    TemperatureFit,
    TemperatureScaling,
    fit_temperatures,
    scale_by_temperature,
)
from exitwise.calibrate.venn_abers import VennAbers

#: estimator classes by name, used to read files (the one registry)
CALIBRATORS = REGISTRY
#: short method names for ``make_calibrator`` and the CLI
METHODS = tuple(methods())

__all__ = [
    "AUTO_METHODS",
    "CALIBRATORS",
    "METHODS",
    "BetaCalibration",
    "CalibrationTable",
    "Calibrator",
    "CentredIsotonic",
    "DirichletCalibration",
    "FittedEstimator",
    "HaltingNetwork",
    "HistogramBinning",
    "Isotonic",
    "MatrixScaling",
    "NetcalCalibrator",
    "PerExitCalibration",
    "PlattScaling",
    "ScoreDecomposition",
    "StructuredMatrixScaling",
    "TemperatureFit",
    "TemperatureScaling",
    "VectorScaling",
    "VennAbers",
    "calibrate",
    "compare_calibrators",
    "cross_fitted",
    "fit_temperatures",
    "halting_features",
    "load_calibrator",
    "make_calibrator",
    "methods",
    "proper_score",
    "proper_score_decomposition",
    "scale_by_temperature",
]
