"""Continuous batching with chunked prefill, decode and mixed batches, and preemption by recompute.

Every step gives each running request the tokens it still needs (1 for decode, a chunk for prefill)
within `max_num_batched_tokens`, then admits waiting requests while budget and KV blocks last. So a
step freely mixes many requests' prefill chunks with decodes. Decode rows are reserved first: a
prefill chunk never takes the token of a running request's decode.

A step that carries decodes has a smaller budget, `mixed_step_tokens`. On a GPU a step of a few
hundred tokens costs about what a decode step costs (the weights are read once either way), and a
larger one costs in proportion to its tokens: prefill chunks that fit under that knee ride along with
the decodes nearly free, while a 2,048-token chunk stalls every running stream for a prefill step.
The engine sets the value from the captured buckets' measured replay times (`profile.mixed_step_knee`).

A step in which every request decodes lists them longest context first: the attention kernel then
starts the longest requests' programs first, and the short ones fill in behind them, where in
arrival order a long request started late sets the step's end (`longest_first`). On a GPU the order
goes back and forth in rounds of `decode_round` requests, as many as put one attention program on
each SM: the longest first, then the next round shortest first, and so on. The GPU hands programs
to its SMs in that order, so an SM that took one of the longest requests takes one of the shortest
next, instead of a middling one (`snake_order`).

A request whose output has reached `max_tokens` computes nothing more. Under async scheduling its last
token is still in flight when the next step is scheduled; its slot and KV blocks go to the next
request in that step rather than one step later (`release_complete`).

When the KV pool runs out, the newest running request is preempted: its blocks are freed and it
waits to be recomputed; nothing is dropped.

With prefix caching (`kv_cache`), a request is admitted from its longest cached prompt prefix and
computes the rest; each step first keys the prompt blocks that the steps before it computed. A
request whose next prompt block a running request is computing waits for it (and the queue behind it
with it, first come first served) rather than compute the same block.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TypeVar

from graphpilot.runtime.engine.kv_cache import BlockPool, prefix_keys
from graphpilot.runtime.engine.request import Request, Status

T = TypeVar("T")


@dataclass
class ScheduledBatch:
    requests: list[Request]
    num_new_tokens: list[int]  # per request, tokens computed this step

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)


class Scheduler:
    longest_first = True  # decode-only batches, longest context first (False: running order)
    snake_order = True  # ... and back and forth in rounds of decode_round requests (False: longest first)
    release_complete = True  # a request's slot goes on while its last token is in flight (False: once read)
    # wait for a prompt block another request is computing (False: compute it too)
    wait_for_shared_prefix = True

    def __init__(
        self,
        pool: BlockPool,
        max_num_batched_tokens: int,
        max_running_requests: int,
        mixed_step_tokens: int | None = None,
        decode_round: int = 0,
    ) -> None:
        self.pool = pool
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_running_requests = max_running_requests
        self.mixed_step_tokens = mixed_step_tokens  # budget of a step with decodes; None: no cap
        self.decode_round = decode_round  # decode requests with one attention program per SM; 0: none
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self._prefilling: list[Request] = []  # running requests whose prompt blocks are not all keyed

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        if self.release_complete:
            self._release_done()
        if self._prefilling:  # key what the steps before computed (prefix caching)
            self._prefilling = [r for r in self._prefilling
                                if r.status is Status.RUNNING and not self.pool.cache_computed(r)]  # fmt: skip
        batch = ScheduledBatch([], [])
        decodes = sum(1 for r in self.running if r.num_tokens - r.num_computed_tokens == 1)
        budget = self.max_num_batched_tokens
        if decodes and self.mixed_step_tokens is not None:
            budget = min(budget, max(self.mixed_step_tokens, decodes))
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            need = req.num_tokens - req.num_computed_tokens
            if need == 1:
                decodes -= 1
                n = 1
            else:  # a prefill chunk leaves a token for each decode behind it
                n = min(need, budget - decodes)
                if n < 1:
                    i += 1
                    continue
            if not self._make_room(req, n):
                break  # req itself was preempted (it was the newest)
            self.pool.allocate(req, n)
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
            budget -= n
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.max_running_requests:
            req = self.waiting[0]
            hits = self.pool.prefix_hits(req)
            if (
                self.wait_for_shared_prefix
                and self._prefilling
                and self._computing_next_block(req, len(hits))
            ):
                break  # it starts from that block a step or so later instead of computing it twice
            n = min(req.num_tokens - len(hits) * self.pool.block_size, budget)
            if not self.pool.can_allocate(req, n, hits):
                break
            self.waiting.popleft()
            self.pool.share(req, hits)
            self.pool.allocate(req, n)
            if self.pool.prefix_caching:
                self._prefilling.append(req)
            req.status = Status.RUNNING
            self.running.append(req)
            batch.requests.append(req)
            batch.num_new_tokens.append(n)
            budget -= n
        if self.longest_first and batch.num_tokens == len(batch.requests):  # every request decodes
            batch.requests.sort(key=lambda r: -r.num_computed_tokens)
            if self.snake_order and 0 < self.decode_round < len(batch.requests):
                batch.requests = back_and_forth(batch.requests, self.decode_round)
        return batch if batch.requests else None

    def _computing_next_block(self, req: Request, hits: int) -> bool:
        """Is a running request computing the prompt block that the waiting `req` would compute
        first (after its `hits` cached blocks)? Requests that share a prefix and arrive together
        (a burst behind one system prompt, the `n` choices of a prompt) then compute it once."""
        bs = self.pool.block_size
        if hits >= self.pool.shareable_blocks(req):
            return False
        key = prefix_keys(req, bs, hits + 1)[hits]
        return any(
            other.status is Status.RUNNING and hits < other.num_prompt_tokens // bs
            and prefix_keys(other, bs, hits + 1)[hits] == key
            for other in self._prefilling
        )  # fmt: skip

    def _release_done(self) -> None:
        """Take requests that have all their output tokens (the last one may be a placeholder of the
        step in flight) out of the running set and free their blocks: the step being scheduled runs
        after the one in flight on the same stream, so it may write those blocks. The engine
        finishes the request when it reads that token (`finish` is then only the status change)."""
        done = [r for r in self.running if r.at_max_tokens]
        for req in done:
            self.running.remove(req)
            self.pool.free(req)

    def _make_room(self, req: Request, n: int) -> bool:
        """Preempt the newest running requests until req fits; False if req had to go itself."""
        while not self.pool.can_allocate(req, n):
            victim = self.running.pop()
            self._preempt(victim)
            if victim is req:
                return False
        return True

    def _preempt(self, req: Request) -> None:
        self.pool.free(req)
        req.status = Status.WAITING
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    def finish(self, req: Request, reason: str) -> None:
        """Release a request (stop, length or abort) wherever it is; idempotent."""
        if req.finished:
            return
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.pool.free(req)
        req.status = Status.FINISHED
        req.finish_reason = reason


def back_and_forth(items: list[T], k: int) -> list[T]:
    """`items` in rounds of k, every other round reversed: with k = 2, [a, b, c, d, e] -> [a, b, d, c, e]."""
    out: list[T] = []
    for i in range(0, len(items), k):
        chunk = items[i : i + k]
        out += chunk[::-1] if i // k % 2 else chunk
    return out
