"""Exit policies (a signal per exit plus a threshold per exit) and the evaluator."""

from exitwise._deprecation import moved_names
from exitwise.policies.base import ExitPolicy, load_policy, policy_from_dict
from exitwise.policies.batching import BatchingResult, simulate_batching
from exitwise.policies.entry import as_scores
from exitwise.policies.evaluate import (
    ThresholdEvaluation,
    evaluate_thresholds,
    evaluate_thresholds_streaming,
    first_exit,
)
from exitwise.policies.evaluate_policies import evaluate, evaluate_policy
from exitwise.policies.frontier import (
    geometric_budget_policy,
    held_out_frontier,
    pareto_frontier,
)
from exitwise.policies.losses import RISKS, loss_table
from exitwise.policies.p_values import (
    binomial_p_value,
    hoeffding_bentkus_p_value,
    wsr_p_value,
)
from exitwise.policies.pareto_testing import certify
from exitwise.policies.positions import DecayedSignal, calm_factor
from exitwise.policies.recall import recall_indices, recalled_outcome
from exitwise.policies.results import Evaluation, Guarantee, PolicyResult, TestingPath
from exitwise.policies.risk import default_risk_grid, risk_controlled_threshold
from exitwise.policies.runtime import ExitController
from exitwise.policies.scores import ExitScores, PrecomputedScores, resolve_signal
from exitwise.policies.streamed import stream_scores
from exitwise.policies.sweep import SharedThresholdSweep, sweep_shared_threshold
from exitwise.policies.threshold import (
    FixedExitPolicy,
    OracleExit,
    PatiencePolicy,
    ThresholdPolicy,
)
from exitwise.policies.tune import (
    AccuracyAtLeast,
    CostAtMost,
    CostQuantileAtMost,
    RiskAtMost,
    tune,
    tune_for_accuracy,
    tune_for_budget,
    tune_for_latency,
)

__all__ = [
    "RISKS",
    "AccuracyAtLeast",
    "BatchingResult",
    "CostAtMost",
    "CostQuantileAtMost",
    "DecayedSignal",
    "Evaluation",
    "ExitController",
    "ExitPolicy",
    "ExitScores",
    "FixedExitPolicy",
    "Guarantee",
    "OracleExit",
    "PatiencePolicy",
    "PolicyResult",
    "PrecomputedScores",
    "RiskAtMost",
    "SharedThresholdSweep",
    "TestingPath",
    "ThresholdEvaluation",
    "ThresholdPolicy",
    "as_scores",
    "binomial_p_value",
    "calm_factor",
    "certify",
    "default_risk_grid",
    "evaluate",
    "evaluate_policy",
    "evaluate_thresholds",
    "evaluate_thresholds_streaming",
    "first_exit",
    "geometric_budget_policy",
    "held_out_frontier",
    "hoeffding_bentkus_p_value",
    "load_policy",
    "loss_table",
    "pareto_frontier",
    "policy_from_dict",
    "recall_indices",
    "recalled_outcome",
    "resolve_signal",
    "risk_controlled_threshold",
    "simulate_batching",
    "stream_scores",
    "sweep_shared_threshold",
    "tune",
    "tune_for_accuracy",
    "tune_for_budget",
    "tune_for_latency",
    "wsr_p_value",
]

# the old result types, one release with a DeprecationWarning: all are PolicyResult now
__getattr__ = moved_names(
    __name__,
    {
        old: ("PolicyResult", lambda: PolicyResult)
        for old in ("CertifiedPolicy", "RiskControlResult", "TunedPolicy")
    },
)
