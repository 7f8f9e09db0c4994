"""Token-level data: groups (sequences) and positions through collect, files, indexing,
splits, folds and the cluster bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from exitwise import ExitOutputs, load, metrics
from exitwise.calibrate._folds import fold_ids
from exitwise.collect import collect
from exitwise.metrics.bootstrap import cluster_bootstrap_indices


def _tokens(lengths, e=2, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    groups = torch.repeat_interleave(torch.arange(len(lengths)) * 10 + 3, torch.tensor(lengths))
    positions = torch.cat([torch.arange(k) for k in lengths])
    return ExitOutputs(
        torch.randn(n, e, c, generator=g),
        labels=torch.randint(0, c, (n,), generator=g),
        groups=groups,
        positions=positions,
    )


class TokenModel(nn.Module):
    """Two exits over a toy vocabulary: per-token logits [B, T, V] from embeddings."""

    def __init__(self, vocab=7):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.l1 = nn.Linear(8, 8)
        self.l2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, vocab)

    def forward(self, input_ids, attention_mask=None):
        h1 = torch.relu(self.l1(self.emb(input_ids)))
        h2 = torch.relu(self.l2(h1))
        return [self.head(h1), self.head(h2)]


def test_validation_names_the_argument():
    logits = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"`groups` of shape \[4\]"):
        ExitOutputs(logits, groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`positions` >= 0, got -1 at sample 2"):
        ExitOutputs(logits, groups=torch.zeros(4, dtype=torch.long), positions=[0, 1, -1, 2])
    with pytest.raises(TypeError, match="`groups` to hold integers"):
        ExitOutputs(logits, groups=torch.zeros(4))
    with pytest.raises(ValueError, match="`positions` needs `groups`"):
        ExitOutputs(logits, positions=torch.arange(4))


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_groups_and_positions_survive_files_indexing_and_devices(suffix, tmp_path, device):
    out = _tokens([3, 1, 4])
    out.save(tmp_path / f"t{suffix}")
    back = load(tmp_path / f"t{suffix}").to(device)
    assert torch.equal(back.groups.cpu(), out.groups) and torch.equal(
        back.positions.cpu(), out.positions
    )
    part = back[torch.tensor([6, 0, 3], device=device)]
    assert part.groups.tolist() == [23, 3, 13] and part.positions.tolist() == [2, 0, 0]
    assert torch.equal(back.with_logits(back.logits * 2).groups, back.groups)
    assert back.num_groups == 3 and "num_groups=3" in repr(back)
    assert ExitOutputs(torch.randn(2, 1, 2)).groups is None


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 6), min_size=2, max_size=25),
    fraction=st.floats(0.1, 0.9),
    seed=st.integers(0, 1000),
)
def test_split_never_cuts_a_sequence(lengths, fraction, seed):
    out = _tokens(lengths)
    g = len(lengths)
    if round(fraction * g) in (0, g):
        with pytest.raises(ValueError, match="both parts non-empty"):
            out.split(fraction, seed=seed)
        return
    first, rest = out.split(fraction, seed=seed)
    a, b = set(first.groups.tolist()), set(rest.groups.tolist())
    assert not a & b and len(a) == round(fraction * g) and len(a | b) == g
    assert len(first) + len(rest) == len(out)
    # every sequence arrives whole, in its original order
    for part in (first, rest):
        for grp in set(part.groups.tolist()):
            pos = part.positions[part.groups == grp].tolist()
            assert pos == list(range(lengths[(grp - 3) // 10]))


def test_folds_keep_sequences_together():
    out = _tokens([2, 5, 1, 3, 3, 2, 4])
    ids = fold_ids(len(out), 3, seed=1, groups=out.groups)
    for grp in out.groups.unique():
        assert ids[out.groups == grp].unique().numel() == 1
    with pytest.raises(ValueError, match="at least `folds`=9 sequences"):
        fold_ids(len(out), 9, groups=out.groups)


def test_cluster_bootstrap_resamples_whole_sequences():
    out = _tokens([2, 5, 1, 3])
    rows = cluster_bootstrap_indices(out.groups, 50, seed=4, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(4)
    picks = torch.randint(0, 4, (50, 4), generator=gen)
    uniq = out.groups.unique()
    for r, pick in zip(rows, picks, strict=True):
        naive = torch.cat([torch.nonzero(out.groups == uniq[p]).flatten() for p in pick])
        assert torch.equal(r, naive)
    # a metric with intervals from the cluster bootstrap: the bounds bracket the estimate
    res = metrics.bootstrap(
        metrics.per_exit_accuracy, out.logits, out.labels, groups=out.groups, n_resamples=200
    )
    assert bool(
        (res.low <= res.estimate + 1e-12).all() and (res.estimate <= res.high + 1e-12).all()
    )
    with pytest.raises(ValueError, match="`groups` to be integer ids"):
        metrics.bootstrap(metrics.per_exit_accuracy, out.logits, out.labels, groups=out.groups[:3])


def test_cluster_intervals_are_wider_for_dependent_tokens():
    # 60 sequences of 20 tokens whose correctness is shared within a sequence: the tokens
    # carry the information of 60 samples, and only the cluster bootstrap knows it
    g = torch.Generator().manual_seed(0)
    seq_ok = torch.rand(60, generator=g) < 0.7
    groups = torch.arange(60).repeat_interleave(20)
    labels = torch.zeros(1200, dtype=torch.long)
    logits = torch.zeros(1200, 1, 2)
    logits[:, 0, 0] = torch.where(seq_ok[groups], 1.0, -1.0)
    iid = metrics.bootstrap(metrics.per_exit_accuracy, logits, labels, n_resamples=300)
    clustered = metrics.bootstrap(
        metrics.per_exit_accuracy, logits, labels, n_resamples=300, groups=groups
    )
    width = lambda r: float(r.high[0] - r.low[0])  # noqa: E731
    assert width(clustered) > 3 * width(iid)


def test_collect_fills_groups_and_positions_without_padding_or_ignored_labels():
    torch.manual_seed(0)
    model = TokenModel()
    ids = torch.randint(0, 7, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])  # left/right pad
    labels = ids.clone()
    labels[0, 1] = -100
    batches = [
        {"input_ids": ids[:2], "attention_mask": mask[:2], "labels": labels[:2]},
        {"input_ids": ids[2:], "attention_mask": mask[2:], "labels": labels[2:]},
    ]
    out = collect(model, batches, progress=False)
    expected_groups, expected_pos, rows = [], [], []
    for b in range(3):
        for t in range(5):
            if mask[b, t] and labels[b, t] != -100:
                expected_groups.append(b)
                expected_pos.append(int(mask[b, : t + 1].sum()) - 1)
                rows.append((b, t))
    assert out.groups.tolist() == expected_groups
    assert out.positions.tolist() == expected_pos
    with torch.no_grad():
        full = model(ids)
    for i, (b, t) in enumerate(rows):
        assert torch.allclose(out.logits[i, 1], full[1][b, t])
    assert out.labels.tolist() == [int(labels[b, t]) for b, t in rows]


def test_token_outputs_survive_collect_save_load_index_split(tmp_path):
    torch.manual_seed(1)
    model = TokenModel()
    data = [(torch.randint(0, 7, (4, 6)), torch.randint(0, 7, (4, 6))) for _ in range(5)]
    out = collect(model, data, progress=False, reduce="topk:5")
    assert out.num_groups == 20 and out.positions.max() == 5
    out.save(tmp_path / "tok.safetensors")
    back = load(tmp_path / "tok.safetensors")
    cal, test = back[torch.arange(len(back) - 1, -1, -1)].split(0.5, seed=0)
    assert not set(cal.groups.tolist()) & set(test.groups.tolist())
    assert cal.num_groups == test.num_groups == 10
    np.testing.assert_array_equal(
        np.sort(np.r_[cal.groups.numpy(), test.groups.numpy()]), np.sort(out.groups.numpy())
    )


def test_per_exit_metrics_resample_sequences():
    out = _tokens([30] * 12, e=2, c=3)
    rows = metrics.per_exit_metrics(out, n_resamples=50)
    iid = metrics.per_exit_metrics(ExitOutputs(out.logits, out.labels), n_resamples=50)
    assert rows[0]["accuracy"] == iid[0]["accuracy"]
    assert (rows[0]["accuracy_low"], rows[0]["accuracy_high"]) != (
        iid[0]["accuracy_low"],
        iid[0]["accuracy_high"],
    )


def test_cli_info_shows_sequences_and_tokens(tmp_path, capsys):
    import json

    from exitwise.cli import main

    _tokens([3, 1, 4, 4]).save(tmp_path / "t.npz")
    assert main(["info", str(tmp_path / "t.npz")]) == 0
    assert capsys.readouterr().out.startswith("4 sequences, 12 tokens (mean 3.0, max 4 per")
    assert main(["info", str(tmp_path / "t.npz"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["num_sequences"] == 4 and payload["tokens_per_sequence"]["max"] == 4


def test_report_adds_positions_and_speculation_for_token_data(real_outputs, tmp_path):
    from exitwise.report import build_report
    from tests.conftest import as_sequences

    tokens = as_sequences(real_outputs[:2000], 25)
    summary = build_report(tokens, tmp_path, n_resamples=20)
    assert (tmp_path / "positions.png").stat().st_size > 1000
    html = (tmp_path / "report.html").read_text()
    assert "Self-speculative decoding" in html and 'alt="positions"' in html
    spec = summary["tokens"]["speculation"]
    assert spec["best"]["speed_up"] == max(r["speed_up"] for r in spec["rows"])
    assert summary["tokens"]["num_sequences"] == 40


def test_regression_duplicate_and_huge_positions_are_refused(tmp_path):
    # issue 24 item 5: duplicate positions within a sequence were accepted (the planner's
    # tokens per verification moved from 1.739 to 1.77); positions near 2**62 gave a traceback
    logits = torch.randn(4, 2, 3)
    with pytest.raises(ValueError, match=r"sequence 7 has position 1 twice \(samples 1 and 3\)"):
        ExitOutputs(logits, groups=[7, 7, 8, 7], positions=[0, 1, 0, 1])
    ExitOutputs(logits, groups=[7, 7, 8, 8], positions=[0, 1, 0, 1])  # across sequences: fine
    with pytest.raises(ValueError, match=r"`positions` <= 2147483647 .* got 4611686018427387904"):
        ExitOutputs(logits, groups=[0, 0, 1, 1], positions=[0, 1, 0, 2**62])
    # files go through the same constructor
    np.savez(
        tmp_path / "dup.npz",
        logits=logits.numpy(),
        groups=np.array([0, 0, 1, 1]),
        positions=np.array([3, 3, 0, 1]),
    )
    with pytest.raises(ValueError, match="position 3 twice"):
        load(tmp_path / "dup.npz")
