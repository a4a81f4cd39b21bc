"""Weights into a model: Hugging Face safetensors (single or sharded), or random ("dummy") on device."""

from __future__ import annotations

import json
import os
import time

import torch
from safetensors import safe_open
from torch import nn

from graphpilot.runtime.models.config import ModelConfig, ModelError
from graphpilot.runtime.progress import Progress

# checkpoint name piece -> (our fused parameter, shard index)
_PACKED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a checkpoint (sharded through model.safetensors.index.json)."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, s) for s in shards]
    else:
        files = sorted(
            os.path.join(model_dir, f) for f in os.listdir(model_dir) if f.endswith(".safetensors")
        )
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        detail = f" (missing {missing})" if missing else "; --load-format dummy makes random weights"
        raise ModelError(f"no model.safetensors weights in {model_dir}{detail}")
    return files


def _shard_sizes(cfg: ModelConfig, fused: str) -> list[int]:
    if fused == "qkv_proj":
        kv = cfg.num_key_value_heads * cfg.head_dim
        return [cfg.num_attention_heads * cfg.head_dim, kv, kv]
    return [cfg.intermediate_size, cfg.intermediate_size]


def load_safetensors(model: nn.Module, cfg: ModelConfig, model_dir: str, progress: bool = True) -> None:
    """Copy every checkpoint tensor into its (possibly fused) parameter; fail on anything missing."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    files = checkpoint_files(model_dir)
    bar = Progress("loading weights", enabled=progress and len(files) > 1)
    for i, path in enumerate(files):
        bar.update(i + 1, len(files), os.path.basename(path))
        with safe_open(path, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                target = _load_one(params, cfg, name.removeprefix("model."), f.get_tensor(name))
                if target:
                    loaded.add(target)
    missing = {p for p in params if p not in loaded and not _all_shards(p, loaded, cfg)}
    if missing:
        raise ModelError(f"checkpoint in {model_dir} lacks weights for: {sorted(missing)[:5]}")


def _load_one(
    params: dict[str, nn.Parameter], cfg: ModelConfig, name: str, tensor: torch.Tensor
) -> str | None:
    if "rotary_emb" in name:
        return None
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
        return None
    for piece, (fused, idx) in _PACKED.items():
        if f".{piece}." in name:
            target = name.replace(piece, fused)
            sizes = _shard_sizes(cfg, fused)
            start = sum(sizes[:idx])
            params[target].data[start : start + sizes[idx]].copy_(tensor)
            return f"{target}#{idx}"
    if name not in params:
        raise ModelError(f"unexpected weight {name!r} in checkpoint")
    if params[name].shape != tensor.shape:
        raise ModelError(
            f"weight {name!r} has shape {tuple(tensor.shape)}, expected {tuple(params[name].shape)}"
        )
    params[name].data.copy_(tensor)
    return name


def _all_shards(param: str, loaded: set[str], cfg: ModelConfig) -> bool:
    fused = next((f for f in ("qkv_proj", "gate_up_proj") if f".{f}." in param), None)
    return fused is not None and all(f"{param}#{i}" in loaded for i in range(len(_shard_sizes(cfg, fused))))


@torch.no_grad()
def init_dummy(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Random weights made directly on the model's device (no files): norms at 1, the rest N(0, std)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.fill_(1.0)
        else:
            p.normal_(0.0, std, generator=gen)


def load_model_weights(
    model: nn.Module, cfg: ModelConfig, model_dir: str, load_format: str, seed: int, progress: bool = True
) -> float:
    """Load weights and return the seconds it took (device work included)."""
    start = time.perf_counter()
    if load_format == "dummy":
        init_dummy(model, seed)
    else:
        load_safetensors(model, cfg, model_dir, progress)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start
