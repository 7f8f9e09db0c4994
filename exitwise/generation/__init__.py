"""Token-level helpers for language models: the self-speculative decoding planner, KV-cache
cost models and lock-step decode simulation."""

from exitwise.generation.speculation import (
    SpeculationPlan,
    acceptance,
    plan_self_speculation,
    sequence_table,
)

__all__ = ["SpeculationPlan", "acceptance", "plan_self_speculation", "sequence_table"]
