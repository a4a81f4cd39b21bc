"""Step log: one record per forward, read by cursor so the autotuner counts every step exactly once."""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

from graphpilot.runtime.profile import StatsWindow


@dataclass(frozen=True)
class StepRecord:
    seq: int
    num_tokens: int
    bucket: int | None
    reason: str | None
    forward_seconds: float
    generation_tokens: int
    # after this step: preemptions, prefix-cache query and hit tokens
    totals: tuple[int, int, int] = (0, 0, 0)


class StepLog:
    """Ring buffer of the last `capacity` steps; `window(cursor)` aggregates the steps after cursor."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._records: deque[StepRecord] = deque(maxlen=capacity)
        self._seq = 0
        self._lock = threading.Lock()

    @property
    def seq(self) -> int:
        return self._seq

    def append(
        self, num_tokens: int, bucket: int | None, reason: str | None, seconds: float, gen: int,
        totals: tuple[int, int, int] = (0, 0, 0),
    ) -> None:  # fmt: skip
        with self._lock:
            self._seq += 1
            self._records.append(StepRecord(self._seq, num_tokens, bucket, reason, seconds, gen, totals))

    def records(self, cursor: int) -> list[StepRecord]:
        """The steps after cursor that are still in the buffer."""
        with self._lock:
            return [r for r in self._records if r.seq > cursor]

    def window(self, cursor: int) -> StatsWindow:
        """Exact counts of steps in (cursor, now]; a cursor from the future (runtime restart) reads all."""
        with self._lock:
            records = list(self._records)
            now = self._seq
        if cursor > now or cursor < 0:
            cursor = 0
        first = records[0].seq if records else now + 1
        w = StatsWindow(cursor=now, since=cursor, lost_steps=max(0, first - cursor - 1) if records else 0)
        num_tokens: Counter[int] = Counter()
        replays: Counter[int] = Counter()
        rejects: Counter[str] = Counter()
        # running totals at the cursor: its step's (if it fell out of the log: the first step kept)
        base: tuple[int, int, int] | None = (0, 0, 0) if cursor == 0 else None
        last: tuple[int, int, int] | None = None
        for r in records:
            if r.seq <= cursor:
                base = r.totals
                continue
            base = r.totals if base is None else base
            last = r.totals
            num_tokens[r.num_tokens] += 1
            w.forward_seconds += r.forward_seconds
            w.generation_tokens += r.generation_tokens
            if r.bucket is not None:
                replays[r.bucket] += 1
                w.padded_tokens += r.bucket - r.num_tokens
                w.graph_tokens += r.num_tokens
            else:
                rejects[r.reason or "disabled"] += 1
                w.eager_tokens += r.num_tokens
        w.num_tokens, w.replays, w.rejects = dict(num_tokens), dict(replays), dict(rejects)
        if last is not None and base is not None:
            w.num_preemptions, w.prefix_cache_query_tokens, w.prefix_cache_hit_tokens = (
                b - a for a, b in zip(base, last, strict=True)
            )
        return w
