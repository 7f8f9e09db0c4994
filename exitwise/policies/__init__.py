"""Exit policies (a signal per exit plus a threshold per exit) and the evaluator."""

from exitwise.policies.base import ExitPolicy, load_policy, policy_from_dict
from exitwise.policies.evaluate import (
    ThresholdEvaluation,
    evaluate,
    evaluate_thresholds,
    evaluate_thresholds_streaming,
    first_exit,
)
from exitwise.policies.sweep import SharedThresholdSweep, sweep_shared_threshold
from exitwise.policies.threshold import (
    FixedExitPolicy,
    OracleExit,
    PatiencePolicy,
    ThresholdPolicy,
)

__all__ = [
    "ExitPolicy",
    "FixedExitPolicy",
    "OracleExit",
    "PatiencePolicy",
    "SharedThresholdSweep",
    "ThresholdEvaluation",
    "ThresholdPolicy",
    "evaluate",
    "evaluate_thresholds",
    "evaluate_thresholds_streaming",
    "first_exit",
    "load_policy",
    "policy_from_dict",
    "sweep_shared_threshold",
]
