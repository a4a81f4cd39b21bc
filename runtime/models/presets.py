"""Built-in model presets and `init-model`: complete Hugging Face checkpoints with random weights.

`tiny` is small enough for CPU tests; the others are real shapes (config only) for dummy loading.
Every checkpoint gets a real byte-level BPE tokenizer trained here on a seeded synthetic corpus, so
no file has to be downloaded.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from graphpilot.runtime.models.config import ModelConfig
from graphpilot.runtime.models.loader import init_dummy
from graphpilot.runtime.models.registry import build_model

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_VOCAB = 512
# ChatML, as Qwen models use; the server falls back to it when a checkpoint has no template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QWEN3 = {
    "architectures": ["Qwen3ForCausalLM"],
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "head_dim": 128,
}
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_QWEN3, "vocab_size": TINY_VOCAB, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "max_position_embeddings": 2048, "tie_word_embeddings": True, "torch_dtype": "float32",
    },
    "qwen3-0.6b": {
        **_QWEN3, "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "max_position_embeddings": 40960, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    },
    "qwen3-8b": {
        **_QWEN3, "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 12288,
        "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 40960, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
    "llama3-8b": {
        "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
        "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "max_position_embeddings": 131072, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    },
}  # fmt: skip
WEIGHTS_PRESETS = ("tiny",)  # the others are written config-only, for --load-format dummy

WORDS = [  # the synthetic corpus vocabulary (tests draw prompts from it too)
    "the",
    "a",
    "an",
    "of",
    "to",
    "in",
    "and",
    "or",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "it",
    "this",
    "that",
    "with",
    "for",
    "on",
    "at",
    "by",
    "from",
    "as",
    "not",
    "no",
    "yes",
    "we",
    "you",
    "they",
    "he",
    "she",
    "i",
    "me",
    "my",
    "our",
    "your",
    "their",
    "model",
    "graph",
    "token",
    "tokens",
    "batch",
    "bucket",
    "replay",
    "capture",
    "memory",
    "cache",
    "request",
    "requests",
    "server",
    "time",
    "fast",
    "slow",
    "small",
    "large",
    "number",
    "numbers",
    "add",
    "sum",
    "answer",
    "question",
    "what",
    "which",
    "when",
    "where",
    "why",
    "how",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "hello",
    "world",
    "day",
    "night",
    "water",
    "fire",
    "light",
    "dark",
    "red",
    "blue",
    "green",
    "house",
    "tree",
    "road",
    "city",
    "people",
    "work",
    "make",
    "take",
    "give",
    "find",
    "think",
    "know",
    "see",
    "look",
    "come",
    "go",
    "say",
    "tell",
    "ask",
    "use",
    "try",
    "call",
    "keep",
    "start",
    "stop",
    "run",
    "open",
    "close",
    "read",
    "write",
    "learn",
    "teach",
    "play",
    "move",
    "live",
    "long",
    "short",
    "high",
    "low",
    "new",
    "old",
    "first",
    "last",
    "good",
    "bad",
    "great",
    "little",
]


def synthetic_corpus(seed: int = 0, num_lines: int = 4000) -> list[str]:
    """Seeded English-like sentences, arithmetic and chat turns: enough for a realistic small BPE."""
    rng = random.Random(seed)
    lines = []
    for i in range(num_lines):
        if i % 4 == 0:
            a, b = rng.randint(0, 9999), rng.randint(0, 9999)
            lines.append(f"{a} + {b} = {a + b}")
        else:
            words = rng.choices(WORDS, k=rng.randint(4, 16))
            lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ","]))
    return lines


def train_tokenizer(vocab_size: int = TINY_VOCAB, seed: int = 0) -> Tokenizer:
    """A byte-level BPE tokenizer (GPT-2/Qwen style) trained on the synthetic corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed), trainer=trainer)
    return tok


def _hf_state_dict(model: torch.nn.Module, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our fused parameters split back into Hugging Face names."""
    kv = cfg.num_key_value_heads * cfg.head_dim
    out = {}
    for name, p in model.state_dict().items():
        t = p.detach().cpu().contiguous()
        if "qkv_proj" in name:
            for piece, part in zip(
                ("q_proj", "k_proj", "v_proj"), t.split([t.shape[0] - 2 * kv, kv, kv]), strict=True
            ):
                out["model." + name.replace("qkv_proj", piece)] = part.contiguous()
        elif "gate_up_proj" in name:
            for piece, part in zip(("gate_proj", "up_proj"), t.chunk(2), strict=True):
                out["model." + name.replace("gate_up_proj", piece)] = part.contiguous()
        elif name.startswith("lm_head"):
            out[name] = t
        else:
            out["model." + name] = t
    return out


def init_model(preset: str, out_dir: str, seed: int = 0, with_weights: bool | None = None) -> str:
    """Write a preset checkpoint (config, tokenizer, and weights for small presets) into out_dir."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    os.makedirs(out_dir, exist_ok=True)
    tok = train_tokenizer(seed=seed)
    eos = tok.token_to_id("<|endoftext|>")
    im_end = tok.token_to_id("<|im_end|>")
    cfg_dict = {
        **PRESETS[preset],
        "bos_token_id": eos,
        "eos_token_id": [eos, im_end],
        "model_type": _model_type(preset),
    }
    _write_json(os.path.join(out_dir, "config.json"), cfg_dict)
    _write_json(os.path.join(out_dir, "generation_config.json"), {"eos_token_id": [eos, im_end]})
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    _write_json(
        os.path.join(out_dir, "tokenizer_config.json"),
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE,
         "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg_dict["max_position_embeddings"]},
    )  # fmt: skip
    if with_weights if with_weights is not None else preset in WEIGHTS_PRESETS:
        cfg = ModelConfig.from_dict(cfg_dict)
        with torch.device("cpu"):
            model = build_model(cfg, "reference").to(cfg.dtype)
        init_dummy(model, seed)
        save_file(
            _hf_state_dict(model, cfg), os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"}
        )
    return out_dir


def _model_type(preset: str) -> str:
    return {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}.get(
        PRESETS[preset]["architectures"][0], "qwen3"
    )


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
