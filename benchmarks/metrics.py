"""ECE and NLL of every exit: exitwise (batched over exits) vs netcal/scikit-learn (per exit).

Synthetic N=100,000 samples, E=12 exits, C=100 classes (float32 probabilities, accuracy and
confidence rising with depth). The baseline is what scripts do today: netcal's ``ECE(bins=15)``
and scikit-learn's ``log_loss`` (netcal's NLL is for regression only) called once per exit on
numpy arrays. Both see the same float32 array; the values are checked equal and the speed
ratio is printed.

    python benchmarks/metrics.py [--n 100000] [--exits 12] [--classes 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def synthetic(n: int, e: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=gen)
    logits = torch.randn(n, e, c, generator=gen)
    signal = torch.linspace(1.0, 6.0, e)  # deeper exits see the label more clearly
    logits[torch.arange(n), :, labels] += signal * torch.rand(n, 1, generator=gen) * 1.5
    probs = torch.softmax(logits, dim=-1).numpy()
    return probs, labels.numpy()


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--exits", type=int, default=12)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    from netcal.metrics import ECE
    from sklearn.metrics import log_loss

    from exitwise import metrics

    probs, labels = synthetic(args.n, args.exits, args.classes)
    print(f"N={args.n} E={args.exits} C={args.classes}, float32 probabilities, 15 bins")

    def baseline():
        ece = [ECE(bins=15).measure(probs[:, e], labels) for e in range(args.exits)]
        nll = [
            log_loss(labels, probs[:, e], labels=np.arange(args.classes)) for e in range(args.exits)
        ]
        return np.array(ece), np.array(nll)

    p_t = torch.from_numpy(probs).to(args.device)
    y_t = torch.from_numpy(labels).to(args.device)

    def ours():
        ece = metrics.expected_calibration_error(p_t, y_t, n_bins=15)
        nll = metrics.negative_log_likelihood(p_t, y_t)
        if p_t.is_cuda:
            torch.cuda.synchronize()
        return ece.cpu().numpy(), nll.cpu().numpy()

    ours()  # warm-up
    t_ours, (ece_ours, nll_ours) = best_of(ours, 3)
    t_base, (ece_base, nll_base) = best_of(baseline, 1)
    ece_diff = float(np.abs(ece_ours - ece_base).max())
    nll_diff = float(np.abs(nll_ours - nll_base).max())
    print(f"per-exit ECE (exitwise): {np.round(ece_ours, 4).tolist()}")
    print(f"max |ECE exitwise - netcal|      = {ece_diff:.2e}")
    print(f"max |NLL exitwise - scikit-learn| = {nll_diff:.2e}")
    print(f"netcal + scikit-learn, per exit: {t_base:8.3f} s")
    print(f"exitwise, all exits at once:     {t_ours:8.3f} s  ({args.device})")
    print(f"speed-up: {t_base / t_ours:.1f}x (target >= 10x)")
    if ece_diff > 1e-6 or nll_diff > 1e-6:
        raise SystemExit("values differ by more than 1e-6")


if __name__ == "__main__":
    main()
