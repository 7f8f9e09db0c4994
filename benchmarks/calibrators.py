"""Temperature scaling of every exit: exitwise (batched Newton) vs netcal (one fit per exit).

Synthetic N=100,000 samples, E=12 exits, C=100 classes with over- and under-confident exits.
netcal gets float64 probabilities (on float32 its fit returns T = 1, netcal #61/#48); exitwise
gets the float32 logits. Prints the time ratio and both NLLs per exit.

    python benchmarks/calibrators.py [--n 100000] [--exits 12] [--classes 100]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch


def synthetic(n: int, e: int, c: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=gen)
    logits = torch.randn(n, e, c, generator=gen)
    signal = torch.linspace(0.5, 4.0, e)
    logits[torch.arange(n), :, labels] += signal * (0.5 + torch.rand(n, 1, generator=gen))
    scale = torch.linspace(2.5, 0.6, e)  # early exits overconfident, late ones underconfident
    return (logits * scale[None, :, None]).float(), labels


def nll_at(logits: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    lp = torch.log_softmax(logits.double() / t, dim=-1)
    return float(-lp[torch.arange(len(labels)), labels].mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--exits", type=int, default=12)
    parser.add_argument("--classes", type=int, default=100)
    args = parser.parse_args()
    from netcal.scaling import TemperatureScaling as NetcalTS

    from exitwise.calibrate import TemperatureScaling

    logits, labels = synthetic(args.n, args.exits, args.classes)
    print(f"N={args.n} E={args.exits} C={args.classes}")
    TemperatureScaling().fit(logits[:2000], labels[:2000])  # warm-up
    start = time.perf_counter()
    ours = TemperatureScaling().fit(logits, labels)
    t_ours = time.perf_counter() - start

    y = labels.numpy()
    rows = np.arange(len(y))
    t_netcal, netcal_t, netcal_nll = 0.0, [], []
    for e in range(args.exits):
        probs = torch.softmax(logits[:, e].double(), dim=-1).numpy()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = NetcalTS()
            model.fit(probs, y)
        t_netcal += time.perf_counter() - start
        # netcal's `temperature` is the inverse temperature (a weight on log-probabilities)
        netcal_t.append(1.0 / float(np.asarray(model.temperature).reshape(-1)[0]))
        calibrated = np.clip(model.transform(probs), 1e-300, 1.0)
        netcal_nll.append(float(-np.mean(np.log(calibrated[rows, y]))))
    worst = -np.inf
    print(f"{'exit':>4} {'T exitwise':>11} {'T netcal':>9} {'NLL exitwise':>13} {'NLL netcal':>11}")
    for e in range(args.exits):
        nll_ours = nll_at(logits[:, e], labels, float(ours.temperatures_[e]))  # float64
        worst = max(worst, nll_ours - netcal_nll[e])
        print(
            f"{e:>4} {float(ours.temperatures_[e]):>11.4f} {netcal_t[e]:>9.4f} "
            f"{nll_ours:>13.6f} {netcal_nll[e]:>11.6f}"
        )
    print(f"netcal, one fit per exit: {t_netcal:8.2f} s")
    print(f"exitwise, all exits:      {t_ours:8.2f} s   (converged: {bool(ours.converged_.all())})")
    print(
        f"speed-up: {t_netcal / t_ours:.1f}x (target >= 20x); "
        f"max NLL(exitwise) - NLL(netcal) = {worst:.2e} (target <= 1e-6)"
    )


if __name__ == "__main__":
    main()
