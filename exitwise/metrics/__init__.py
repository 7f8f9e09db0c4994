"""Functional, torch-native metrics, batched over exits (``[N, E, C]`` -> ``[E]``)."""

from exitwise.metrics.bootstrap import BootstrapResult, bootstrap
from exitwise.metrics.calibration import (
    ReliabilityBins,
    adaptive_calibration_error,
    brier_score,
    debiased_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    reliability_bins,
    smooth_calibration_error,
)
from exitwise.metrics.exits import (
    consistency,
    expected_cost,
    overthinking,
    per_exit_accuracy,
    speed_up,
)
from exitwise.metrics.selective import aurc, auroc, risk_coverage_curve

__all__ = [
    "BootstrapResult",
    "ReliabilityBins",
    "adaptive_calibration_error",
    "aurc",
    "auroc",
    "bootstrap",
    "brier_score",
    "consistency",
    "debiased_calibration_error",
    "expected_calibration_error",
    "expected_cost",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "overthinking",
    "per_exit_accuracy",
    "reliability_bins",
    "risk_coverage_curve",
    "smooth_calibration_error",
    "speed_up",
]
