"""Incremental detokenization gives the same text as decoding the whole output."""

from __future__ import annotations

import os
import random

from tokenizers import Tokenizer

from graphpilot.runtime.engine.detokenizer import DetokState, append_text, full_text


def test_incremental_text_equals_full_decode(tiny_dir: str) -> None:
    tok = Tokenizer.from_file(os.path.join(tiny_dir, "tokenizer.json"))
    rng = random.Random(0)
    texts = ["héllo wörld — 東京 🙂 ok", "plain ascii words and numbers 12345", "ünïcödé " * 5]
    vocab = tok.get_vocab_size()
    sequences = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    sequences += [[rng.randrange(vocab) for _ in range(60)] for _ in range(20)]  # arbitrary byte splits
    for ids in sequences:
        state, out = DetokState(), []
        for t in ids:
            out.append(t)
            text = append_text(tok, out, state)
            whole = full_text(tok, out)
            assert whole.startswith(text), (text, whole)  # never text that a later token changes
            assert len(whole) - len(text) <= 4  # only an incomplete character is held back
        assert text == whole or whole.endswith("\ufffd")  # all of it, once complete
