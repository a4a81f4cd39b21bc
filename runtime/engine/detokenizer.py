"""Incremental detokenization: each step decodes a few tokens, not the whole output.

The usual offsets trick (as in TGI and vLLM): decode a short window that starts a few tokens back
(`prefix`) twice, with and without the new tokens, and append the difference. A window ending in an
incomplete UTF-8 sequence decodes to U+FFFD; its text is held back until the next token completes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer


@dataclass
class DetokState:
    text: str = ""
    prefix: int = 0  # output index where the decode window starts
    read: int = 0  # output tokens whose text is already in `text`


def append_text(tokenizer: Tokenizer, ids: list[int], state: DetokState) -> str:
    """The output text so far, after `ids` (all output token ids) grew by one or more tokens."""
    before = tokenizer.decode(ids[state.prefix : state.read], skip_special_tokens=True)
    after = tokenizer.decode(ids[state.prefix :], skip_special_tokens=True)
    if len(after) > len(before) and not after.endswith("\ufffd"):
        state.text += after[len(before) :]
        state.prefix, state.read = state.read, len(ids)
    return state.text


def full_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The whole output decoded at once (at finish: flushes an incomplete trailing character)."""
    return tokenizer.decode(ids, skip_special_tokens=True)
