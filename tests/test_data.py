"""ExitOutputs: construction, validation, derived values, indexing, split, files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import exitwise
from exitwise import ExitOutputs, load


def make(n=12, e=3, c=4, seed=0, labels=True, **kw):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, e, c, generator=g)
    y = torch.arange(n) % c if labels else None
    return ExitOutputs(logits, labels=y, **kw)


def test_shapes_defaults_and_numpy_input():
    out = ExitOutputs(np.zeros((5, 3, 4), dtype=np.float32), labels=np.array([0, 1, 2, 3, 0]))
    assert (out.num_samples, out.num_exits, out.num_classes) == (5, 3, 4)
    assert isinstance(out.logits, torch.Tensor) and out.labels.dtype == torch.int64
    assert torch.allclose(out.costs, torch.tensor([1 / 3, 2 / 3, 1.0], dtype=torch.float64))
    assert out.exit_names == ["exit_0", "exit_1", "exit_2"]
    assert len(out) == 5 and "num_samples=5" in repr(out)


def test_probs_log_probs_predictions_match_torch():
    out = make()
    assert torch.allclose(out.probs(), torch.softmax(out.logits, -1))
    assert torch.allclose(out.log_probs(), torch.log_softmax(out.logits, -1))
    assert torch.equal(out.predictions(), out.logits.argmax(-1))
    expected = out.logits.argmax(-1) == out.labels[:, None]
    assert torch.equal(out.correct(), expected)
    final = out.logits.argmax(-1)
    assert torch.equal(out.correct("final"), final == final[:, -1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_dtypes(dtype):
    logits = torch.randn(6, 2, 3).to(dtype)
    out = ExitOutputs(logits)
    expected = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.probs().dtype == expected
    assert out.logits.dtype == dtype
    assert torch.allclose(out.probs().sum(-1).double(), torch.ones(6, 2, dtype=torch.float64))


def test_correct_without_labels_raises():
    with pytest.raises(ValueError, match="needs labels"):
        make(labels=False).correct()
    with pytest.raises(ValueError, match="`reference` to be one of"):
        make().correct("gold")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"logits": torch.zeros(3, 4)}, ValueError, r"shape \[N, E, C\].*got 2 dimensions"),
        ({"logits": torch.zeros(0, 2, 3)}, ValueError, "at least one sample"),
        ({"logits": torch.zeros(3, 0, 3)}, ValueError, "at least one exit"),
        ({"logits": torch.zeros(3, 2, 1)}, ValueError, "at least 2 classes"),
        ({"logits": torch.zeros(3, 2, 3, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"logits": "abc"}, TypeError, "torch.Tensor or numpy array, got str"),
        ({"labels": torch.tensor([0, 1])}, ValueError, r"one label per sample \(3\), got 2"),
        ({"labels": torch.tensor([0, 1, 5])}, ValueError, r"in \[0, 2\].*got 5 at sample 2"),
        ({"labels": torch.tensor([0, -1, 1])}, ValueError, "got -1 at sample 1"),
        ({"labels": torch.tensor([0.0, 1.0, 1.0])}, TypeError, "convert with `.long"),
        ({"labels": torch.zeros(3, 1, dtype=torch.long)}, ValueError, r"shape \[N\]"),
        ({"costs": [1.0, 2.0, 3.0]}, ValueError, r"shape \[E\] = \[2\]"),
        ({"costs": [0.0, 1.0]}, ValueError, "positive, got 0.0 at exit 0"),
        ({"costs": [2.0, 1.0]}, ValueError, "non-decreasing.*1.0 at exit 1 after 2.0"),
        ({"costs": [1.0, float("nan")]}, ValueError, "`costs` has 1 NaN value, first at exit 1"),
        ({"exit_names": ["a"]}, ValueError, r"one name per exit \(2\), got 1"),
        ({"exit_names": ["a", "a"]}, ValueError, "unique"),
        ({"exit_names": "ab"}, TypeError, "sequence of strings"),
    ],
)
def test_bad_inputs_raise_with_clear_messages(kwargs, error, match):
    args = {"logits": torch.zeros(3, 2, 3)}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        ExitOutputs(**args)


def test_nan_and_inf_report_count_and_first_location():
    logits = torch.zeros(20, 3, 4)
    logits[17, 2, 1] = float("nan")
    logits[18, 0, 0] = float("nan")
    logits[19, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="3 NaN values, first at sample 17, exit 2, class 1"):
        ExitOutputs(logits)
    logits = torch.zeros(4, 2, 3)
    logits[1, 1, 2] = float("inf")
    with pytest.raises(ValueError, match="1 infinite value, first at sample 1, exit 1, class 2"):
        ExitOutputs(logits)


def test_indexing_by_slice_int_indices_and_mask():
    out = make(n=10, costs=[1.0, 2.0, 4.0], exit_names=["a", "b", "c"])
    part = out[2:5]
    assert torch.equal(part.logits, out.logits[2:5]) and torch.equal(part.labels, out.labels[2:5])
    assert part.exit_names == ["a", "b", "c"] and torch.equal(part.costs, out.costs)
    assert torch.equal(out[3].logits, out.logits[3:4])
    assert torch.equal(out[-1].logits, out.logits[-1:])
    idx = torch.tensor([9, 0, 4])
    assert torch.equal(out[idx].labels, out.labels[idx])
    assert torch.equal(out[np.array([1, 2])].logits, out.logits[1:3])
    mask = out.labels == 1
    assert torch.equal(out[mask].logits, out.logits[mask])
    with pytest.raises(ValueError, match="selects no samples"):
        out[out.labels == 99]
    with pytest.raises(ValueError, match="boolean `index` of shape"):
        out[torch.tensor([True, False])]
    with pytest.raises(TypeError, match="1-D integer index"):
        out[torch.tensor([0.5])]


def test_split_is_stratified_exact_and_seeded():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    out = ExitOutputs(torch.randn(100, 2, 3), labels=labels)
    first, rest = out.split(0.25, seed=1)
    assert (len(first), len(rest)) == (25, 75)
    counts = torch.bincount(first.labels, minlength=3).tolist()
    assert counts == [12, 8, 5] or counts == [13, 7, 5] or counts == [12, 7, 6]
    assert abs(counts[0] - 12.5) <= 1 and abs(counts[1] - 7.5) <= 1 and counts[2] == 5
    # disjoint and complete
    all_rows = torch.cat([first.logits, rest.logits]).reshape(100, -1)
    assert torch.unique(all_rows, dim=0).shape[0] == 100
    again, _ = out.split(0.25, seed=1)
    other, _ = out.split(0.25, seed=2)
    assert torch.equal(again.logits, first.logits)
    assert not torch.equal(other.logits, first.logits)


def test_split_without_labels_and_bad_fraction():
    out = make(n=10, labels=False)
    first, rest = out.split(0.3)
    assert (len(first), len(rest)) == (3, 7)
    with pytest.raises(ValueError, match=r"`fraction` to be in \(0, 1\), got 1.5"):
        out.split(1.5)
    with pytest.raises(ValueError, match="both parts non-empty"):
        out.split(0.01)


def test_to_device(device):
    out = make().to(device)
    assert out.logits.device.type == device and out.labels.device.type == device
    assert out.costs.device.type == device
    assert out.correct().device.type == device
    back = out.to("cpu")
    assert torch.equal(back.logits, make().logits)


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
@pytest.mark.parametrize("labels", [True, False])
def test_save_load_round_trip(tmp_path, suffix, labels):
    out = make(labels=labels, costs=[1.0, 3.0, 3.0], exit_names=["x", "y", "z"])
    path = tmp_path / f"o{suffix}"
    out.save(path)
    back = exitwise.load(path)
    assert torch.equal(back.logits, out.logits)
    assert torch.equal(back.costs, out.costs)
    assert back.exit_names == ["x", "y", "z"]
    assert (back.labels is None) == (not labels)
    if labels:
        assert torch.equal(back.labels, out.labels)


def test_save_bfloat16_and_float16(tmp_path):
    out = ExitOutputs(torch.randn(4, 2, 3).to(torch.bfloat16))
    out.save(tmp_path / "a.safetensors")
    assert load(tmp_path / "a.safetensors").logits.dtype == torch.bfloat16
    out.save(tmp_path / "a.npz")
    assert load(tmp_path / "a.npz").logits.dtype == torch.float32
    half = ExitOutputs(torch.randn(4, 2, 3).half())
    half.save(tmp_path / "h.npz")
    assert torch.equal(load(tmp_path / "h.npz").logits, half.logits)


def test_load_rejects_pickle_missing_arrays_and_bad_suffix(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, logits=np.zeros((2, 1, 2)), exit_names=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="never unpickles"):
        load(path)
    np.savez(tmp_path / "nolog.npz", scores=np.zeros((2, 1, 2)))
    with pytest.raises(ValueError, match="no array named 'logits'"):
        load(tmp_path / "nolog.npz")
    with pytest.raises(ValueError, match="`path suffix` to be one of"):
        load(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError, match="No such file"):
        load(tmp_path / "missing.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load(tmp_path / "junk.safetensors")


def corrupt_copies(good: bytes) -> dict[str, bytes]:
    """Empty, truncated (several places), flipped bytes inside the compressed data, garbage."""
    flipped = bytearray(good)
    for k in range(60, min(len(good) - 30, 200)):
        flipped[k] ^= 0xFF
    return {
        "empty": b"",
        "half": good[: len(good) // 2],
        "tail_cut": good[:-10],
        "one_byte": good[:1],
        "flipped": bytes(flipped),
        "garbage": b"hello world" * 10,
    }


def test_regression_unreadable_npz_gives_one_clear_error(tmp_path):
    # issue 10 defect 10: a truncated or empty .npz gave zipfile.BadZipFile / EOFError
    # tracebacks (and garbage was reported as "holds object arrays").
    make().save(tmp_path / "good.npz")
    for name, data in corrupt_copies((tmp_path / "good.npz").read_bytes()).items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        with pytest.raises(ValueError, match=r"is not a readable npz file") as info:
            load(path)
        assert "\n" not in str(info.value), name


def test_safetensors_metadata_holds_exit_names(tmp_path):
    from safetensors import safe_open

    out = make(exit_names=["a", "b", "c"])
    out.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as fh:
        assert json.loads(fh.metadata()["exit_names"]) == ["a", "b", "c"]


def test_loaded_file_is_validated(tmp_path):
    np.savez(tmp_path / "bad.npz", logits=np.zeros((2, 2, 3)), costs=np.array([2.0, 1.0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        load(tmp_path / "bad.npz")


def test_with_logits_keeps_metadata():
    out = make(costs=[1.0, 2.0, 3.0])
    new = out.with_logits(out.logits * 2)
    assert torch.equal(new.costs, out.costs) and torch.equal(new.labels, out.labels)
    with pytest.raises(ValueError, match="to have shape"):
        out.with_logits(torch.zeros(1, 1, 1))
