"""Functional, torch-native metrics, batched over exits (``[N, E, C]`` -> ``[E]``)."""

from exitwise.metrics.binning import (
    bin_indices,
    bin_totals,
    calibration_error_from_confidence,
    uniform_bin_edges,
)
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
)
from exitwise.metrics.exits import (
    consistency,
    expected_cost,
    overthinking,
    per_exit_accuracy,
    speed_up,
)
from exitwise.metrics.selective import aurc, auroc, risk_coverage_curve
from exitwise.metrics.smooth import smooth_calibration_error
from exitwise.metrics.table import per_exit_metrics

__all__ = [
    "BootstrapResult",
    "ReliabilityBins",
    "adaptive_calibration_error",
    "aurc",
    "auroc",
    "bin_indices",
    "bin_totals",
    "bootstrap",
    "brier_score",
    "calibration_error_from_confidence",
    "consistency",
    "debiased_calibration_error",
    "expected_calibration_error",
    "expected_cost",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "overthinking",
    "per_exit_accuracy",
    "per_exit_metrics",
    "reliability_bins",
    "risk_coverage_curve",
    "smooth_calibration_error",
    "speed_up",
    "uniform_bin_edges",
]
