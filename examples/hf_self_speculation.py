"""Self-speculative decoding in Hugging Face's own ``generate``, planned by exitwise.

Trains a small ``transformers.LlamaForCausalLM`` (character vocabulary, LayerSkip's
early-exit loss through the model's own final norm + LM head) on the docstrings of Python's
standard library, then:

1. collects every layer's logits on the model's *own* greedy continuations of calibration
   and check prompts (``own_continuations``), and on corpus text (the cheap estimate);
2. calibrates "draft token accepted" against each draft layer's confidence (isotonic, on the
   calibration prompts; its ECE on the check prompts);
3. measures the cost of a draft step, a verification over ``w`` tokens and Hugging Face's loop
   (``measure_speculation_costs`` on the calibration prompts);
4. plans fixed ``k``, adaptive (stop threshold as an acceptance probability) and Hugging
   Face's heuristic schedule on the check prompts;
5. runs ``model.generate(prompt, **plan.to_hf_generate_kwargs(model))`` on the check prompts,
   counting verification and draft passes with forward hooks and timing it against plain
   greedy ``generate``, and prints predicted against measured;
6. prints the vLLM and TensorRT-LLM batch-size schedules from costs measured at batch sizes
   1, 4 and 16.

Run (``pip install exitwise[hf]``; 2.5 minutes on 2 CPU cores at the default size, about 8
with the guide's ``--layers 6 --width 256 --steps 500 --prompts 16``)::

    python examples/hf_self_speculation.py [--steps 600] [--prompts 24] [--new-tokens 64]
        [--layers 4] [--width 128]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from exitwise import ExitOutputs
from exitwise.collect import collect
from exitwise.generation import (
    AcceptanceCalibration,
    PassCounter,
    causal_lm_heads,
    measure_speculation_costs,
    own_continuations,
    plan_self_speculation,
)
from exitwise.generation.engine_configs import HF_GENERATION_FIELDS

VOCAB = [chr(i) for i in range(32, 127)]  # printable ASCII


def encode(text: str) -> torch.Tensor:
    return torch.tensor([ord(ch) - 32 for ch in text], dtype=torch.long)


def corpus(limit: int = 1_000_000) -> torch.Tensor:
    """The standard library's docstrings (``examples/early_exit_lm.py``), as character ids."""
    sys.path.insert(0, str(Path(__file__).parent))
    from early_exit_lm import clean, stdlib_text

    return encode(clean(stdlib_text(limit)))


def make_model(layers: int = 4, width: int = 128, seed: int = 0):
    """A small Llama with no pad/bos/eos token: Hugging Face's assistant masks out generated
    tokens equal to the pad id, so a char model must not have one among its characters."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
    )
    return LlamaForCausalLM(config)


def train(
    model, data: torch.Tensor, steps: int, batch: int = 32, window: int = 64, seed: int = 0
) -> float:
    """LayerSkip's early-exit loss: every layer's logits through the shared final norm + LM
    head, weighted by depth (the last layer most). Returns the last loss."""
    g = torch.Generator().manual_seed(seed)
    layers = model.config.num_hidden_layers
    heads = causal_lm_heads(model, list(range(1, layers + 1)))
    weights = torch.arange(1, layers + 1, dtype=torch.float32)
    weights = weights / weights.sum()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - window - 1, (batch,), generator=g)
        x = torch.stack([data[s : s + window] for s in starts])
        y = torch.stack([data[s + 1 : s + window + 1] for s in starts])
        hidden = model.model(x, output_hidden_states=True).hidden_states
        losses = [
            torch.nn.functional.cross_entropy(heads[i](hidden[i + 1]).flatten(0, 1), y.flatten())
            for i in range(layers)
        ]
        loss = (torch.stack(losses) * weights).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def prompts_from(data: torch.Tensor, count: int, length: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - length, (count,), generator=g)
    return [data[s : s + length].clone() for s in starts]


def hf_setting(plan, model, row) -> tuple[dict, dict]:
    """The generate kwargs of a plan's row and the generation-config fields it sets."""
    kwargs = plan.to_hf_generate_kwargs(model, row=row)
    return kwargs, {n: getattr(model.generation_config, n) for n in HF_GENERATION_FIELDS}


def run_hf(model, prompts, new_tokens: int, settings: dict) -> dict:
    """Hugging Face's own generate on every prompt for every setting (``name -> (kwargs,
    generation-config fields)``; ``None``: plain greedy), interleaved prompt by prompt so that
    the machine's drift hits all alike: verification and draft passes (forward hooks),
    seconds and the generated tokens per setting."""
    results = {
        name: {"verifications": 0, "draft_steps": 0, "seconds": 0.0, "outputs": []}
        for name in settings
    }
    for p in prompts:
        for name, setting in settings.items():
            kwargs, fields = setting if setting is not None else ({}, {})
            for field, value in fields.items():
                setattr(model.generation_config, field, value)
            with PassCounter(model) as counter:
                start = time.perf_counter()
                out = model.generate(
                    p[None],
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    **{k: v for k, v in kwargs.items() if k != "do_sample"},
                )
                seconds = time.perf_counter() - start
            r = results[name]
            r["seconds"] += seconds
            r["verifications"] += counter.verifications
            r["draft_steps"] += counter.draft_steps
            r["outputs"].append(out[0, p.numel() :])
    return results


