"""Chat templates, incremental text for streaming, and tokens as logprobs report them."""

from __future__ import annotations

import json
import os
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from graphpilot.runtime.engine.request import TokenLogprob

MIN_LOGPROB = -9999.0  # JSON has no -inf: a token of probability 0 reports this (as OpenAI does)

# ChatML (as Qwen models use): the template when a checkpoint's tokenizer_config.json has none.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TemplateError(ValueError):
    """The chat template refused the messages (the server answers 400)."""


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """The checkpoint's Jinja chat template, rendered in a sandbox."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        env.globals["raise_exception"] = _raise
        self.template = env.from_string(source)
        self.special = {"bos_token": bos_token, "eos_token": eos_token}

    @classmethod
    def from_model_dir(cls, model_dir: str) -> ChatTemplate:
        path = os.path.join(model_dir, "tokenizer_config.json")
        cfg: dict[str, Any] = {}
        if os.path.isfile(path):
            with open(path) as f:
                cfg = json.load(f)
        source = cfg.get("chat_template") or DEFAULT_CHAT_TEMPLATE
        if isinstance(source, list):  # named templates: take the default one
            source = next(
                (t["template"] for t in source if t.get("name") == "default"), DEFAULT_CHAT_TEMPLATE
            )
        return cls(source, _token(cfg.get("bos_token")), _token(cfg.get("eos_token")))

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, **self.special)
        except TemplateError:
            raise
        except jinja2.TemplateError as e:
            raise TemplateError(f"the chat template failed on these messages: {e}") from e


def _token(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<s>", ...}
        return str(value.get("content", ""))
    return str(value or "")


class TextDelta:
    """Turns 'whole output text so far' into deltas that never need to be taken back.

    A stop string cuts text off once it is complete, so the last `len(longest stop) - 1` characters are
    held back until the request finishes; so is a trailing U+FFFD, the mark of a partly decoded UTF-8
    character.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.holdback = max((len(s) for s in stop), default=1) - 1
        self.sent = 0
        self.text = ""

    def update(self, text: str, finished: bool) -> str:
        self.text = text
        end = len(text)
        if not finished:
            end -= self.holdback
            while end > self.sent and text[end - 1] == "\ufffd":
                end -= 1
        if end <= self.sent:
            return ""
        delta, self.sent = text[self.sent : end], end
        return delta


def _byte_level_bytes() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2, Qwen, Llama 3): the character that stands for each byte."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in kept}
    for n, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + n)
    return {c: b for b, c in chars.items()}


_BYTE_OF = _byte_level_bytes()


class TokenText:
    """Token ids as the text and UTF-8 bytes that logprobs report. A byte-level BPE token is its
    exact bytes (part of a character, too, which `bytes` keeps and the text shows as U+FFFD); other
    tokenizers' tokens are decoded one at a time."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.byte_level = type(tokenizer.decoder).__name__ == "ByteLevel"
        self._cache: dict[int, bytes] = {}

    def bytes(self, token_id: int) -> bytes:
        got = self._cache.get(token_id)
        if got is None:
            piece = self.tokenizer.id_to_token(token_id) if self.byte_level else None
            if piece is not None and all(c in _BYTE_OF for c in piece):
                got = bytes(_BYTE_OF[c] for c in piece)
            else:
                got = self.tokenizer.decode([token_id], skip_special_tokens=False).encode()
            self._cache[token_id] = got
        return got

    def text(self, token_id: int) -> str:
        return self.bytes(token_id).decode("utf-8", errors="replace")

    def completion(
        self, entries: list[TokenLogprob], offset: int = 0, lead: int | None = None
    ) -> dict[str, Any]:
        """/v1/completions' `logprobs`: tokens, their log-probabilities, for each the sampled and the
        most likely tokens by text, and each token's offset in the text from `offset`. `lead`: a
        first token without a log-probability (an echoed prompt's first), null in each list."""
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        if lead is not None:
            text = self.text(lead)
            out["tokens"].append(text)
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            out["text_offset"].append(offset)
            offset += len(text)
        for e in entries:
            text = self.text(e.token_id)
            top = {text: _finite(e.logprob)}
            for tid, lp in e.top:
                top.setdefault(self.text(tid), _finite(lp))
            out["tokens"].append(text)
            out["token_logprobs"].append(_finite(e.logprob))
            out["top_logprobs"].append(top)
            out["text_offset"].append(offset)
            offset += len(text)
        return out

    def chat(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """/v1/chat/completions' `logprobs`: {"content": [token, logprob, bytes, top_logprobs]}."""
        return {
            "content": [
                {
                    **self._entry(e.token_id, e.logprob),
                    "top_logprobs": [self._entry(t, lp) for t, lp in e.top],
                }
                for e in entries
            ]
        }

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        raw = self.bytes(token_id)
        return {
            "token": raw.decode("utf-8", errors="replace"),
            "logprob": _finite(logprob),
            "bytes": list(raw),
        }


def _finite(logprob: float) -> float:
    return max(logprob, MIN_LOGPROB)
