"""Token-level helpers for language models: the self-speculative decoding planner, KV-cache
cost models and lock-step decode simulation."""

from exitwise.generation.kv_cache import (
    KV_MODES,
    DecodeResult,
    LayerCosts,
    policy_token_costs,
    simulate_decode,
    token_costs,
)
from exitwise.generation.speculation import (
    SpeculationPlan,
    acceptance,
    plan_self_speculation,
    sequence_table,
)

__all__ = [
    "KV_MODES",
    "DecodeResult",
    "LayerCosts",
    "SpeculationPlan",
    "acceptance",
    "plan_self_speculation",
    "policy_token_costs",
    "sequence_table",
    "simulate_decode",
    "token_costs",
]
