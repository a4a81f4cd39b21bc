"""OpenAI request bodies (validated at the boundary) and OpenAI-shaped errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from graphpilot.runtime.engine.request import MAX_LOGPROBS

MAX_SEED = 2**63 - 1
MAX_N = 16  # choices per prompt: each is a request of its own
MAX_STOP = 16
MAX_LOGIT_BIAS = 300

Stop = str | Annotated[list[str], Field(max_length=MAX_STOP)] | None


class APIError(Exception):
    """An error answered to the client as {"error": {...}} with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:  # fmt: skip
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str = Field(description="Only text: json_object and json_schema are not supported.")

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise ValueError(f"{value!r}: structured output is not supported, only 'text'")
        return value


class _Sampling(BaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = Field(None, description="The served model name (see /v1/models); default: that one.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="GraphPilot extension: keep the k most likely tokens (0: off).")
    n: int = Field(1, ge=1, le=MAX_N, description="Choices per prompt (1..16), each sampled on its own.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED - MAX_N)
    ignore_eos: bool = Field(False, description="GraphPilot extension: keep generating past end-of-sequence.")
    stop_token_ids: Annotated[list[int], Field(max_length=MAX_STOP)] | None = Field(
        None, description="GraphPilot extension (as vLLM): token ids that end the output, kept in it."
    )
    min_tokens: int = Field(
        0,
        ge=0,
        description="GraphPilot extension (as vLLM): no end-of-sequence, stop token or stop string before this many tokens.",
    )
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="Subtracted from the logit of every token the output holds."
    )
    frequency_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="Subtracted per time the output holds a token."
    )
    repetition_penalty: float = Field(
        1.0, gt=0.0, le=10.0,
        description="GraphPilot extension (as vLLM): a prompt or output token's logit divided by it if positive, else multiplied.",
    )  # fmt: skip
    logit_bias: Annotated[dict[str, float], Field(max_length=MAX_LOGIT_BIAS)] | None = Field(
        None, description="Token id (as a string) -> -100..100, added to its logit before sampling."
    )
    user: str | None = None
    response_format: ResponseFormat | None = Field(
        None, description='Only {"type": "text"}: structured output is not supported.'
    )

    def logprob_count(self) -> int | None:
        """How many alternatives each output token's log-probabilities list (None: none asked)."""
        return None

    def prompt_logprob_count(self) -> int | None:
        """The same for the prompt's tokens (None: none asked)."""
        return None

    def logit_bias_pairs(self) -> tuple[tuple[int, float], ...]:
        """`logit_bias` as (token id, bias); a key that is not an integer is a 400."""
        pairs = []
        for key, bias in (self.logit_bias or {}).items():
            try:
                pairs.append((int(key), bias))
            except ValueError:
                raise APIError(
                    400, f"logit_bias: keys are token ids, got {key!r}", param="logit_bias"
                ) from None
        return tuple(pairs)

    def stop_list(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)


Prompt = (
    str
    | list[int]
    | Annotated[list[str], Field(min_length=1)]
    | Annotated[list[list[int]], Field(min_length=1)]
)


class CompletionRequest(_Sampling):
    prompt: Prompt = Field(description="Text, token ids, or a list of either (one choice per prompt).")
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = Field(
        False, description="The prompt before the completion (with logprobs: the prompt's too)."
    )
    logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS,
        description="Each output token's log-probability and this many most likely tokens' (0..20).",
    )  # fmt: skip
    best_of: int | None = Field(None, ge=1, description="Not supported beyond n: null or n.")
    suffix: None = Field(None, description="Not supported: must be null.")

    def logprob_count(self) -> int | None:
        return self.logprobs

    def prompt_logprob_count(self) -> int | None:
        return self.logprobs if self.echo else None

    @model_validator(mode="after")
    def _best_of_is_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of equal to n (or null) is supported")
        return self

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)  # type: ignore[arg-type]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Default: the rest of the context.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens (newer name).")
    logprobs: bool | None = Field(None, description="Each output token's log-probability.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="With logprobs: this many most likely tokens' too (0..20)."
    )
    tools: list[Any] | None = Field(
        None, description="Tool calling is not supported: only with tool_choice none."
    )
    tool_choice: Any = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        if self.tools and self.tool_choice != "none":
            raise ValueError(
                "tools: tool calling is not supported by this server (send tool_choice: none, or no tools)"
            )
        return self

    def logprob_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class TokenizeRequest(BaseModel):
    """Exactly one of `prompt` (text) and `messages` (rendered with the chat template first)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give exactly one of prompt and messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    tokens: list[int]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
