"""Sampling of a batch's rows in one kernel: temperature, top-k, top-p and the random draw.

The torch path (`Sampler._filter`, then softmax and the exponential race) sorts every row of the
vocabulary to find its top-k and top-p set, and draws a seeded request's noise with a launch of its
own: on an H100, the 8B workload's 32-decode steps took 8.03 ms sampled (top-p 0.95, seeded)
against 6.81-6.85 greedy (`bench/results/graphs-qwen3-8b-sampled-h100.json`), for a 151,936-token
vocabulary. Here one program per row reads the row a few times from L2 instead of sorting it: the
same workload ran at 3,717-3,726 tok/s against 3,424-3,442 with the torch sampler, alternated in one
run (`bench/results/graphs-qwen3-8b-sampled-kernel-h100.json`).

A token is kept while fewer than top_k tokens, holding at most top_p of the probability, rank above
it (the torch path's rule, save the order among exactly tied logits). With s = logit / temperature,
"kept" is s >= L for the smallest level L with fewer than top_k tokens and at most top_p of the mass
strictly above it (both fall as L rises). The program finds L by bisection:

1. one pass: the row's largest and smallest s and its softmax sum;
2. passes that halve [lo, hi] (lo never qualifies, hi always does) until at most CANDIDATES tokens
   lie between them;
3. one pass that writes those tokens to a scratch row, and takes the argmax of s + Gumbel noise over
   the tokens at or above hi (kept whatever L is);
4. the rest of the bisection over the scratch row, in registers, down to adjacent floats, and the
   argmax of s + noise over the candidates it keeps.

The argmax of s + Gumbel noise draws from the kept tokens' renormalised distribution (the exponential
race of the torch path, in log space). The noise is Philox's, from a 52-bit seed per row and the
token's index, so a seeded request draws the same whatever shares its batch. A row with neither
filter takes one pass (step 3's argmax over every token); temperature 0 is the plain argmax (the first
of equal maxima, as torch's).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from graphpilot.runtime.kernels.launch import FastKernel

MAX_BISECT = 64  # float32 halvings: enough to reach adjacent floats from any finite range
CANDIDATES = 4096  # tokens the bisection's last steps hold in registers
BLOCK = 4096  # tokens per loop step (16 warps: no more spills than a few registers on sm_90)
_SCRATCH: dict[tuple[torch.device, int], tuple[torch.Tensor, torch.Tensor]] = {}
LOG2E = tl.constexpr(1.4426950408889634)  # read inside the kernel


@triton.jit
def _scaled(row_ptr, idx, vocab, inv_t):
    return tl.load(row_ptr + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32) * inv_t


@triton.jit
def _gumbel(seed, idx):
    return -tl.log(-tl.log(tl.rand(seed, idx)))


@triton.jit
def _sample_kernel(
    logits_ptr, params_ptr, out_ptr, cand_s_ptr, cand_idx_ptr, stride_row, vocab, max_bisect,
    BLOCK: tl.constexpr, CANDIDATES: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    temp = tl.load(params_ptr + row * 4).to(tl.float32)
    top_k = tl.load(params_ptr + row * 4 + 1).to(tl.int32)
    top_p = tl.load(params_ptr + row * 4 + 2).to(tl.float32)
    seed = tl.load(params_ptr + row * 4 + 3).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    greedy = temp <= 0.0
    inv_t = 1.0 / tl.where(greedy, 1.0, temp)
    filtered = (temp > 0.0) & ((top_k < vocab) | (top_p < 1.0))

    hi = float("-inf")  # tokens with s >= hi are kept (all, when unfiltered)
    lo = float("-inf")
    s_max = 0.0
    inv_z = 0.0
    if filtered:
        # 1. the row's max and min of s and its softmax sum (per lane, online)
        lane_max = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
        lane_min = tl.full([BLOCK], float("inf"), dtype=tl.float32)
        lane_sum = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, vocab, BLOCK):
            idx = start + offs
            s = _scaled(row_ptr, idx, vocab, inv_t)
            new_max = tl.maximum(lane_max, s)
            ref = tl.where(new_max == float("-inf"), 0.0, new_max)
            lane_sum = lane_sum * tl.math.exp2((lane_max - ref) * LOG2E) + tl.math.exp2((s - ref) * LOG2E)
            lane_max = new_max
            # masked tokens (-inf: `min_tokens`) are below any level: not in the bisection's range
            lane_min = tl.minimum(lane_min, tl.where(s > float("-inf"), s, float("inf")))
        s_max = tl.max(lane_max, axis=0)
        inv_z = 1.0 / tl.sum(lane_sum * tl.math.exp2((lane_max - s_max) * LOG2E), axis=0)
        # 2. halve [lo, hi] over the whole row until few tokens lie between
        lo = tl.min(lane_min, axis=0) - 1.0
        hi = s_max
        count_lo = vocab
        count_hi = 0
        steps = 0
        while (count_lo - count_hi > CANDIDATES) & (steps < max_bisect):
            mid = lo + (hi - lo) * 0.5
            if (mid <= lo) | (mid >= hi):
                steps = max_bisect  # adjacent floats: no token lies strictly between
            else:
                # per lane, summed once a pass: a block-wide sum every loop step is a barrier
                lane_count = tl.zeros([BLOCK], dtype=tl.int32)
                lane_mass = tl.zeros([BLOCK], dtype=tl.float32)
                for start in range(0, vocab, BLOCK):
                    s = _scaled(row_ptr, start + offs, vocab, inv_t)
                    above = s > mid
                    lane_count += above.to(tl.int32)
                    lane_mass += tl.where(above, tl.math.exp2((s - s_max) * LOG2E), 0.0)
                count = tl.sum(lane_count, axis=0)
                mass = tl.sum(lane_mass, axis=0)
                if (count < top_k) & (mass * inv_z <= top_p):
                    hi = mid
                    count_hi = count
                else:
                    lo = mid
                    count_lo = count
                steps += 1

    # 3. argmax of s (+ noise) over the tokens at or above hi; the tokens in (lo, hi) to scratch,
    # with the count and probability of those at or above hi
    best = tl.full([BLOCK], float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK], dtype=tl.int32)
    n_cand = 0
    lane_base_count = tl.zeros([BLOCK], dtype=tl.int32)
    lane_base_mass = tl.zeros([BLOCK], dtype=tl.float32)
    cand_row = row.to(tl.int64) * CANDIDATES
    for start in range(0, vocab, BLOCK):
        idx = start + offs
        s = _scaled(row_ptr, idx, vocab, inv_t)
        sure = s >= hi
        # noise only where a token is kept for sure: a filtered row keeps few, in few blocks, and
        # the noise (Philox and two logs a token) is most of a pass's work. An unfiltered row keeps
        # every token, so it skips the block-wide max (a barrier) that would find that out
        noisy = not greedy
        if filtered:
            noisy = tl.max(s, axis=0) >= hi
        score = s
        if noisy:
            score = s + _gumbel(seed, idx)
        score = tl.where(sure, score, float("-inf"))
        better = score > best  # strict: an earlier block keeps a tie
        best = tl.where(better, score, best)
        best_idx = tl.where(better, idx, best_idx)
        if filtered:
            lane_base_count += sure.to(tl.int32)
            lane_base_mass += tl.where(sure, tl.math.exp2((s - s_max) * LOG2E), 0.0)
            is_cand = (s > lo) & (s < hi)
            pos = n_cand + tl.cumsum(is_cand.to(tl.int32), axis=0) - 1
            keep = is_cand & (pos < CANDIDATES)
            tl.store(cand_s_ptr + cand_row + pos, s, mask=keep)
            tl.store(cand_idx_ptr + cand_row + pos, idx, mask=keep)
            n_cand += tl.sum(is_cand.to(tl.int32), axis=0)
    top = tl.max(best, axis=0)
    choice = tl.min(tl.where(best == top, best_idx, vocab), axis=0)

    # 4. the bisection over the candidates, in registers, and their argmax of s + noise
    if filtered:
        base_count = tl.sum(lane_base_count, axis=0)
        base_mass = tl.sum(lane_base_mass, axis=0)
        tl.debug_barrier()  # every thread's scratch stores before any thread's loads
        c = tl.arange(0, CANDIDATES)
        c_ok = c < tl.minimum(n_cand, CANDIDATES)
        cand = tl.load(cand_s_ptr + cand_row + c, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        cand_idx = tl.load(cand_idx_ptr + cand_row + c, mask=c_ok, other=0, cache_modifier=".cg")
        cand_p = tl.math.exp2((cand - s_max) * LOG2E)
        steps = 0
        while steps < max_bisect:
            mid = lo + (hi - lo) * 0.5
            if (mid <= lo) | (mid >= hi):
                steps = max_bisect
            else:
                above = cand > mid
                count = base_count + tl.sum(above.to(tl.int32), axis=0)
                mass = base_mass + tl.sum(tl.where(above, cand_p, 0.0), axis=0)
                if (count < top_k) & (mass * inv_z <= top_p):
                    hi = mid
                else:
                    lo = mid
                steps += 1
        score = tl.where(c_ok & (cand >= hi), cand + _gumbel(seed, cand_idx), float("-inf"))
        cand_top = tl.max(score, axis=0)
        if cand_top > top:
            choice = tl.min(tl.where(score == cand_top, cand_idx, vocab), axis=0)
    tl.store(out_ptr + row, tl.minimum(choice, vocab - 1).to(tl.int64))


_sample = FastKernel(_sample_kernel)


def _scratch(rows: int, candidates: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates' s values and token ids, [rows * candidates] each, grown on demand and reused."""
    key = (device, candidates)
    got = _SCRATCH.get(key)
    if got is None or got[0].numel() < rows * candidates:
        n = max(rows, 64) * candidates
        got = _SCRATCH[key] = (
            torch.empty(n, dtype=torch.float32, device=device),
            torch.empty(n, dtype=torch.int32, device=device),
        )
    return got


def sample_rows(logits: torch.Tensor, params: torch.Tensor, candidates: int = CANDIDATES) -> torch.Tensor:
    """Token ids [b] sampled from `logits` [b, vocab] (any float dtype, rows contiguous).

    params: [b, 4] float64 on the logits' device, per row (temperature; top_k, the vocabulary's size
    for none; top_p; seed, an integer below 2**52). Temperature 0 is greedy. `candidates` (a power
    of two) sets when the bisection moves to registers (tests make it small)."""
    b, vocab = logits.shape
    out = torch.empty(b, dtype=torch.long, device=logits.device)
    if b == 0:
        return out
    assert logits.stride(1) == 1, "rows must be contiguous"
    assert params.shape == (b, 4) and params.dtype == torch.float64
    cand_s, cand_idx = _scratch(b, candidates, logits.device)
    _sample((b,), logits, params, out, cand_s, cand_idx, logits.stride(0), vocab, MAX_BISECT,
            BLOCK=BLOCK, CANDIDATES=candidates, num_warps=16)  # fmt: skip
    return out
