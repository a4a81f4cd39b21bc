"""Batched sampling on the device: greedy, temperature, top-k, top-p, per-request seeds.

Runs eagerly on the live batch after the graph replay. Random draws use the exponential-race trick
(argmax of p / E with E ~ Exp(1)), so a seeded request draws its own noise and gets the same tokens
whatever else shares its batch. On a GPU one Triton kernel samples the whole batch
(`kernels.sampling`: no sort of the vocabulary, Philox noise from a seed per row and draw); elsewhere
torch ops do (the top-k/top-p filter by sorting, a torch generator per seeded request). The two draw
different random streams, each reproducible.

Penalties (presence, frequency: OpenAI's; repetition: the CTRL paper's, as vLLM and transformers
apply it) change the logits that are sampled, from the counts of the tokens each row's request has
seen (`penalize`); the engine builds those counts on the device only for the rows that ask.

Log-probabilities, for the requests that ask for them (`SamplingParams.logprobs`), are those of the
model's distribution before temperature, top-k and top-p (what OpenAI and vLLM report), computed in
fp32 beside the sampled tokens, so they reach the host with them.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from graphpilot.runtime.engine.request import SamplingParams
from graphpilot.runtime.kernels import HAS_TRITON, use_triton

if HAS_TRITON:
    from graphpilot.runtime.kernels.sampling import sample_rows

SEED_MASK = (1 << 52) - 1  # the kernel's per-row seeds travel in a float64 table
FUSED_SAMPLING = True  # on a GPU, the sampling kernel (False: the torch ops, as on the CPU)


def on_device(values: list[Any], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list as a device tensor without waiting for the device: a blocking copy would
    wait for the step queued before it, which async scheduling means to overlap."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


class Sampler:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._request_generators: dict[str, torch.Generator] = {}
        self._rng = random.Random(seed)  # the kernel's seeds of unseeded rows
        self._draws: dict[str, int] = {}  # a seeded request's draws so far (the kernel's path)

    def forget(self, request_id: str) -> None:
        self._request_generators.pop(request_id, None)
        self._draws.pop(request_id, None)

    def _generator(self, request_id: str, seed: int) -> torch.Generator:
        gen = self._request_generators.get(request_id)
        if gen is None:
            gen = torch.Generator(device=self.device).manual_seed(seed)
            self._request_generators[request_id] = gen
        return gen

    def __call__(
        self, logits: torch.Tensor, params: list[SamplingParams], request_ids: list[str]
    ) -> torch.Tensor:
        # logits: [b, vocab], any float dtype -> token ids [b]; an all-greedy batch takes the argmax
        # as it is (the same token as in fp32), any other is sampled in fp32
        if all(p.greedy for p in params):
            return logits.argmax(dim=-1)
        if FUSED_SAMPLING and use_triton(logits) and logits.stride(-1) == 1:
            return sample_rows(logits, self._kernel_params(params, request_ids, logits))
        greedy = logits.argmax(dim=-1)
        logits = logits.float()
        temps = on_device(
            [p.temperature if not p.greedy else 1.0 for p in params], torch.float32, logits.device
        )
        probs = self._filter(logits / temps[:, None], params).softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_(generator=self.generator)
        for row, (p, rid) in enumerate(zip(params, request_ids, strict=True)):
            if p.seed is not None and not p.greedy:
                noise[row].exponential_(generator=self._generator(rid, p.seed))
        sampled = (probs / noise).argmax(dim=-1)
        is_greedy = on_device([p.greedy for p in params], torch.bool, logits.device)
        return torch.where(is_greedy, greedy, sampled)

    def _kernel_params(
        self, params: list[SamplingParams], request_ids: list[str], logits: torch.Tensor
    ) -> torch.Tensor:
        """`sample_rows`' table: temperature, top_k (the vocabulary when off), top_p and a seed per
        row. A seeded request's seed for its i-th draw mixes its seed and i, so it draws the same
        whatever shares its batch; other rows take fresh seeds from the sampler's own stream."""
        vocab = logits.shape[-1]
        rows = []
        for p, rid in zip(params, request_ids, strict=True):
            if p.seed is not None and not p.greedy:
                draw = self._draws.get(rid, 0)
                self._draws[rid] = draw + 1
                seed = _mix(p.seed, draw)
            else:
                seed = self._rng.getrandbits(52)
            top_k = p.top_k if 0 < p.top_k < vocab else vocab
            rows.append((p.temperature, top_k, p.top_p, seed))
        return on_device(rows, torch.float64, logits.device)

    @staticmethod
    def _filter(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        """Mask tokens outside each row's top-k and top-p (nucleus) set."""
        if all(p.top_k == 0 and p.top_p >= 1.0 for p in params):
            return logits
        vocab = logits.shape[-1]
        top_k = on_device(
            [p.top_k if 0 < p.top_k < vocab else vocab for p in params], torch.long, logits.device
        )
        top_p = on_device([p.top_p for p in params], torch.float32, logits.device)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=logits.device)[None, :]
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop = (ranks >= top_k[:, None]) | (mass_before > top_p[:, None])
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(-1, order, sorted_logits)

    @staticmethod
    def penalize(
        logits: torch.Tensor, params: list[SamplingParams], output_counts: torch.Tensor, seen: torch.Tensor
    ) -> torch.Tensor:
        """fp32 logits [b, vocab] after each row's penalties: `output_counts` [b, vocab] counts the
        tokens of the row's output so far, `seen` [b, vocab] marks those of its prompt and output."""
        per_row = [(p.repetition_penalty, p.frequency_penalty, p.presence_penalty) for p in params]
        rep, freq, presence = on_device(per_row, torch.float32, logits.device).T[:, :, None]  # one copy
        logits = logits.float()
        logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
        return logits - freq * output_counts - presence * (output_counts > 0)

    @staticmethod
    def logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[b, 1 + top] fp32 log-probabilities (the sampled token's, then the `top` most likely
        tokens', most likely first) and [b, top] those tokens' ids, of the rows' raw logits."""
        lp = logits.float().log_softmax(dim=-1)
        chosen = lp.gather(1, tokens[:, None])
        if top == 0:
            return chosen, torch.empty(tokens.shape[0], 0, dtype=torch.long, device=tokens.device)
        top_lp, top_ids = lp.topk(top, dim=-1)
        return torch.cat([chosen, top_lp], dim=1), top_ids


def _mix(seed: int, draw: int) -> int:
    """A 52-bit seed for draw `draw` of a request seeded with `seed` (splitmix64's finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + draw + 1) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (x ^ (x >> 31)) & SEED_MASK
