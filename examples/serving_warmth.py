"""A server that idles runs slower: the same pass of a small CNN at several duty cycles.

Runs one full pass of ``serving_loop.WideDigits`` at batch 1, twice back to back, then sleeps
so that the core is busy a given share of the time, for four seconds per duty cycle. It prints
the median time of the pass right after the sleep and of the pass right after that one (no
sleep in between). On the 2-core development VM the second pass, too, was slower at low duty
(1.50 ms at 100 %, 1.63-1.95 ms at 15-30 %): what a server did in the last seconds, not only
whether it slept just now, sets its speed. ``LatencyModel.warmth`` models this and
``fit_latency_model`` fits it from a server's batch logs.

Run: ``python examples/serving_warmth.py`` (about 30 seconds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from serving_loop import WideDigits


def main(seconds: float = 4.0, duties=(1.0, 0.8, 0.5, 0.3, 0.15)) -> dict[float, tuple]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = WideDigits().eval()
    x = torch.randn(1, 1, 16, 16)

    def one_pass() -> float:
        t0 = time.perf_counter()
        h = x
        for block, head in zip(model.blocks, model.heads, strict=True):
            h = block(h)
            head(h)
        return time.perf_counter() - t0

    out = {}
    with torch.inference_mode():
        for _ in range(50):
            one_pass()
        for duty in duties:
            after_sleep, after_pass = [], []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                after_sleep.append(one_pass())
                after_pass.append(one_pass())
                pause = (after_sleep[-1] + after_pass[-1]) * (1 / duty - 1)
                if pause > 0:
                    time.sleep(pause)
            out[duty] = (float(np.median(after_sleep)), float(np.median(after_pass)))
            print(
                f"busy {duty:4.0%}: pass after the pause {out[duty][0] * 1e3:.3f} ms, "
                f"the pass after it {out[duty][1] * 1e3:.3f} ms ({len(after_sleep)} pairs)"
            )
    return out


if __name__ == "__main__":
    main()