def corpus_outputs(model, data: torch.Tensor, count: int, length: int, seed: int) -> ExitOutputs:
    """Teacher forcing on corpus text (the cheap estimate)."""
    windows = prompts_from(data, count, length + 1, seed)
    batches = [(w[None, :-1], w[None, 1:]) for w in windows]
    layers = model.config.num_hidden_layers
    return collect(
        model,
        batches,
        exits=list(range(1, layers + 1)),
        progress=False,
        exit_names=[f"layer{i}" for i in range(1, layers + 1)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = corpus()
    cut = int(0.9 * data.numel())
    model = make_model(args.layers, args.width)
    start = time.perf_counter()
    loss = train(model, data[:cut], args.steps)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s (loss {loss:.3f})")
    held = data[cut:]
    n, new = args.prompts, args.new_tokens
    cal_prompts = prompts_from(held, n, args.prompt_length, seed=1)
    check_prompts = prompts_from(held, n, args.prompt_length, seed=2)
    cal, _ = own_continuations(model, cal_prompts, new)
    own, greedy = own_continuations(model, check_prompts, new)
    calibration = AcceptanceCalibration.fit(cal)
    ece = calibration.calibration_error(own).tolist()
    print(
        "acceptance calibration ECE on the check prompts, per draft layer:",
        ", ".join(f"{e:.3f}" for e in ece),
    )
    costs = measure_speculation_costs(model, cal_prompts, max_width=9, new_tokens=new)
    print(
        f"measured: plain step {costs.plain_step * 1e3:.2f} ms, draft steps "
        + ", ".join(f"{t * 1e3:.2f}" for t in costs.draft_steps)
        + f" ms, verification {costs.verify_base * 1e3:.2f} + {costs.verify_per_token * 1e3:.3f}"
        f" w ms, round overhead {costs.round_overhead * 1e3:.2f} ms"
    )
    fixed = plan_self_speculation(own, 8, costs=costs)
    adaptive = plan_self_speculation(
        own, 8, thresholds=[0.2, 0.4, 0.6, 0.8], calibration=calibration, costs=costs
    )
    heuristic = plan_self_speculation(own, 8, schedule="heuristic_transient", costs=costs)
    estimate = plan_self_speculation(corpus_outputs(model, held, n, new, seed=3), 8)
    chosen = {
        "fixed k, best": (fixed, fixed.best),
        "adaptive, best": (adaptive, adaptive.best),
        "heuristic, best": (heuristic, heuristic.best),
    }
    for d in sorted({r["draft_exit"] for r in fixed.rows}):
        row = next(r for r in fixed.rows if r["draft_exit"] == d and r["draft_length"] == 4)
        chosen[f"fixed k=4, {row['draft_name']}"] = (fixed, row)
    settings = {"plain": None} | {
        name: hf_setting(plan, model, row) for name, (plan, row) in chosen.items()
    }
    real = run_hf(model, check_prompts, new, settings)
    plain = real["plain"]
    assert all(torch.equal(a, b) for a, b in zip(plain["outputs"], greedy, strict=True))
    print(
        f"\n{'plan':<40} {'verif pred/meas':>16} {'drafts pred/meas':>17} "
        f"{'speed-up pred/meas':>19} {'memory-bound':>13} {'same text':>9}"
    )
    for name, (_, row) in chosen.items():
        got = real[name]
        same = all(torch.equal(a, b) for a, b in zip(got["outputs"], greedy, strict=True))
        stop = "" if row["threshold"] is None else f", stop<{row['threshold']:.1f}"
        label = f"{name}: {row['draft_name']} k={row['draft_length']}{stop}"
        print(
            f"{label:<40} {row['verifications']:>7.0f} / {got['verifications']:<6} "
            f"{row['draft_steps']:>8.0f} / {got['draft_steps']:<6} "
            f"{row['speed_up_measured']:>8.2f}x / {plain['seconds'] / got['seconds']:.2f}x "
            f"{row['speed_up']:>12.2f}x {same!s:>9}"
        )
    best_fixed = next(
        r
        for r in estimate.rows
        if r["draft_exit"] == fixed.best["draft_exit"]
        and r["draft_length"] == fixed.best["draft_length"]
    )
    print(
        f"\ncorpus teacher forcing estimate for {fixed.best['draft_name']} k="
        f"{fixed.best['draft_length']}: {best_fixed['tokens_per_verification']:.2f} tokens per "
        f"verification; own continuations (exact): {fixed.best['tokens_per_verification']:.2f}"
    )
    by_batch = {
        b: measure_speculation_costs(
            model, cal_prompts, loop="forward", batch_size=b, max_width=9, new_tokens=new
        )
        for b in (1, 4, 16)
    }
    forward = plan_self_speculation(own, 8)
    print("vLLM speculative_config:", forward.to_vllm(by_batch))
    print("TensorRT-LLM:", forward.to_trtllm(by_batch))


if __name__ == "__main__":
    main()
