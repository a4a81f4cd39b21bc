"""The engine: model + KV cache + scheduler + graph runner + sampler, one `step()` at a time.

Thread-safe for one stepping thread and any number of callers of add_request/abort/apply_profile.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

from graphpilot.runtime.config import ConfigError, EngineConfig
from graphpilot.runtime.engine.context import (
    AttentionMetadata,
    ForwardContext,
    StepInputs,
    build_step_inputs,
)
from graphpilot.runtime.engine.detokenizer import append_text, full_text
from graphpilot.runtime.engine.kv_cache import KVCache, bytes_per_token
from graphpilot.runtime.engine.request import Request, SamplingError, SamplingParams, Status, TokenLogprob
from graphpilot.runtime.engine.scheduler import ScheduledBatch, Scheduler
from graphpilot.runtime.engine.stats import StepLog
from graphpilot.runtime.graphs.runner import ApplyResult, GraphRunner, Route
from graphpilot.runtime.kernels import HAS_TRITON
from graphpilot.runtime.layers.sampler import Sampler, on_device
from graphpilot.runtime.models.config import ModelError, load_model_config
from graphpilot.runtime.models.loader import load_model_weights
from graphpilot.runtime.models.registry import build_model
from graphpilot.runtime.profile import mixed_step_knee
from graphpilot.runtime.progress import Progress

log = logging.getLogger(__name__)
Logprobs = tuple[torch.Tensor, torch.Tensor]  # `Sampler.logprobs`: [b, 1 + k] values, [b, k] token ids
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CPU_DEFAULT_KV_TOKENS = 16384


class RequestError(ValueError):
    """A request the engine cannot serve; the message says why (the server answers 400)."""


@dataclass
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    text: str  # the whole output text so far (stop strings cut off)
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    logprobs: list[TokenLogprob] | None = None  # of `new_token_ids`, when the request asked for them
    # with the first output token, when the request asked: prompt tokens 1.. (the first has none)
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class Completion:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None = None  # one per token id, when the request asked for them
    prompt_logprobs: list[TokenLogprob] | None = None  # prompt tokens 1.., when the request asked


@dataclass
class _InFlight:
    """A step launched on the device whose sampled tokens the host has not read yet (async scheduling)."""

    batch: ScheduledBatch
    route: Route
    sample_reqs: list[Request]
    tokens: torch.Tensor | None  # [num_sampled] on the device
    host: torch.Tensor | None  # their host copy, valid once `done` has passed
    logprobs: Logprobs | None  # host copies too (`Sampler.logprobs`), where a request asked for them
    prompt_logprobs: PromptLogprobs | None  # host copies, where a prefilling request asked for them
    done: Any  # torch.cuda.Event, or None on the CPU
    start: float


@dataclass
class PromptLogprobs:
    """Log-probabilities of prompt tokens computed by one step: for each row, the request and the
    prompt position whose token it scores, with `Sampler.logprobs` of those rows."""

    targets: list[tuple[Request, int]]
    logprobs: Logprobs


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.device = _resolve_device(config.device)
        self.model_config = load_model_config(config.model)
        self.dtype = _resolve_dtype(config.dtype, self.model_config.dtype, self.device)
        self.tokenizer = _load_tokenizer(config.model)
        self.eos_token_ids = set(self.model_config.eos_token_ids) | _generation_eos(config.model)
        torch.manual_seed(config.seed)
        if self.device.type == "cuda":
            # cuDNN's SDPA builds an execution plan per new shape (about 1.5 ms of host time per call,
            # measured): decode shapes change every step, so prefer the flash/efficient kernels.
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.attn_backend = _resolve_attention_backend(
            config.attention_backend, self.device, self.model_config
        )
        with torch.device(self.device):
            self.model = build_model(self.model_config, self.attn_backend).to(self.dtype).eval()
        fmt = "dummy" if config.load_format == "dummy" else "safetensors"
        self.load_seconds = load_model_weights(
            self.model, self.model_config, config.model, fmt, config.seed, config.progress
        )
        log.info("weights loaded", extra={"seconds": round(self.load_seconds, 2), "format": fmt})
        if config.gemm_backend == "auto" and self.attn_backend == "triton":
            start = time.perf_counter()
            self.model.gemm.tune(self.model.linear_weights(), self.model.gated_weights())
            log.info("gemm kernels measured", extra={
                "seconds": round(time.perf_counter() - start, 2), "skinny": len(self.model.gemm.skinny),
                "gated": len(self.model.gemm.gated),
                "measured": len(self.model.gemm.measured)})  # fmt: skip
        on_cuda = self.device.type == "cuda"
        self.async_scheduling = on_cuda if config.async_scheduling is None else config.async_scheduling
        self.kv = self._allocate_kv_cache()
        self.max_model_len = min(
            config.max_model_len or self.model_config.max_position_embeddings, self.kv.pool.capacity_tokens
        )
        mc = self.model_config
        decode_round = 0
        if self.attn_backend == "triton":  # a decode program per (request, KV head), a request's side by side
            from graphpilot.runtime.kernels.launch import num_sms

            decode_round = num_sms(self.device) // mc.num_key_value_heads
        self.scheduler = Scheduler(
            self.kv.pool, config.max_num_batched_tokens, config.max_running_requests, config.mixed_step_tokens,
            decode_round,
        )  # fmt: skip
        self.sampler = Sampler(self.device, config.seed)
        self.step_log = StepLog()
        self.requests: dict[str, Request] = {}
        self.counters: dict[str, int] = {"prompt_tokens": 0, "generation_tokens": 0}
        self.finished_counts: dict[str, int] = {}
        self._lock = threading.RLock()
        self._inflight: _InFlight | None = None
        self._resolved_at = 0.0
        backend = config.graph_backend
        if backend == "auto":
            backend = "cuda" if self.device.type == "cuda" else "eager"
        self.paged_group = (
            mc.num_attention_heads // mc.num_key_value_heads if self.attn_backend == "triton" else None
        )
        self.runner = GraphRunner(
            self.model, backend, config.max_num_batched_tokens, config.graph_max_padding_ratio, self.device,
            config.block_size, self.paged_group,
        )  # fmt: skip
        if backend != "off":
            self.capture(config.buckets)

    # ---- set-up ------------------------------------------------------------------------------------

    def _allocate_kv_cache(self) -> KVCache:
        mc, cfg = self.model_config, self.config
        per_token = bytes_per_token(mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, self.dtype)
        if cfg.max_total_tokens is not None:
            num_tokens = cfg.max_total_tokens
        elif self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = int(total * cfg.mem_fraction_static) - (total - free)
            if budget < per_token * cfg.block_size * 2:
                raise ConfigError(
                    f"mem_fraction_static {cfg.mem_fraction_static} leaves no room for the KV cache "
                    f"({(total - free) / 2**30:.1f} GiB already used of {total / 2**30:.1f} GiB)"
                )
            num_tokens = budget // per_token
        else:
            num_tokens = CPU_DEFAULT_KV_TOKENS
        num_blocks = num_tokens // cfg.block_size + 1  # +1: the scratch block
        return self._bind(
            KVCache(
                mc.num_hidden_layers,
                num_blocks,
                cfg.block_size,
                mc.num_key_value_heads,
                mc.head_dim,
                self.dtype,
                self.device,
                cfg.enable_prefix_caching,
            )
        )

    def _bind(self, kv: KVCache) -> KVCache:
        for layer, attn in enumerate(self.model.attention_layers()):
            attn.bind_cache(kv.k[layer], kv.v[layer])
        return kv

    def capture(self, buckets: Sequence[int]) -> ApplyResult:
        """Capture a bucket set now (blocking, with progress), e.g. at start-up."""
        progress = Progress("capturing graphs", enabled=self.config.progress)
        self.runner.progress = progress.update
        with self._lock:
            self.runner.request(tuple(buckets))
            result = self._advance_capture() or self.runner.last_apply
        progress.close()
        assert result is not None
        return result

    def _advance_capture(self, budget_seconds: float = float("inf")) -> ApplyResult | None:
        """Capture pending buckets; once a new set is in, re-measure the mixed-step token budget."""
        result = self.runner.advance(budget_seconds)
        applied = result is not None and result.result == "applied"
        if applied and self.config.mixed_step_tokens is None and self.runner.backend == "cuda":
            replay = {b: s.replay_seconds for b, s in self.runner.bucket_stats.items()}
            knee = mixed_step_knee(replay, self.config.max_num_batched_tokens)
            if knee != self.scheduler.mixed_step_tokens:
                log.info("mixed-step token budget", extra={"tokens": knee})
            self.scheduler.mixed_step_tokens = knee
        return result

    # ---- requests ----------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def add_request(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> str:
        """Queue a request; raise RequestError when it cannot be served."""
        params = params or SamplingParams()
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self._validate(ids, params)
        req = Request(ids, params) if request_id is None else Request(ids, params, request_id)
        with self._lock:
            if req.request_id in self.requests:
                raise RequestError(f"request id {req.request_id!r} is already in use")
            self.requests[req.request_id] = req
            self.scheduler.add(req)
        return req.request_id

    def _validate(self, ids: list[int], params: SamplingParams) -> None:
        if not ids:
            raise RequestError("the prompt is empty")
        vocab = self.model_config.vocab_size
        bias_ids = [t for t, _ in params.logit_bias]
        for what, tokens in (("prompt token ids", ids), ("stop_token_ids", params.stop_token_ids),
                             ("logit_bias token ids", bias_ids)):  # fmt: skip
            if any(not 0 <= t < vocab for t in tokens):
                raise RequestError(f"{what} must be within 0..{vocab - 1}")
        if len(ids) + params.max_tokens > self.max_model_len:
            raise RequestError(
                f"this model's maximum context length is {self.max_model_len} tokens; the request "
                f"needs {len(ids) + params.max_tokens} ({len(ids)} in the prompt, {params.max_tokens} to generate)"
            )

    def abort(self, request_id: str) -> bool:
        """Stop a request and free its KV blocks; False if it is unknown or already finished."""
        with self._lock:
            req = self.requests.pop(request_id, None)
            if req is None:
                return False
            if req.output_token_ids and req.output_token_ids[-1] < 0:
                req.output_token_ids.pop()  # its in-flight token is dropped
            self._finish(req, "abort")
            return True

    def _totals(self) -> tuple[int, int, int]:
        """Running totals the step log keeps per step: preemptions, prefix-cache query and hit tokens."""
        pool = self.kv.pool
        return self.scheduler.num_preemptions, pool.query_tokens, pool.hit_tokens

    def reset_prefix_cache(self) -> int:
        """Forget every cached prompt prefix; returns how many cached blocks were forgotten."""
        with self._lock:
            forgotten = len(self.kv.pool.cached)
            self.kv.pool.reset_prefix_cache()
            return forgotten

    def has_unfinished(self) -> bool:
        with self._lock:
            return self.scheduler.has_unfinished() or self.runner.capturing or self._inflight is not None

    # ---- profile -----------------------------------------------------------------------------------

    def apply_profile(
        self, buckets: Sequence[int], on_done: Callable[[ApplyResult], None] | None = None
    ) -> None:
        """Start a live retune; captures run between steps and `on_done` gets the result."""
        with self._lock:
            self.runner.request(tuple(buckets), on_done)

    # ---- stepping ----------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one forward over the scheduled batch; return the requests that got tokens or finished.

        With `async_scheduling` a step launches the next batch before it reads the previous one's
        tokens, so it returns the outputs of the step before (and the last call drains it).
        """
        if self.async_scheduling:
            return self._step_async()
        with self._lock, torch.inference_mode():
            if self.runner.capturing:
                self._advance_capture(budget_seconds=0.05)
            batch = self.scheduler.schedule()
            if batch is None:
                return []
            start = time.perf_counter()
            sample_reqs, tokens, route, lps, plps = self._launch(batch, None)
            token_ids = [] if tokens is None else tokens.tolist()
            seconds = time.perf_counter() - start
            for req, n in zip(batch.requests, batch.num_new_tokens, strict=True):
                req.num_computed_tokens += n
            _record_prompt_logprobs(plps)
            rows = _logprob_rows(sample_reqs, token_ids, lps)
            outputs = [
                self._append(req, tok, lp) for req, tok, lp in zip(sample_reqs, token_ids, rows, strict=True)
            ]
            self.step_log.append(
                batch.num_tokens, route.bucket, route.reason, seconds, len(token_ids), self._totals()
            )
            return outputs

    def step_inputs(
        self,
        token_ids: list[int] | None,
        query_lens: list[int],
        context_lens: list[int],
        block_tables: list[list[int]],
        sample_rows: Sequence[int] = (),
    ) -> StepInputs:
        """Device inputs of one forward in the layout this engine's attention backend reads."""
        return build_step_inputs(
            token_ids, query_lens, context_lens, block_tables, self.kv.pool.block_size, self.device,
            self.paged_group, sample_rows,
        )  # fmt: skip

    def attention_metadata(
        self, query_lens: list[int], context_lens: list[int], block_tables: list[list[int]]
    ) -> AttentionMetadata:
        return self.step_inputs(None, query_lens, context_lens, block_tables).attn

    def _launch(
        self, batch: ScheduledBatch, prev_tokens: torch.Tensor | None
    ) -> tuple[list[Request], torch.Tensor | None, Route, Logprobs | None, PromptLogprobs | None]:
        """Queue the batch's forward and sampling on the device; the sampled ids (and the
        log-probabilities that requests asked for, of their outputs and prompts) stay there.

        A token id -(i + 1) is a placeholder for the i-th token sampled by the step still in flight
        (`prev_tokens`): it is filled in on the device, so the host need not wait for it.
        """
        ids: list[int] = []
        context_lens, tables, sample_rows, sample_reqs = [], [], [], []
        prompt_rows: list[int] = []
        prompt_targets: list[tuple[Request, int]] = []
        placeholders = False
        for req, n in zip(batch.requests, batch.num_new_tokens, strict=True):
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            if req.params.prompt_logprobs is not None:  # rows whose next token is a prompt token
                for pos in range(start, min(end, req.num_prompt_tokens - 1)):
                    prompt_rows.append(len(ids) + pos - start)
                    prompt_targets.append((req, pos + 1))
            ids.extend(req.token_ids(start, end))
            placeholders = placeholders or bool(req.output_token_ids and req.output_token_ids[-1] < 0)
            context_lens.append(end)
            tables.append(req.block_table)
            if end == req.num_tokens:  # all known tokens are in: sample the next one
                sample_rows.append(len(ids) - 1)
                sample_reqs.append(req)
        inputs = self.step_inputs(ids, batch.num_new_tokens, context_lens, tables, sample_rows)
        input_ids = inputs.input_ids
        if placeholders:
            assert prev_tokens is not None, "a placeholder token without a step in flight"
            input_ids = torch.where(input_ids < 0, prev_tokens[(-input_ids - 1).clamp(min=0)], input_ids)
        ctx = ForwardContext(num_tokens=len(ids), attn=inputs.attn)
        hidden, route = self.runner.forward(input_ids, inputs.positions, ctx)
        plps = self._prompt_logprobs(hidden, prompt_rows, prompt_targets) if prompt_rows else None
        if not sample_reqs:
            return [], None, route, None, plps
        # logits in the model's dtype: the sampler casts them to fp32 where a row samples
        logits = self.model.compute_logits(hidden[inputs.sample_rows], fp32=False)
        params = [r.params for r in sample_reqs]
        sampled = logits
        if any(p.penalized for p in params):
            output_counts, seen = self._seen_tokens(sample_reqs, logits.shape[-1], prev_tokens)
            sampled = self.sampler.penalize(logits, params, output_counts, seen)
        sampled = self._bias_and_mask(logits, sampled, sample_reqs)
        tokens = self.sampler(sampled, params, [r.request_id for r in sample_reqs])
        asked = [r.params.logprobs for r in sample_reqs if r.params.logprobs is not None]
        lps = self.sampler.logprobs(logits, tokens, max(asked)) if asked else None
        return sample_reqs, tokens, route, lps, plps

    def _bias_and_mask(
        self, logits: torch.Tensor, sampled: torch.Tensor, reqs: list[Request]
    ) -> torch.Tensor:
        """`sampled` with each row's `logit_bias` added and, below `min_tokens`, the tokens that
        would end the output masked out (an output token in flight counts); unchanged if none asks."""
        rows: list[int] = []
        cols: list[int] = []
        values: list[float] = []
        for row, r in enumerate(reqs):
            for token, bias in r.params.logit_bias:
                rows.append(row)
                cols.append(token)
                values.append(bias)
            if len(r.output_token_ids) < r.params.min_tokens:
                ends = set(r.params.stop_token_ids) | (set() if r.params.ignore_eos else self.eos_token_ids)
                rows += [row] * len(ends)
                cols += sorted(ends)
                values += [float("-inf")] * len(ends)
        if not rows:
            return sampled
        out = sampled.float() if sampled is not logits else logits.float().clone()
        index = (on_device(rows, torch.long, self.device), on_device(cols, torch.long, self.device))
        out.index_put_(index, on_device(values, torch.float32, self.device), accumulate=True)
        return out

    def _prompt_logprobs(
        self, hidden: torch.Tensor, rows: list[int], targets: list[tuple[Request, int]]
    ) -> PromptLogprobs:
        logits = self.model.compute_logits(hidden[on_device(rows, torch.long, self.device)], fp32=False)
        ids = on_device([req.prompt_token_ids[pos] for req, pos in targets], torch.long, self.device)
        top = max(req.params.prompt_logprobs or 0 for req, _ in targets)
        return PromptLogprobs(targets, self.sampler.logprobs(logits, ids, top))

    def _seen_tokens(
        self, reqs: list[Request], vocab: int, prev_tokens: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For the penalties: per sampled row, [b, vocab] counts of its request's output tokens and a
        mask of its output and (with a repetition penalty) prompt tokens; rows without penalties stay
        empty. An output token still in flight (a placeholder) is taken from that step's tokens on
        the device. Host work grows with the requests' lengths: paid only where penalties are asked."""
        rows: list[int] = []
        ids: list[int] = []
        for row, req in enumerate(reqs):
            if req.params.penalized:
                rows += [row] * len(req.output_token_ids)
                ids += req.output_token_ids
        outputs = len(ids)
        for row, req in enumerate(reqs):
            if req.params.repetition_penalty != 1.0:
                rows += [row] * req.num_prompt_tokens
                ids += req.prompt_token_ids
        r = on_device(rows, torch.long, self.device)
        t = on_device(ids, torch.long, self.device)
        if prev_tokens is not None:
            t = torch.where(t < 0, prev_tokens[(-t - 1).clamp(min=0)], t)
        counts = torch.zeros(len(reqs), vocab, device=self.device)
        counts.index_put_(
            (r[:outputs], t[:outputs]), torch.ones(outputs, device=self.device), accumulate=True
        )
        seen = counts > 0
        seen[r[outputs:], t[outputs:]] = True  # a repetition penalty of 1 leaves a seen logit alone
        return counts, seen

    def _step_async(self) -> list[RequestOutput]:
        """Launch step N+1, then read step N's tokens while the device runs N+1.

        Step N's sampled requests carry a placeholder token, so the scheduler gives each the decode
        row it will need; a request that finishes at step N (stop, EOS, length, abort) has its row
        in step N+1 computed and dropped. Freed KV blocks are safe to hand out at once: every later
        step runs after N+1 on the same stream.
        """
        with self._lock, torch.inference_mode():
            prev, self._inflight = self._inflight, None
            if self.runner.capturing:
                if prev is not None:  # captures run between steps, with nothing in flight
                    return self._resolve(prev)
                self._advance_capture(budget_seconds=0.05)
            cur = None
            batch = self.scheduler.schedule()
            if batch is not None:
                start = time.perf_counter()
                sample_reqs, tokens, route, lps, plps = self._launch(
                    batch, prev.tokens if prev is not None else None
                )
                for req, n in zip(batch.requests, batch.num_new_tokens, strict=True):
                    req.num_computed_tokens += n
                host, host_lps, done = tokens, lps, None
                if self.device.type == "cuda" and (tokens is not None or plps is not None):
                    host = None if tokens is None else _to_host(tokens)
                    host_lps = None if lps is None else (_to_host(lps[0]), _to_host(lps[1]))
                    if plps is not None:
                        plps.logprobs = (_to_host(plps.logprobs[0]), _to_host(plps.logprobs[1]))
                    done = torch.cuda.Event()
                    done.record()
                cur = _InFlight(batch, route, sample_reqs, tokens, host, host_lps, plps, done, start)
            outputs = self._resolve(prev) if prev is not None else []
            if cur is not None:
                for i, req in enumerate(cur.sample_reqs):
                    if not req.finished:
                        req.output_token_ids.append(-(i + 1))  # placeholder: the next step feeds it
                self._inflight = cur
            return outputs

    def _resolve(self, p: _InFlight) -> list[RequestOutput]:
        """Read a launched step's tokens (waiting for that step only) and apply them."""
        if p.done is not None:
            p.done.synchronize()
        tokens = [] if p.host is None else p.host.tolist()
        _record_prompt_logprobs(p.prompt_logprobs)
        rows = _logprob_rows(p.sample_reqs, tokens, p.logprobs)
        outputs = []
        for req, tok, lp in zip(p.sample_reqs, tokens, rows, strict=True):
            if req.finished:  # finished or aborted while this step was in flight: drop its token
                continue
            assert req.output_token_ids[-1] < 0, "a resolved request lost its placeholder"
            req.output_token_ids.pop()
            outputs.append(self._append(req, tok, lp))
        # wall time of this step alone: steps overlap, so it starts where the previous one ended
        now = time.perf_counter()
        seconds, self._resolved_at = now - max(p.start, self._resolved_at), now
        self.step_log.append(
            p.batch.num_tokens, p.route.bucket, p.route.reason, seconds, len(tokens), self._totals()
        )
        return outputs

    def _append(self, req: Request, token: int, logprob: TokenLogprob | None = None) -> RequestOutput:
        req.output_token_ids.append(token)
        if logprob is not None:
            req.output_logprobs.append(logprob)
        self.counters["generation_tokens"] += 1
        if len(req.output_token_ids) == 1:
            self.counters["prompt_tokens"] += req.num_prompt_tokens
        checked = len(req.detok.text)  # text already searched for stop strings
        text = append_text(self.tokenizer, req.output_token_ids, req.detok)
        reason = None
        may_stop = len(req.output_token_ids) > req.params.min_tokens
        if may_stop and (
            token in req.params.stop_token_ids or (token in self.eos_token_ids and not req.params.ignore_eos)
        ):
            reason = "stop"
        if reason is None and req.at_max_tokens:
            reason = "length"
        if reason is not None:  # flush a held-back partial character; search it all once more
            text, checked = full_text(self.tokenizer, req.output_token_ids), 0
        for s in req.params.stop if may_stop else ():
            cut = text.find(s, max(0, checked - len(s) + 1))
            if cut >= 0:
                text, reason = text[:cut], "stop"
        req.output_text = text
        if reason is not None:
            self.requests.pop(req.request_id, None)
            self._finish(req, reason)
        first = len(req.output_token_ids) == 1 and req.params.prompt_logprobs is not None
        return RequestOutput(
            req.request_id, [token], text, req.finished, req.finish_reason,
            req.num_prompt_tokens, len(req.output_token_ids), None if logprob is None else [logprob],
            list(req.prompt_logprobs) if first else None,
        )  # fmt: skip

    def _finish(self, req: Request, reason: str) -> None:
        self.scheduler.finish(req, reason)
        self.sampler.forget(req.request_id)
        self.finished_counts[reason] = self.finished_counts.get(reason, 0) + 1

    # ---- offline API -------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str | list[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Generate for all prompts together (continuous batching) and return them in order."""
        plist = list(params) if isinstance(params, Sequence) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise RequestError("give one SamplingParams, or one per prompt")
        reqs: list[Request] = []
        for p, sp in zip(prompts, plist, strict=True):
            rid = self.add_request(p, sp)
            reqs.append(self.requests[rid])
        while any(r.status is not Status.FINISHED for r in reqs):
            self.step()
        done = []
        for r in reqs:
            lps = r.output_logprobs if r.params.logprobs is not None else None
            plps = r.prompt_logprobs if r.params.prompt_logprobs is not None else None
            done.append(Completion(r.request_id, r.prompt_token_ids, r.output_token_ids, r.output_text,
                                   r.finish_reason, lps, plps))  # fmt: skip
        return done

    def stats_summary(self) -> dict[str, Any]:
        """Replays per bucket, rejects per reason, padded tokens (for `generate --stats`)."""
        w = self.step_log.window(0)
        return {
            "backend": self.runner.backend,
            "buckets": list(self.runner.buckets),
            "steps": w.cursor,
            "replays": {str(k): v for k, v in sorted(self.runner.replays.items())},
            "rejects": dict(self.runner.rejects),
            "padded_tokens": w.padded_tokens,
            "graph_tokens": w.graph_tokens,
            "eager_tokens": w.eager_tokens,
            "graph_memory_bytes": self.runner.graph_memory_bytes,
            "capture_seconds": round(self.runner.capture_seconds, 4),
            "num_preemptions": self.scheduler.num_preemptions,
            "mixed_step_tokens": self.scheduler.mixed_step_tokens,
        }


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of a device tensor, queued on the current stream (valid after its event)."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host


def _record_prompt_logprobs(p: PromptLogprobs | None) -> None:
    """Append a step's prompt log-probabilities to their requests, in position order (a position a
    recompute after preemption scores again is kept once)."""
    if p is None:
        return
    values, ids = p.logprobs[0].tolist(), p.logprobs[1].tolist()
    for (req, pos), vals, top_ids in zip(p.targets, values, ids, strict=True):
        if pos == len(req.prompt_logprobs) + 1:
            k = req.params.prompt_logprobs or 0
            req.prompt_logprobs.append(_token_logprob(req.prompt_token_ids[pos], vals, top_ids, k))


def _logprob_rows(reqs: list[Request], tokens: list[int], lps: Logprobs | None) -> list[TokenLogprob | None]:
    """Each sampled row's TokenLogprob (None where its request did not ask) from host tensors."""
    if lps is None:
        return [None] * len(tokens)
    values, ids = lps[0].tolist(), lps[1].tolist()
    return [
        None if req.params.logprobs is None else _token_logprob(tok, vals, top_ids, req.params.logprobs)
        for req, tok, vals, top_ids in zip(reqs, tokens, values, ids, strict=True)
    ]


def _token_logprob(token: int, values: list[float], top_ids: list[int], k: int) -> TokenLogprob:
    """One row of `Sampler.logprobs` (the token's value, then the top values; the top ids)."""
    return TokenLogprob(token, values[0], list(zip(top_ids[:k], values[1 : 1 + k], strict=True)))


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


def _resolve_attention_backend(name: str, device: torch.device, mc: Any) -> str:
    """auto: the paged Triton kernel on CUDA (when the head layout suits it), torch ops elsewhere."""
    kv_width = mc.num_key_value_heads * mc.head_dim
    fits = device.type == "cuda" and HAS_TRITON and _is_pow2(mc.head_dim) and _is_pow2(kv_width)
    if name == "triton" and not fits:
        raise ConfigError("attention_backend triton needs a CUDA GPU, Triton, and power-of-two head sizes")
    if name != "auto":
        return name
    return "triton" if fits else "sdpa"


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _resolve_dtype(name: str, checkpoint: torch.dtype, device: torch.device) -> torch.dtype:
    if name != "auto":
        return _DTYPES[name]
    return checkpoint if device.type == "cuda" else torch.float32


def _load_tokenizer(model_dir: str) -> Tokenizer:
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        raise ModelError(f"{path} not found: a model directory needs a tokenizer.json")
    return Tokenizer.from_file(path)


def _generation_eos(model_dir: str) -> set[int]:
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return set()
    with open(path) as f:
        eos = json.load(f).get("eos_token_id")
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "RequestError",
    "RequestOutput",
    "SamplingError",
    "SamplingParams",
]
