"""ECE of every exit: exitwise (batched over exits) vs netcal (per exit), first call and warm.

Synthetic N=100,000 samples, E=12 exits, C=100 classes (float32 probabilities, accuracy and
confidence rising with depth). The baseline is what scripts do today: netcal's
``ECE(bins=15).measure`` called once per exit on the numpy array. exitwise computes ECE for
all exits from the same array (probabilities) and, separately, from the logits
(``input="logits"``; netcal still gets the probabilities). Values are checked equal; the
ratio is printed for the first call in the process and for a warm call (best of 3).
scikit-learn's ``log_loss`` against exitwise's NLL is kept as a value check.

Targets (issue 10): ECE alone >= 10x netcal on the first call; from logits >= 5x.

    python benchmarks/metrics.py [--n 100000] [--exits 12] [--classes 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def synthetic(n: int, e: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 logits ``[n, e, c]`` and labels ``[n]``."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=gen)
    logits = torch.randn(n, e, c, generator=gen)
    signal = torch.linspace(1.0, 6.0, e)  # deeper exits see the label more clearly
    logits[torch.arange(n), :, labels] += signal * torch.rand(n, 1, generator=gen) * 1.5
    return logits.numpy(), labels.numpy()


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(fn, repeats: int) -> float:
    return min(timed(fn)[0] for _ in range(repeats))


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

    logits_np, labels = synthetic(args.n, args.exits, args.classes)
    probs = torch.softmax(torch.from_numpy(logits_np), dim=-1).numpy()
    e = args.exits
    print(f"N={args.n} E={e} C={args.classes}, float32, 15 bins, {torch.get_num_threads()} threads")

    def netcal_ece():
        return np.array([ECE(bins=15).measure(probs[:, j], labels) for j in range(e)])

    p_t = torch.from_numpy(probs).to(args.device)
    z_t = torch.from_numpy(logits_np).to(args.device)
    y_t = torch.from_numpy(labels).to(args.device)

    def sync(x):
        if x.is_cuda:
            torch.cuda.synchronize()
        return x.cpu().numpy()

    def ours_probs():
        return sync(metrics.expected_calibration_error(p_t, y_t, n_bins=15))

    def ours_logits():
        return sync(metrics.expected_calibration_error(z_t, y_t, n_bins=15, input="logits"))

    first_ours, ece_ours = timed(ours_probs)
    first_logits, ece_logits = timed(ours_logits)
    first_base, ece_base = timed(netcal_ece)
    warm_ours = best_of(ours_probs, 3)
    warm_logits = best_of(ours_logits, 3)
    warm_base = best_of(netcal_ece, 2)
    diff = float(np.abs(ece_ours - ece_base).max())
    diff_logits = float(np.abs(ece_logits - ece_base).max())

    nll_ours = sync(metrics.negative_log_likelihood(z_t, y_t, input="logits"))
    nll_base = np.array(
        [
            log_loss(labels, probs[:, j].astype(np.float64), labels=np.arange(args.classes))
            for j in range(e)
        ]
    )
    nll_diff = float(np.abs(nll_ours - nll_base).max())

    print(f"per-exit ECE (exitwise): {np.round(ece_ours, 4).tolist()}")
    print(f"max |ECE exitwise - netcal| = {diff:.2e} (probs), {diff_logits:.2e} (from logits)")
    print(f"max |NLL exitwise - scikit-learn| = {nll_diff:.2e}")
    print(f"{'':34s} {'first call':>11s} {'warm':>9s}")
    print(f"{'netcal ECE, one call per exit':34s} {first_base:10.3f}s {warm_base:8.3f}s")
    print(f"{'exitwise ECE, probs, all exits':34s} {first_ours:10.3f}s {warm_ours:8.3f}s")
    print(f"{'exitwise ECE, logits, all exits':34s} {first_logits:10.3f}s {warm_logits:8.3f}s")
    print(
        f"speed-up, probs:  first {first_base / first_ours:5.1f}x, warm "
        f"{warm_base / warm_ours:5.1f}x (target >= 10x on the first call)"
    )
    print(
        f"speed-up, logits: first {first_base / first_logits:5.1f}x, warm "
        f"{warm_base / warm_logits:5.1f}x (target >= 5x on the first call)"
    )
    if diff > 1e-6 or diff_logits > 1e-5 or nll_diff > 1e-5:
        raise SystemExit("values differ from the references")


if __name__ == "__main__":
    main()
