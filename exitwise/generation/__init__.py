"""Token-level helpers for language models: the self-speculative decoding planner (fixed,
adaptive and heuristic drafting, memory-bound and measured costs, engine configs), Hugging
Face causal LMs, KV-cache cost models and lock-step decode simulation."""

from exitwise.generation.causal_lm import (
    PassCounter,
    causal_lm_heads,
    decoder_layers,
    own_continuations,
)
from exitwise.generation.causal_lm_costs import measure_speculation_costs
from exitwise.generation.divergence import first_divergence, sequence_disagreement
from exitwise.generation.draft_acceptance import AcceptanceCalibration, draft_confidence
from exitwise.generation.engine_configs import (
    batch_size_schedule,
    hf_generate_kwargs,
    hf_settings,
    trtllm_config,
    vllm_config,
)
from exitwise.generation.kv_cache import (
    KV_MODES,
    DecodeResult,
    LayerCosts,
    policy_token_costs,
    simulate_decode,
    token_costs,
)
from exitwise.generation.speculation import (
    SCHEDULES,
    SpeculationPlan,
    acceptance,
    plan_self_speculation,
    sequence_table,
)
from exitwise.generation.speculation_costs import SpeculationCosts

__all__ = [
    "KV_MODES",
    "SCHEDULES",
    "AcceptanceCalibration",
    "DecodeResult",
    "LayerCosts",
    "PassCounter",
    "SpeculationCosts",
    "SpeculationPlan",
    "acceptance",
    "batch_size_schedule",
    "causal_lm_heads",
    "decoder_layers",
    "draft_confidence",
    "first_divergence",
    "hf_generate_kwargs",
    "hf_settings",
    "measure_speculation_costs",
    "own_continuations",
    "plan_self_speculation",
    "policy_token_costs",
    "sequence_disagreement",
    "sequence_table",
    "simulate_decode",
    "token_costs",
    "trtllm_config",
    "vllm_config",
]
