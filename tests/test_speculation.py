"""The self-speculative decoding planner against a brute-force simulation of greedy
speculative decoding on the collected sequences."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exitwise import ExitOutputs
from exitwise.generation import acceptance, plan_self_speculation


def _outputs(lengths, e, c, seed, agree=0.7):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    final = torch.randn(n, c, generator=g) * 2
    logits = torch.randn(n, e, c, generator=g)
    same = torch.rand(n, e, generator=g) < agree
    logits = torch.where(same[..., None], final[:, None] + 0.1 * logits, logits)
    logits[:, -1] = final
    groups = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    positions = torch.cat([torch.arange(k) for k in lengths])
    perm = torch.randperm(n, generator=g)  # rows in any order: the planner sorts them
    return ExitOutputs(logits[perm], groups=groups[perm] * 3 + 1, positions=positions[perm])


def _simulate_greedy(out, d, k, tau=0.0, schedule="constant"):
    """Greedy self-speculative decoding, literally, as Hugging Face runs it: draft with exit d
    one token at a time, stop after k drafts, after a draft whose confidence (max softmax
    probability) is below tau, or one token before the end; verify with the last exit;
    under the heuristic schedules k grows by 2 after a fully accepted round, else shrinks
    by 1 (kept from one sequence to the next with "heuristic")."""
    pred = out.predictions()
    conf = torch.softmax(out.logits.double(), dim=-1).amax(dim=-1)
    tokens = verifications = drafts = 0
    current = k
    for grp in sorted(out.groups.unique().tolist()):
        if schedule != "heuristic":
            current = k
        rows = torch.nonzero(out.groups == grp).flatten()
        rows = rows[torch.argsort(out.positions[rows])]
        p, t = 0, len(rows)
        while p < t:
            drafted = []
            while len(drafted) < min(current, t - p - 1):
                r = rows[p + len(drafted)]
                drafted.append(r)
                if float(conf[r, d]) < tau:
                    break
            j = 0
            while j < len(drafted) and pred[drafted[j], d] == pred[drafted[j], -1]:
                j += 1
            verifications += 1
            drafts += len(drafted)
            tokens += j + 1
            if schedule != "constant":
                current = current + 2 if j == len(drafted) else max(1, current - 1)
            p += j + 1
    return tokens, verifications, drafts


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 15), min_size=1, max_size=6),
    e=st.integers(2, 4),
    seed=st.integers(0, 10_000),
    agree=st.floats(0.0, 1.0),
    tau=st.floats(0.0, 1.0),
    schedule=st.sampled_from(["constant", "heuristic", "heuristic_transient"]),
)
def test_planner_equals_brute_force_greedy_speculation(lengths, e, seed, agree, tau, schedule):
    out = _outputs(lengths, e, 5, seed, agree)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # max_draft longer than a sequence
        plan = plan_self_speculation(out, max_draft=4, thresholds=[tau], schedule=schedule)
    alpha = acceptance(out)
    c = out.costs.tolist()
    for row in plan.rows:
        d, k = row["draft_exit"], row["draft_length"]
        stop = 0.0 if row["threshold"] is None else tau
        tokens, verifs, drafts = _simulate_greedy(out, d, k, stop, schedule)
        assert tokens == sum(lengths) == row["tokens"]
        assert (row["verifications"], row["draft_steps"]) == (verifs, drafts)
        assert row["tokens_per_verification"] == pytest.approx(tokens / verifs)
        assert row["acceptance"] == pytest.approx(float(alpha[:, d].mean()))
        assert row["speed_up"] == pytest.approx(
            c[-1] * tokens / (drafts * c[d] + verifs * (c[-1] - c[d]))
        )


def test_sampling_acceptance_and_the_iid_formula():
    out = _outputs([40, 40, 40], 3, 6, seed=1)
    probs = torch.softmax(out.logits.double(), -1)
    alpha = acceptance(out, "sampling")
    naive = torch.stack(
        [sum(torch.minimum(probs[:, d, c], probs[:, -1, c]) for c in range(6)) for d in range(2)],
        dim=1,
    )
    assert torch.allclose(alpha, naive)
    plan = plan_self_speculation(out, max_draft=3, mode="sampling", verification="full")
    for row in plan.rows:
        a, k = row["acceptance"], row["draft_length"]
        assert row["tokens_per_verification_iid"] == pytest.approx((1 - a ** (k + 1)) / (1 - a))
        assert 1.0 <= row["tokens_per_verification"] <= k + 1
    # independent acceptances: the expected walk is close to the iid formula on long sequences
    g = torch.Generator().manual_seed(0)
    n = 4000
    flat = ExitOutputs(
        torch.randn(n, 2, 3, generator=g),
        groups=torch.zeros(n, dtype=torch.long),
        positions=torch.arange(n),
    )
    row = plan_self_speculation(flat, 4, mode="sampling").rows[-1]
    assert row["tokens_per_verification"] == pytest.approx(
        row["tokens_per_verification_iid"], rel=0.03
    )


def test_the_best_candidate_and_its_grid():
    out = _outputs([30] * 5, 4, 5, seed=2, agree=0.9)
    plan = plan_self_speculation(out, max_draft=5)
    assert plan.best["speed_up"] == max(r["speed_up"] for r in plan.rows)
    grid = plan.speed_up_grid()
    assert grid.shape == (3, 5) and not bool(torch.isnan(grid).any())
    assert "memory-bound" in plan.to_text() and " *" in plan.to_text()


def test_bad_inputs_are_named(real_outputs):
    with pytest.raises(ValueError, match="`groups` and `positions`"):
        plan_self_speculation(real_outputs[:100])
    out = _outputs([5], 2, 3, seed=0)
    with pytest.raises(ValueError, match="`max_draft`"):
        plan_self_speculation(out, max_draft=0)
    with pytest.raises(ValueError, match="`verification` to be one of"):
        plan_self_speculation(out, verification="half")
    with pytest.raises(ValueError, match="`mode` to be one of"):
        plan_self_speculation(out, mode="beam")
    assert math.isfinite(plan_self_speculation(out).best["speed_up"])


def test_cli_plan_speculation_prints_the_best_and_writes_the_plot(tmp_path, capsys):
    import json

    from exitwise.cli import main

    _outputs([20] * 6, 3, 5, seed=3).save(tmp_path / "tok.npz")
    png = tmp_path / "spec.png"
    assert (
        main(
            ["plan-speculation", str(tmp_path / "tok.npz"), "--max-draft", "4", "--plot", str(png)]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "best: draft with" in text and png.stat().st_size > 1000
    assert main(["plan-speculation", str(tmp_path / "tok.npz"), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["rows"]) == 2 * 8 and payload["mode"] == "greedy"
    plain = tmp_path / "plain.npz"
    ExitOutputs(torch.randn(10, 2, 3)).save(plain)
    assert main(["plan-speculation", str(plain)]) == 2


def test_cli_plan_speculation_prints_engine_settings(tmp_path, capsys):
    import json

    from exitwise.cli import main
    from exitwise.generation import SpeculationCosts, plan_self_speculation

    out = _outputs([25] * 8, 3, 5, seed=4, agree=0.9)
    out = ExitOutputs(
        out.logits,
        out.labels,
        [1.0, 2.0, 6.0],
        ["layer1", "layer2", "layer6"],
        groups=out.groups,
        positions=out.positions,
    )
    out.save(tmp_path / "tok.npz")
    cheap = SpeculationCosts(1.0, (0.1, 0.2), verify_base=1.0, verify_per_token=0.01)
    busy = SpeculationCosts(1.0, (0.6, 0.7), verify_base=0.1, verify_per_token=0.9, batch_size=32)
    cheap.save(tmp_path / "b1.json")
    busy.save(tmp_path / "b32.json")
    base = ["plan-speculation", str(tmp_path / "tok.npz"), "--max-draft", "4"]
    assert main([*base, "--format", "hf", "--latency", str(tmp_path / "b1.json")]) == 0
    hf = json.loads(capsys.readouterr().out)
    best = plan_self_speculation(out, 4, costs=cheap).best
    assert hf["generate_kwargs"] == {
        "assistant_early_exit": best["draft_exit"] + 1,
        "do_sample": False,
    }
    assert hf["generation_config"]["num_assistant_tokens"] == best["draft_length"]
    latency = ["--latency", str(tmp_path / "b1.json"), "--latency", str(tmp_path / "b32.json")]
    assert main([*base, "--format", "vllm", *latency]) == 0
    vllm = json.loads(capsys.readouterr().out)
    assert vllm["num_speculative_tokens_per_batch_size"][1] == [32, 2**31 - 1, 0]
    assert main([*base, "--format", "trtllm", *latency]) == 0
    assert json.loads(capsys.readouterr().out)["draft_len_schedule"]["32"] == 0
    assert main([*base, "--thresholds", "0.5", "0.9", "--calibrate", "0.5"]) == 0
    assert "0.90" in capsys.readouterr().out
    assert main([*base, "--format", "vllm"]) == 2
    assert "needs --latency" in capsys.readouterr().err


def _expected_counts(alpha, confident, k):
    """Expected verifications and draft steps of one sequence, literally: from p a round
    drafts m = min(k, drafts until the first unconfident one (included), t - p - 1) tokens,
    accepts j < m of them with probability alpha_p ... alpha_{p+j-1} (1 - alpha_{p+j}) and
    all m with alpha_p ... alpha_{p+m-1}; then it goes on from p + j + 1."""
    t = len(alpha)
    v, s = [0.0] * (t + 1), [0.0] * (t + 1)
    for p in range(t - 1, -1, -1):
        m = 0
        while m < min(k, t - p - 1):
            m += 1
            if not confident[p + m - 1]:
                break
        total_v, total_s, alive = 0.0, float(m), 1.0
        for j in range(m + 1):
            weight = alive * (1.0 - alpha[p + j]) if j < m else alive
            total_v += weight * v[p + j + 1]
            total_s += weight * s[p + j + 1]
            if j < m:
                alive *= alpha[p + j]
        v[p], s[p] = 1.0 + total_v, total_s
    return v[0], s[0]


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    k=st.integers(1, 5),
    tau=st.floats(0.0, 1.0),
)
def test_sampling_plan_equals_the_recursion_per_sequence(lengths, seed, k, tau):
    out = _outputs(lengths, 3, 4, seed, 0.6)
    alpha = acceptance(out, "sampling")
    confidence = torch.softmax(out.logits.double(), -1).amax(-1)
    k = min(k, max(lengths))  # longer drafts are capped (with a warning)
    plan = plan_self_speculation(out, max_draft=k, mode="sampling", thresholds=[tau])
    for d in range(2):
        for threshold in (None, tau):
            verifs = drafts = 0.0
            for grp in out.groups.unique():
                rows = torch.nonzero(out.groups == grp).flatten()
                rows = rows[torch.argsort(out.positions[rows])]
                ok = [threshold is None or float(c) >= tau for c in confidence[rows, d]]
                v, s = _expected_counts(alpha[rows, d].tolist(), ok, k)
                verifs, drafts = verifs + v, drafts + s
            row = next(
                r
                for r in plan.rows
                if r["draft_exit"] == d and r["draft_length"] == k and r["threshold"] == threshold
            )
            assert row["tokens_per_verification"] == pytest.approx(sum(lengths) / verifs)
            assert row["draft_steps"] == pytest.approx(drafts)


def test_regression_planner_memory_is_linear_in_tokens_and_k_is_capped():
    # issue 24 item 9: one long sequence among many short ones padded every sequence to the
    # longest (190 s, 5.96 GB for 40k + 2,000 short); k beyond any sequence printed rows no
    # sequence can reach
    import tracemalloc

    g = torch.Generator().manual_seed(0)
    lengths = [20_000] + [20] * 2000
    n = sum(lengths)
    out = ExitOutputs(
        torch.randn(n, 3, 4, generator=g),
        groups=torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)),
        positions=torch.cat([torch.arange(t) for t in lengths]),
    )
    tracemalloc.start()
    plan = plan_self_speculation(out, max_draft=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    padded = len(lengths) * max(lengths) * 2 * 8  # the [S, T_max, D] float64 of before
    assert peak < padded / 20, (peak, padded)
    assert len(plan.rows) == 6
    short = ExitOutputs(
        torch.randn(60, 2, 4, generator=g),
        groups=torch.arange(60) // 20,
        positions=torch.arange(60) % 20,
    )
    with pytest.warns(UserWarning, match="longer than the longest sequence"):
        capped = plan_self_speculation(short, max_draft=200)
    assert max(r["draft_length"] for r in capped.rows) == 20
    # positions need not be small: the order is two stable sorts, not a product key
    far = ExitOutputs(short.logits, groups=short.groups, positions=short.positions + (2**31 - 100))
    assert (
        plan_self_speculation(far, max_draft=3).rows
        == plan_self_speculation(short, max_draft=3).rows
    )
