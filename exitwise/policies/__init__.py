"""Exit policies (a signal per exit plus a threshold per exit) and the evaluator."""

from exitwise.policies.base import ExitPolicy, load_policy, policy_from_dict
from exitwise.policies.batching import BatchingResult, simulate_batching
from exitwise.policies.evaluate import (
    ThresholdEvaluation,
    evaluate_thresholds,
    evaluate_thresholds_streaming,
    first_exit,
)
from exitwise.policies.evaluate_policies import evaluate
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
from exitwise.policies.pareto_testing import CertifiedPolicy, certify
from exitwise.policies.positions import DecayedSignal, calm_factor
from exitwise.policies.recall import recall_indices, recalled_outcome
from exitwise.policies.risk import (
    RiskControlResult,
    default_risk_grid,
    risk_controlled_threshold,
)
from exitwise.policies.runtime import ExitController
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
    TunedPolicy,
    tune,
    tune_for_accuracy,
    tune_for_budget,
    tune_for_latency,
)

__all__ = [
    "RISKS",
    "AccuracyAtLeast",
    "BatchingResult",
    "CertifiedPolicy",
    "CostAtMost",
    "CostQuantileAtMost",
    "DecayedSignal",
    "ExitController",
    "ExitPolicy",
    "FixedExitPolicy",
    "OracleExit",
    "PatiencePolicy",
    "RiskAtMost",
    "RiskControlResult",
    "SharedThresholdSweep",
    "ThresholdEvaluation",
    "ThresholdPolicy",
    "TunedPolicy",
    "binomial_p_value",
    "calm_factor",
    "certify",
    "default_risk_grid",
    "evaluate",
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
    "risk_controlled_threshold",
    "simulate_batching",
    "sweep_shared_threshold",
    "tune",
    "tune_for_accuracy",
    "tune_for_budget",
    "tune_for_latency",
    "wsr_p_value",
]
