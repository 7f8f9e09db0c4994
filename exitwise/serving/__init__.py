"""Serving-aware planning: latency per exit segment, a discrete-event serving simulator and
the capacity questions (highest rate, replicas, the best policy under load)."""

from exitwise.serving.batch_log import BatchLog, BatchRecorder
from exitwise.serving.latency import LatencyModel, load_default_latency
from exitwise.serving.latency_fit import fit_latency_model
from exitwise.serving.measure import measure_latency_model, measure_wake_up
from exitwise.serving.planning import (
    ServingCandidate,
    ServingPlan,
    latency_by_rate,
    latency_floor,
    max_rate,
    replicas_needed,
    tune_for_serving,
)
from exitwise.serving.serving_result import ServingResult, latency_percentile_intervals
from exitwise.serving.simulator import SCHEDULERS, poisson_arrivals, simulate_serving

__all__ = [
    "SCHEDULERS",
    "BatchLog",
    "BatchRecorder",
    "LatencyModel",
    "ServingCandidate",
    "ServingPlan",
    "ServingResult",
    "fit_latency_model",
    "latency_by_rate",
    "latency_floor",
    "latency_percentile_intervals",
    "load_default_latency",
    "max_rate",
    "measure_latency_model",
    "measure_wake_up",
    "poisson_arrivals",
    "replicas_needed",
    "simulate_serving",
    "tune_for_serving",
]
