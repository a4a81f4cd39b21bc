"""Chat templates and incremental text for streaming."""

from __future__ import annotations

import json
import os
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

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
