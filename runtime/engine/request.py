"""A request's lifecycle: tokens, sampling parameters, KV blocks, and why it finished."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import NamedTuple

from graphpilot.runtime.engine.detokenizer import DetokState

_ids = itertools.count()
MAX_LOGPROBS = 20  # the most alternatives a token's log-probabilities list (OpenAI's limit)


class SamplingError(ValueError):
    """Invalid sampling parameters; the message names the parameter and the allowed range."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; k: each output token's log-probability and the k most likely
    presence_penalty: float = 0.0  # subtracted from the logit of every token the output holds (OpenAI)
    frequency_penalty: float = 0.0  # ... times the number of times the output holds it (OpenAI)
    repetition_penalty: float = 1.0  # a prompt or output token's logit: / r when positive, * r otherwise
    prompt_logprobs: int | None = None  # None: off; k: each prompt token's log-probability (from the 2nd)
    stop_token_ids: tuple[int, ...] = ()  # tokens that end the output (kept in it), as end-of-sequence does
    min_tokens: int = 0  # no end-of-sequence, stop token or stop string before this many output tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, -100..100) added to its sampled logit

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise SamplingError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise SamplingError(f"temperature must be within 0..100, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingError(f"top_p must be within (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not 0 <= k <= MAX_LOGPROBS:
                raise SamplingError(f"{name} must be within 0..{MAX_LOGPROBS}, got {k}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise SamplingError(f"{name} must be within -2..2, got {getattr(self, name)}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise SamplingError(
                f"min_tokens must be within 0..max_tokens ({self.max_tokens}), got {self.min_tokens}"
            )
        if any(not -100.0 <= bias <= 100.0 for _, bias in self.logit_bias):
            raise SamplingError("logit_bias values must be within -100..100")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise SamplingError(f"repetition_penalty must be within (0, 10], got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0


class TokenLogprob(NamedTuple):
    """An output token's log-probability under the model (before temperature, top-k and top-p, as
    OpenAI and vLLM report it) and the `SamplingParams.logprobs` most likely tokens, most likely first."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    prompt_token_ids: list[int]
    params: SamplingParams
    request_id: str = field(default_factory=lambda: f"req-{next(_ids)}")
    output_token_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: str | None = None  # stop | length | abort
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)
    num_preemptions: int = 0
    output_text: str = ""
    output_logprobs: list[TokenLogprob] = field(default_factory=list)  # with `params.logprobs`
    # prompt tokens 1.. (`params.prompt_logprobs`)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    prefix_keys: list[bytes] = field(default_factory=list)  # of its full prompt blocks (`kv_cache`)
    num_cached_blocks: int = 0  # leading blocks of block_table that the prefix cache holds
    detok: DetokState = field(default_factory=DetokState)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    def token_ids(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without concatenating the two lists."""
        p = len(self.prompt_token_ids)
        if start >= p:
            return self.output_token_ids[start - p : end - p]
        if end <= p:
            return self.prompt_token_ids[start:end]
        return self.prompt_token_ids[start:] + self.output_token_ids[: end - p]

    @property
    def at_max_tokens(self) -> bool:
        """All `max_tokens` output tokens are out (the last one may still be in flight)."""
        return len(self.output_token_ids) >= self.params.max_tokens

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
