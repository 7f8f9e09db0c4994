"""Row chunks in worker threads: results in chunk order, torch's thread count restored (also
on an error), and the same answer, bit for bit, on one thread and on several."""

from __future__ import annotations

import pytest
import torch

from exitwise import metrics
from exitwise._chunk_threads import map_chunks
from exitwise.calibrate.temperature import fit_temperatures
from exitwise.policies import evaluate_thresholds


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_map_chunks_keeps_order_and_restores_threads(two_threads):
    chunks = [slice(i, i + 3) for i in range(0, 30, 3)]
    seen = []

    def fn(rows, buffer):
        seen.append(torch.get_num_threads())
        return rows.start, buffer.shape

    out = map_chunks(fn, chunks, torch.device("cpu"), [torch.empty(1), torch.empty(2)])
    assert [start for start, _ in out] == list(range(0, 30, 3))
    assert {shape for _, shape in out} <= {(1,), (2,)}
    assert set(seen) == {1} and torch.get_num_threads() == 2

    def fails(rows, _):
        raise RuntimeError(f"chunk {rows.start}")

    with pytest.raises(RuntimeError, match="chunk"):
        map_chunks(fails, chunks, torch.device("cpu"))
    assert torch.get_num_threads() == 2


def _on(threads, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_threaded_passes_give_the_single_thread_answer_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    n, e, c = 6000, 3, 400  # several chunks in every pass
    labels = torch.randint(0, c, (n,), generator=g)
    logits = torch.randn(n, e, c, generator=g) * 3
    logits[torch.arange(n), :, labels] += 1.0
    scores = torch.rand(n, e, generator=g)
    correct = torch.rand(n, e, generator=g) < 0.7
    candidates = torch.rand(9, e, generator=g).double()

    def run():
        fit = fit_temperatures(logits, labels, chunk_size=500)  # 12 chunks
        ece = metrics.expected_calibration_error(logits, labels, input="logits")
        result = evaluate_thresholds(scores, correct, [1.0, 2.0, 3.0], candidates)
        return fit.temperatures, fit.nll, ece, result.exit_counts, result.accuracy

    for one, several in zip(_on(1, run), _on(2, run), strict=True):
        assert torch.equal(one, several)
