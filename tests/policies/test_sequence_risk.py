"""Sequence-level Learn-then-Test: per-sequence losses, the fixed-sequence test against a
naive loop, and validity over random sequence-level splits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import ExitOutputs
from exitwise.policies import evaluate, risk_controlled_threshold
from exitwise.policies.kernels import first_exit
from exitwise.policies.losses import loss_table
from exitwise.policies.p_values import binomial_p_value, wsr_p_value
from exitwise.policies.sequence_risk import sequence_losses
from exitwise.signals import compute_signal


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=12),
    seed=st.integers(0, 10_000),
    how=st.sampled_from(["fraction", "any"]),
)
def test_sequence_losses_equal_a_naive_loop(sizes, seed, how):
    g = torch.Generator().manual_seed(seed)
    ids = torch.repeat_interleave(
        torch.randperm(100, generator=g)[: len(sizes)], torch.tensor(sizes)
    )
    ids = ids[torch.randperm(len(ids), generator=g)]
    losses = torch.rand(len(ids), generator=g).round()
    got = sequence_losses(losses, ids, how)
    for k, gid in enumerate(sorted(set(ids.tolist()))):
        mine = losses[ids == gid]
        expected = float(mine.mean()) if how == "fraction" else float(mine.max())
        assert float(got[k]) == pytest.approx(expected)


def _sequences(outputs, length, seed=0):
    """Real samples cut into 'sequences' of similar samples (sorted by label and confidence),
    so the tokens of a sequence are strongly dependent, as in text."""
    conf = outputs.probs()[:, 0].max(-1).values
    order = torch.argsort(outputs.labels.double() * 10 + conf.double())
    out = outputs[order]
    groups = torch.arange(len(out)) // length
    positions = torch.arange(len(out)) % length
    return ExitOutputs(out.logits, out.labels, out.costs, out.exit_names, groups, positions)


def test_sequence_unit_equals_a_naive_fixed_sequence_test(real_outputs):
    tokens = _sequences(real_outputs[:2000], 10)
    for how in ("fraction", "any"):
        res = risk_controlled_threshold(
            tokens, "max_probability", limit=0.1, confidence=0.9, sequence_loss=how
        )
        assert res.guarantee.num_units == 200  # sequences, the default unit with groups
        scores = compute_signal(tokens, "max_probability").double()
        table = loss_table(tokens, "disagreement")
        shuffled = torch.randperm(200, generator=torch.Generator().manual_seed(0))
        certified = None
        for i, thr in enumerate(res.path.thresholds.tolist()):
            exits = first_exit(scores, torch.full((4,), thr, dtype=torch.float64))
            tok = table[torch.arange(2000), exits]
            seq = torch.stack(
                [
                    tok[tokens.groups == k].mean()
                    if how == "fraction"
                    else tok[tokens.groups == k].max()
                    for k in range(200)
                ]
            ).double()
            if how == "any":
                p = binomial_p_value(int(seq.sum()), 200, 0.1)
            else:
                p = wsr_p_value(seq[shuffled], 0.1, 0.1)
            assert float(res.path.p_values[i]) == pytest.approx(p, abs=1e-12)
            assert float(res.path.risks[i]) == pytest.approx(float(seq.mean()))
            if p > 0.1:
                break
            certified = thr
        assert res.shared_threshold == (math.inf if certified is None else certified)


def test_unit_rules_and_errors(real_outputs):
    plain = real_outputs[:500]
    res = risk_controlled_threshold(plain, "max_probability", limit=0.1, confidence=0.9)
    assert res.guarantee.num_units == 500
    with pytest.raises(ValueError, match="`unit='sequence'` needs outputs with `groups`"):
        risk_controlled_threshold(
            plain, "max_probability", limit=0.1, confidence=0.9, unit="sequence"
        )
    tokens = _sequences(plain, 5)
    tok = risk_controlled_threshold(
        tokens, "max_probability", limit=0.1, confidence=0.9, unit="sample"
    )
    assert tok.guarantee.num_units == 500
    with pytest.raises(ValueError, match="`sequence_loss` to be one of"):
        risk_controlled_threshold(
            tokens, "max_probability", limit=0.1, confidence=0.9, sequence_loss="all"
        )


def violation_rates(tokens, signal, delta, epsilon, trials):
    """Share of random sequence-level splits in which the policy certified on one half (at
    sequence and at token level) has a disagreement above ``delta`` on the other half."""
    violated = {"sequence": 0, "sample": 0}
    for trial in range(trials):
        cal, test = tokens.split(0.5, seed=trial)
        for unit in violated:
            res = risk_controlled_threshold(
                cal, signal, risk="disagreement", limit=delta, confidence=1 - epsilon, unit=unit
            )
            if res.policy is not None:
                ev = evaluate(res.policy, test, reference="final")
                violated[unit] += float(1.0 - ev.accuracy[0]) > delta
    return {k: v / trials for k, v in violated.items()}


@pytest.mark.slow
def test_sequence_guarantee_holds_where_the_token_level_one_breaks(real_outputs):
    """200 random sequence-level splits of real samples grouped into dependent 'sequences'
    of 25: the sequence-level certificate's violation rate stays <= epsilon (+ Monte-Carlo
    slack); the token-level procedure, which counts 25 dependent tokens as 25 samples,
    violates it more often."""
    epsilon, trials = 0.1, 200
    rates = violation_rates(_sequences(real_outputs, 25), "max_probability", 0.06, epsilon, trials)
    print(f"violation rates over {trials} splits: {rates}")
    slack = 3 * math.sqrt(epsilon * (1 - epsilon) / trials)
    assert rates["sequence"] <= epsilon + slack, rates
    assert rates["sample"] > rates["sequence"], rates
