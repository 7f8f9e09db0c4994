"""Self-speculation planned by exitwise against Hugging Face's own ``generate`` on a small
trained ``LlamaForCausalLM`` (the real client, offline): the collected logits are the ones its
early-exit assistant computes, and the plan's verification and draft passes are the ones its
run makes (counted with forward hooks)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="Hugging Face transformers is not installed (pip install exitwise[hf])"
)

from exitwise.collect import collect  # noqa: E402
from exitwise.generation import (  # noqa: E402
    AcceptanceCalibration,
    PassCounter,
    SpeculationCosts,
    own_continuations,
    plan_self_speculation,
)

EXAMPLE = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "hf_self_speculation.py"))
NEW = 40


@pytest.fixture(scope="module")
def trained():
    data = EXAMPLE["corpus"](limit=300_000)
    cut = int(0.9 * data.numel())
    model = EXAMPLE["make_model"](layers=4, width=64, seed=0)
    EXAMPLE["train"](model, data[:cut], steps=150, batch=16, window=48)
    held = data[cut:]
    return (
        model,
        EXAMPLE["prompts_from"](held, 6, 24, seed=1),
        EXAMPLE["prompts_from"](held, 6, 24, seed=2),
    )


@pytest.fixture(scope="module")
def own(trained):
    model, cal_prompts, prompts = trained
    outputs, greedy = own_continuations(model, prompts, NEW)
    calibration, _ = own_continuations(model, cal_prompts, NEW)
    return outputs, greedy, calibration


def _run(model, prompts, plan, row):
    setting = EXAMPLE["hf_setting"](plan, model, row)
    return EXAMPLE["run_hf"](model, prompts, NEW, {"x": setting})["x"]


def test_collected_logits_are_those_of_hf_early_exit(trained):
    model, _, prompts = trained
    ids = torch.stack(prompts[:2])
    out = collect(model, [(ids, ids)], exits=[1, 2, 3, 4], progress=False)
    base = model.model
    with torch.inference_mode():
        for d in (1, 2, 3, 4):
            base.config.num_hidden_layers = d  # what EarlyExitCandidateGenerator does
            try:
                hf = model(ids).logits.reshape(-1, model.config.vocab_size)
            finally:
                base.config.num_hidden_layers = 4
            assert torch.allclose(out.logits[:, d - 1], hf, atol=1e-5)


def test_planner_equals_hf_generate_for_fixed_k_and_heuristic(trained, own):
    model, _, prompts = trained
    outputs, greedy, _ = own
    assert outputs.num_samples == sum(len(g) for g in greedy) == 6 * NEW
    assert bool((outputs.predictions()[:, -1] == outputs.labels).all())
    fixed = plan_self_speculation(outputs, 5)
    heuristic = plan_self_speculation(outputs, 3, schedule="heuristic_transient")
    cases = [(fixed, 0, 1), (fixed, 0, 4), (fixed, 1, 2), (fixed, 2, 5), (heuristic, 0, 3)]
    for plan, d, k in cases:
        row = next(r for r in plan.rows if r["draft_exit"] == d and r["draft_length"] == k)
        real = _run(model, prompts, plan, row)
        assert (real["verifications"], real["draft_steps"]) == (
            row["verifications"],
            row["draft_steps"],
        )
        assert all(torch.equal(a, b) for a, b in zip(real["outputs"], greedy, strict=True))
    # "heuristic": Hugging Face keeps k on the model's generation config from call to call
    persistent = plan_self_speculation(outputs, 3, schedule="heuristic")
    row = next(r for r in persistent.rows if r["draft_exit"] == 1 and r["draft_length"] == 3)
    kwargs = persistent.to_hf_generate_kwargs(model, row=row)
    counts = [0, 0]
    for p in prompts:
        with PassCounter(model) as counter:
            model.generate(p[None], max_new_tokens=NEW, **kwargs)
        counts = [counts[0] + counter.verifications, counts[1] + counter.draft_steps]
    assert counts == [row["verifications"], row["draft_steps"]]


def test_adaptive_drafting_within_five_percent_and_calibrated(trained, own):
    model, _, prompts = trained
    outputs, greedy, cal_outputs = own
    calibration = AcceptanceCalibration.fit(cal_outputs)
    assert bool((calibration.calibration_error(outputs) < 0.25).all())
    plan = plan_self_speculation(outputs, 4, thresholds=[0.6, 0.9], calibration=calibration)
    rows = [r for r in plan.rows if r["threshold"] is not None and r["draft_length"] == 4]
    assert any(0.0 < r["confidence_threshold"] < 1.0 for r in rows)
    for row in rows:
        tau = row["confidence_threshold"]  # the raw confidence whose acceptance is the threshold
        assert tau == calibration.confidence_threshold(row["threshold"], row["draft_exit"])
        real = _run(model, prompts, plan, row)
        assert real["verifications"] == pytest.approx(row["verifications"], rel=0.05)
        assert real["draft_steps"] == pytest.approx(row["draft_steps"], rel=0.05)
        assert all(torch.equal(a, b) for a, b in zip(real["outputs"], greedy, strict=True))


def test_hf_kwargs_round_trip_and_change_the_run(trained, own):
    model, _, prompts = trained
    outputs, _, _ = own
    plan = plan_self_speculation(outputs, 4, thresholds=[0.6])
    row = next(r for r in plan.rows if r["threshold"] == 0.6 and r["draft_length"] == 3)
    kwargs = plan.to_hf_generate_kwargs(model, row=row)
    config = model.generation_config
    assert kwargs == {"assistant_early_exit": row["draft_exit"] + 1, "do_sample": False}
    assert (config.num_assistant_tokens, config.num_assistant_tokens_schedule) == (3, "constant")
    assert config.assistant_confidence_threshold == pytest.approx(0.6)
    again = transformers.GenerationConfig.from_dict(config.to_dict())
    again.update(**kwargs)
    again.validate()
    assert (again.num_assistant_tokens, again.assistant_early_exit) == (3, row["draft_exit"] + 1)
    passes = {}
    for k in (1, 4):
        r = next(r for r in plan.rows if r["threshold"] is None and r["draft_length"] == k)
        passes[k] = _run(model, prompts[:2], plan, r)["verifications"]
    assert passes[1] > passes[4]  # the plan's k really reaches Hugging Face's run


def test_engine_schedules_have_the_documented_keys_and_types(own):
    outputs, _, _ = own
    plan = plan_self_speculation(outputs, 4)
    cheap = SpeculationCosts(1.0, (0.1, 0.2, 0.3), verify_base=1.0, verify_per_token=0.0)
    busy = SpeculationCosts(1.0, (0.6, 0.7, 0.8), verify_base=0.1, verify_per_token=0.9)
    vllm = plan.to_vllm({1: cheap, 8: cheap, 64: busy}, draft_exit=0)
    assert set(vllm) == {"num_speculative_tokens", "num_speculative_tokens_per_batch_size"}
    ranges = vllm["num_speculative_tokens_per_batch_size"]
    assert all(isinstance(x, int) for r in ranges for x in r) and len(ranges) == 3
    assert [r[0] for r in ranges] == [1, 8, 64] and ranges[0][1] == 7 and ranges[1][1] == 63
    assert ranges[2][2] == 0 and ranges[0][2] >= 1
    assert vllm["num_speculative_tokens"] == max(r[2] for r in ranges)
    trt = plan.to_trtllm({1: cheap, 64: busy}, draft_exit=0)
    assert set(trt) == {"max_draft_len", "draft_len_schedule"}
    assert trt["draft_len_schedule"][64] == 0 and trt["max_draft_len"] >= 1
    assert all(
        isinstance(b, int) and isinstance(k, int) for b, k in trt["draft_len_schedule"].items()
    )


def test_measured_costs(trained, tmp_path):
    from exitwise.generation import measure_speculation_costs

    model, cal_prompts, _ = trained
    forward = measure_speculation_costs(
        model, cal_prompts[:2], loop="forward", batch_size=2, max_width=3, repeats=3
    )
    assert len(forward.draft_steps) == 3 and forward.batch_size == 2
    assert forward.plain_step > 0 and forward.round_overhead == 0.0
    hf = measure_speculation_costs(model, cal_prompts[:2], new_tokens=8, max_width=3, repeats=3)
    assert hf.plain_step > 0 and len(hf.draft_steps) == 3
    hf.save(tmp_path / "costs.json")
    assert SpeculationCosts.load(tmp_path / "costs.json") == hf
    with pytest.raises(ValueError, match="`calibrate`"):
        measure_speculation_costs(model, cal_prompts[:1], new_tokens=4, calibrate=1)
    with pytest.raises(ValueError, match="batch 1"):
        measure_speculation_costs(model, cal_prompts[:1], batch_size=2)
