"""collect() and measure_costs() on tiny real modules: equal to a manual forward."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from exitwise import ExitOutputs
from exitwise.collect import collect, mean_pool, measure_costs


def make_data(n_batches=3, batch=4, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(batch, features, generator=g),
            torch.randint(0, classes, (batch,), generator=g),
        )
        for _ in range(n_batches)
    ]


class ListModel(nn.Module):
    """SDN-style: returns the logits of every exit."""

    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.head1 = nn.Linear(8, 3)
        self.head2 = nn.Linear(8, 3)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        h1 = self.block1(x)
        h2 = self.block2(self.dropout(h1))
        return [self.head1(h1), self.head2(h2)]


def test_model_returning_a_list_equals_manual_forward():
    torch.manual_seed(0)
    model = ListModel()
    model.train()
    data = make_data()
    out = collect(model, data, progress=False)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        expected = torch.cat([torch.stack(model(x), dim=1) for x, _ in data])
    assert torch.equal(out.logits, expected)  # eval mode during collection: no dropout
    assert torch.equal(out.labels, torch.cat([y for _, y in data]))


def test_tensor_output_and_unlabelled_batches():
    class Stacked(nn.Module):
        def forward(self, x):
            return torch.stack([x[:, :3], x[:, 3:]], dim=1)

    data = [torch.randn(5, 6), torch.randn(2, 6)]
    out = collect(Stacked(), data, progress=False)
    assert out.labels is None and out.num_samples == 7
    assert torch.equal(out.logits[:5, 1], data[0][:, 3:])


def test_hooks_with_per_exit_and_shared_heads():
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3)])
    data = make_data()
    out = collect(
        body,
        data,
        exits=["1", "3"],
        heads=heads,
        progress=False,
        exit_names=["early", "late"],
        costs=[1.0, 2.0],
    )
    with torch.no_grad():
        x = torch.cat([x for x, _ in data])
        h1 = body[1](body[0](x))
        h2 = body[3](body[2](h1))
        expected = torch.stack([heads[0](h1), heads[1](h2)], dim=1)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert out.exit_names == ["early", "late"] and out.costs.tolist() == [1.0, 2.0]
    shared = collect(body, data, exits=["1", "3"], heads=heads[0], progress=False)
    assert torch.allclose(shared.logits[:, 1], heads[0](h2), atol=1e-6)
    assert all(not m._forward_hooks for m in body.modules())


def test_hooks_are_removed_after_an_exception():
    body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())

    def bad_head(h):
        raise RuntimeError("head failed")

    with pytest.raises(RuntimeError, match="head failed"):
        collect(body, make_data(), exits=["1"], heads=bad_head, progress=False)
    assert all(not m._forward_hooks for m in body.modules())

    class Exploding(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(6, 3)

        def forward(self, x):
            self.layer(x)
            raise ValueError("forward failed")

    model = Exploding()
    with pytest.raises(ValueError, match="forward failed"):
        collect(model, make_data(), exits=["layer"], heads=nn.Identity(), progress=False)
    assert not model.layer._forward_hooks


class TinyHF(nn.Module):
    """A minimal Hugging Face-style encoder: dict inputs, output_hidden_states."""

    def __init__(self, vocab=20, hidden=8, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(layers)])

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False):
        h = self.embed(input_ids)
        states = [h]
        for layer in self.layers:
            h = torch.tanh(layer(h))
            states.append(h)
        return types.SimpleNamespace(
            last_hidden_state=h, hidden_states=tuple(states) if output_hidden_states else None
        )


def test_hugging_face_hidden_states_with_mean_pooling():
    torch.manual_seed(2)
    model = TinyHF()
    heads = [nn.Linear(8, 4) for _ in range(2)]
    ids = torch.randint(0, 20, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 3, 1])}
    out = collect(model, [batch], exits=[1, 2], heads=heads, pool="mean", progress=False)
    with torch.no_grad():
        states = model(ids, mask, output_hidden_states=True).hidden_states
        expected = torch.stack(
            [heads[0](mean_pool(states[1], mask)), heads[1](mean_pool(states[2], mask))], dim=1
        )
    assert torch.allclose(out.logits, expected, atol=1e-6)
    assert out.labels.tolist() == [0, 3, 1]
    cls = collect(model, [batch], exits=[2], heads=heads[1], pool="cls", progress=False)
    assert torch.allclose(cls.logits[:, 0], heads[1](states[2][:, 0]), atol=1e-6)


def test_token_outputs_become_samples_and_ignore_index_is_dropped():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(30, 8)
            self.layer1 = nn.Linear(8, 8)
            self.layer2 = nn.Linear(8, 8)

        def forward(self, ids):
            return self.layer2(torch.relu(self.layer1(self.embed(ids))))

    torch.manual_seed(3)
    lm = TinyLM()
    lm_head = nn.Linear(8, 30)  # a shared "logit lens" head
    ids = torch.randint(0, 30, (2, 4))
    labels = torch.tensor([[1, 2, -100, 4], [5, -100, 7, 8]])
    out = collect(lm, [(ids, labels)], exits=["layer1", "layer2"], heads=lm_head, progress=False)
    assert out.num_samples == 6 and out.labels.tolist() == [1, 2, 4, 5, 7, 8]
    with torch.no_grad():
        full = lm_head(lm(ids)).reshape(8, 30)[labels.reshape(-1) != -100]
    assert torch.allclose(out.logits[:, 1], full, atol=1e-6)


def test_topk_reduction_keeps_exact_probabilities_and_predictions():
    torch.manual_seed(4)
    vocab = 50
    logits = torch.randn(40, 3, vocab) * 3
    labels = torch.randint(0, vocab, (40,))

    class Fixed(nn.Module):
        def forward(self, x):
            return logits[x]

    data = [(torch.arange(0, 20), labels[:20]), (torch.arange(20, 40), labels[20:])]
    full = collect(Fixed(), data, progress=False)
    small, kept = collect(Fixed(), data, reduce="topk:8", progress=False, return_class_indices=True)
    assert kept.shape == (40, 8) and 9 <= small.num_classes <= vocab
    lp_full = torch.log_softmax(full.logits, -1)
    lp_small = small.log_probs()
    assert torch.allclose(
        lp_small[:, :, :8], lp_full.gather(2, kept[:, None, :].expand(-1, 3, -1)), atol=1e-5
    )
    assert torch.allclose(lp_small.exp().sum(-1), torch.ones(40, 3), atol=1e-5)
    assert torch.equal(small.correct(), full.correct())
    from exitwise.signals import margin, max_probability

    assert torch.allclose(max_probability(small), max_probability(full), atol=1e-5)
    assert torch.allclose(margin(small), margin(full), atol=1e-5)
    from exitwise.metrics import negative_log_likelihood

    assert torch.allclose(
        negative_log_likelihood(small.logits, small.labels, input="logits"),
        negative_log_likelihood(full.logits, full.labels, input="logits"),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match=r"at least 2 \* E \+ 1 = 7"):
        collect(Fixed(), data, reduce="topk:3", progress=False)
    with pytest.raises(ValueError, match="'topk:K'"):
        collect(Fixed(), data, reduce="top5", progress=False)


def test_flop_costs_are_cumulative_and_match_a_manual_count():
    body = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 16), nn.ReLU())
    heads = [nn.Linear(8, 3), nn.Linear(16, 3)]
    costs = measure_costs(body, torch.randn(4, 6), exits=["1", "3"], heads=heads)
    first = 2 * 6 * 8 + 2 * 8 * 3  # per sample: block + head 1
    second = 2 * 6 * 8 + 2 * 8 * 16 + 2 * 8 * 3 + 2 * 16 * 3
    assert costs.tolist() == [first, second]
    assert bool((costs[1:] >= costs[:-1]).all())
    out = collect(body, make_data(), exits=["1", "3"], heads=heads, costs=costs, progress=False)
    assert isinstance(out, ExitOutputs) and out.costs.tolist() == [first, second]


def test_latency_costs_are_positive_and_non_decreasing():
    body = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
    costs = measure_costs(body, torch.randn(32, 64), exits=["1", "3"], method="latency", repeats=5)
    assert bool((costs > 0).all()) and bool((costs[1:] >= costs[:-1]).all())


def test_progress_bar_can_be_disabled(capsys):
    collect(ListModel(), make_data(), progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
    collect(ListModel(), make_data(), progress=True)
    assert "samples" in capsys.readouterr().err


def test_collect_validation():
    body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    with pytest.raises(ValueError, match="no submodule named 'nope'"):
        collect(body, make_data(), exits=["nope"], heads=nn.Identity(), progress=False)
    with pytest.raises(ValueError, match="`heads` is required"):
        collect(body, make_data(), exits=["1"], progress=False)
    with pytest.raises(ValueError, match=r"one head per exit \(2\)"):
        collect(body, make_data(), exits=["0", "1"], heads=[nn.Identity()] * 3, progress=False)
    with pytest.raises(ValueError, match="must return per-exit logits"):
        collect(body, make_data(), progress=False)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        collect(lambda x: x, make_data(), progress=False)
    with pytest.raises(ValueError, match="yielded no batches"):
        collect(ListModel(), [], progress=False)
    with pytest.raises(ValueError, match="`method` to be one of"):
        measure_costs(body, torch.randn(2, 6), exits=["1"], method="energy")
