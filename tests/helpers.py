"""Test helpers shared by the tiers: tiny checkpoints and direct forwards through the engine."""

from __future__ import annotations

import os
from typing import Any

import torch

from graphpilot.runtime.config import EngineConfig
from graphpilot.runtime.engine.context import ForwardContext
from graphpilot.runtime.engine.engine import Engine
from graphpilot.runtime.engine.request import Request, SamplingParams
from graphpilot.runtime.models.presets import PRESETS, train_tokenizer

TINY_ARCHS = {
    "LlamaForCausalLM": {"model_type": "llama", "tie_word_embeddings": False, "rope_theta": 500000.0},
    "Qwen2ForCausalLM": {"model_type": "qwen2", "tie_word_embeddings": False, "rope_theta": 1000000.0},
    "Qwen3ForCausalLM": {"model_type": "qwen3", "tie_word_embeddings": True, "rope_theta": 1000000.0},
}


def write_hf_checkpoint(arch: str, out_dir: str, seed: int = 0) -> str:
    """A tiny random checkpoint written by transformers itself (the reference implementation)."""
    import transformers

    torch.manual_seed(seed)
    base = {k: v for k, v in PRESETS["tiny"].items() if k not in ("architectures", "torch_dtype")}
    extra = TINY_ARCHS[arch]
    cfg_cls = transformers.AutoConfig.for_model(extra["model_type"]).__class__
    config = cfg_cls(**{**base, **{k: v for k, v in extra.items() if k != "model_type"}}, eos_token_id=0)
    model = getattr(transformers, arch)(config).float().eval()
    with torch.no_grad():  # larger weights than the default init, so differences would show
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.1)
    model.save_pretrained(out_dir, safe_serialization=True)
    train_tokenizer().save(os.path.join(out_dir, "tokenizer.json"))
    return out_dir


def make_engine(model_dir: str, **kw: Any) -> Engine:
    kw.setdefault("progress", False)
    kw.setdefault("max_num_batched_tokens", 256)
    return Engine(EngineConfig(model=model_dir, **kw))


@torch.inference_mode()
def forward_logits(engine: Engine, req: Request, new_tokens: list[int]) -> torch.Tensor:
    """Append tokens to req's context, run one forward, return logits for every new token."""
    req.prompt_token_ids.extend(new_tokens)
    n, end = len(new_tokens), len(req.prompt_token_ids)
    engine.kv.pool.allocate(req, n)
    meta = engine.attention_metadata([n], [end], [req.block_table])
    ids = torch.tensor(new_tokens, device=engine.device)
    pos = torch.arange(end - n, end, device=engine.device)
    hidden, _ = engine.runner.forward(ids, pos, ForwardContext(n, meta))
    req.num_computed_tokens = end
    return engine.model.compute_logits(hidden)


def new_request() -> Request:
    return Request([], SamplingParams())
