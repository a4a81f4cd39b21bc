"""Our models against the transformers reference implementation, on the same random weights."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from graphpilot.runtime.config import ConfigError
from graphpilot.runtime.engine.request import SamplingParams
from graphpilot.runtime.models.config import ModelError
from helpers import TINY_ARCHS, forward_logits, make_engine, new_request

# fp32 on the CPU: both sides run the same math in a different op order.
ATOL = 1e-4


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_logits_match_transformers_prefill_and_decode(arch: str, hf_checkpoints: dict[str, str]) -> None:
    import transformers

    model_dir = hf_checkpoints[arch]
    reference = getattr(transformers, arch).from_pretrained(model_dir).float().eval()
    engine = make_engine(model_dir, graph_backend="off")
    ids = torch.randint(0, engine.model_config.vocab_size, (24,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids[None]).logits[0]
    req = new_request()
    prefill = forward_logits(engine, req, ids[:16].tolist())
    assert (prefill - expected[:16]).abs().max().item() < ATOL
    for t in range(16, 24):  # token by token through the KV cache
        step = forward_logits(engine, req, [int(ids[t])])
        assert (step[0] - expected[t]).abs().max().item() < ATOL, f"decode position {t}"


def test_sharded_checkpoint_loads_like_single_file(hf_checkpoints: dict[str, str], tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    src = hf_checkpoints["Qwen3ForCausalLM"]
    dst = tmp_path / "sharded"
    shutil.copytree(src, dst)
    os.remove(dst / "model.safetensors")
    tensors = load_file(os.path.join(src, "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(dst / shard))
        weight_map.update(dict.fromkeys(keys, shard))
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    a = make_engine(src, graph_backend="off").generate(["Hello world"])[0]
    b = make_engine(str(dst), graph_backend="off").generate(["Hello world"])[0]
    assert a.token_ids == b.token_ids


def test_dummy_load_needs_only_a_config(tmp_path) -> None:
    from graphpilot.runtime.models.presets import init_model

    d = init_model("tiny", str(tmp_path / "cfg"), with_weights=False)
    assert not os.path.exists(os.path.join(d, "model.safetensors"))
    engine = make_engine(d, load_format="dummy", graph_backend="off")
    out = engine.generate(["one two three"])[0]
    assert len(out.token_ids) > 0


def test_unknown_architecture_is_named(tiny_dir: str, tmp_path) -> None:
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["MixtralForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"unsupported architecture.*MixtralForCausalLM"):
        make_engine(str(d))


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_files_are_named(tiny_dir: str, tmp_path, missing: str) -> None:
    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    os.remove(d / missing)
    with pytest.raises(ModelError, match=missing):
        make_engine(str(d))


def test_missing_model_directory(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        make_engine(str(tmp_path / "nope"))


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_logprobs_are_the_models_before_temperature(
    async_scheduling: bool, hf_checkpoints: dict[str, str]
) -> None:
    """Sampled at temperature 0.8 beside a request that asks for none: each output token's
    log-probability and the 3 most likely tokens are transformers' log-softmax at that position."""
    import transformers

    model_dir = hf_checkpoints["Qwen3ForCausalLM"]
    reference = transformers.Qwen3ForCausalLM.from_pretrained(model_dir).float().eval()
    engine = make_engine(model_dir, graph_backend="eager", async_scheduling=async_scheduling)
    asked = SamplingParams(max_tokens=8, temperature=0.8, seed=3, logprobs=3, ignore_eos=True)
    plain = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    got, other = engine.generate(["Hello world", "the graph"], [asked, plain])
    assert other.logprobs is None
    assert got.logprobs is not None and [e.token_id for e in got.logprobs] == got.token_ids
    ids = torch.tensor(got.prompt_token_ids + got.token_ids)
    with torch.no_grad():
        lp = reference(ids[None]).logits[0].log_softmax(dim=-1)
    start = len(got.prompt_token_ids) - 1  # the position that predicts the first output token
    below_top = 0
    for i, e in enumerate(got.logprobs):
        row = lp[start + i]
        assert abs(e.logprob - row[e.token_id].item()) < ATOL
        top = row.topk(3)
        assert [t for t, _ in e.top] == top.indices.tolist()
        assert [v for _, v in e.top] == pytest.approx(top.values.tolist(), abs=ATOL)
        below_top += e.token_id != e.top[0][0]
    assert below_top > 0, "sampling at 0.8 should pick a token other than the most likely somewhere"


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_penalties_pick_the_greedy_token_of_the_penalised_reference_logits(
    async_scheduling: bool, hf_checkpoints: dict[str, str]
) -> None:
    """Greedy with presence, frequency and repetition penalties, beside an unpenalised request: each
    token is the argmax of transformers' logits with the penalties applied by hand to the tokens
    seen so far (an output token in flight under async scheduling included)."""
    import transformers

    model_dir = hf_checkpoints["LlamaForCausalLM"]
    reference = transformers.LlamaForCausalLM.from_pretrained(model_dir).float().eval()
    engine = make_engine(model_dir, graph_backend="eager", async_scheduling=async_scheduling)
    penalised = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, presence_penalty=0.5,
                               frequency_penalty=0.7, repetition_penalty=1.3)  # fmt: skip
    plain = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    got, other = engine.generate(["red red red blue", "red red red blue"], [penalised, plain])
    prompt = got.prompt_token_ids
    for t, token in enumerate(got.token_ids):
        with torch.no_grad():
            logits = reference(torch.tensor(prompt + got.token_ids[:t])[None]).logits[0, -1]
        seen = set(prompt + got.token_ids[:t])
        for tok in seen:
            logits[tok] = logits[tok] / 1.3 if logits[tok] > 0 else logits[tok] * 1.3
        for tok in set(got.token_ids[:t]):
            logits[tok] -= 0.5 + 0.7 * got.token_ids[:t].count(tok)
        assert token == int(logits.argmax()), f"output token {t}"
    assert got.token_ids != other.token_ids  # the penalties changed the greedy path
    assert len(set(got.token_ids)) > len(set(other.token_ids))  # ... towards fewer repeats


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_prompt_logprobs_over_chunked_prefill_are_transformers(
    async_scheduling: bool, hf_checkpoints: dict[str, str]
) -> None:
    """A 40-token prompt prefilled in chunks of at most 16 tokens, twice (the second would hit the
    prefix cache): each prompt token's log-probability and the 2 most likely, from the second token."""
    import transformers

    model_dir = hf_checkpoints["Qwen3ForCausalLM"]
    reference = transformers.Qwen3ForCausalLM.from_pretrained(model_dir).float().eval()
    engine = make_engine(model_dir, graph_backend="eager", async_scheduling=async_scheduling,
                         max_num_batched_tokens=16)  # fmt: skip
    prompt = torch.randint(
        0, engine.model_config.vocab_size, (40,), generator=torch.Generator().manual_seed(4)
    )
    params = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=2)
    with torch.no_grad():
        lp = reference(prompt[None]).logits[0].log_softmax(dim=-1)
    for _ in range(2):
        done = engine.generate([prompt.tolist()], params)[0]
        assert done.prompt_logprobs is not None and len(done.prompt_logprobs) == 39
        for pos, e in enumerate(done.prompt_logprobs, start=1):
            assert e.token_id == int(prompt[pos])
            assert abs(e.logprob - lp[pos - 1, e.token_id].item()) < ATOL
            assert [t for t, _ in e.top] == lp[pos - 1].topk(2).indices.tolist()
    assert engine.kv.pool.hit_tokens == 0  # scoring every prompt position skips the prefix cache
