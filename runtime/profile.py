"""Graph profile contract shared by the runtime, the autotuner sidecar and the operator.

Pure Python on purpose: the sidecar and the operator import this module and must never need torch.

A *profile* is what the autotuner tunes: the set of `num_tokens` buckets that are captured as
breakable CUDA graphs, and `mem_fraction_static` (the share of GPU memory for weights, KV cache and
graphs). The JSON shapes below are the wire format of the runtime's admin API
(`GET/PUT /admin/profile`, `GET /admin/stats`) and of the tuned-profile record the operator reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Every eager fallback of the graph runner has exactly one of these reasons.
REJECT_REASONS = (
    "too_many_tokens",  # num_tokens above the largest captured bucket
    "padding_ratio",  # padding to the chosen bucket would waste more than --graph-max-padding-ratio
    "disabled",  # --graph-backend off, or no bucket captured
    "capturing",  # the bucket that fits is still being captured
)

MAX_BUCKETS = 256
MAX_BUCKET_TOKENS = 65536


class ProfileError(ValueError):
    """A profile that the runtime must not apply; the message says what is wrong."""


def validate_buckets(buckets: list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """Return the buckets sorted and de-duplicated, or raise ProfileError naming the problem."""
    if not isinstance(buckets, list | tuple):
        raise ProfileError("buckets must be a list of integers")
    if not buckets:
        raise ProfileError("buckets must not be empty")
    if len(buckets) > MAX_BUCKETS:
        raise ProfileError(f"at most {MAX_BUCKETS} buckets are allowed, got {len(buckets)}")
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, int):
            raise ProfileError(f"bucket {b!r} is not an integer")
        if not 1 <= b <= MAX_BUCKET_TOKENS:
            raise ProfileError(f"bucket {b} is out of range: allowed 1..{MAX_BUCKET_TOKENS}")
    return tuple(sorted(set(buckets)))


def validate_mem_fraction(value: float) -> float:
    """Return a valid mem_fraction_static or raise ProfileError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProfileError("mem_fraction_static must be a number")
    if not 0.05 <= float(value) <= 0.98:
        raise ProfileError(f"mem_fraction_static {value} is out of range: allowed 0.05..0.98")
    return float(value)


@dataclass(frozen=True)
class GraphProfile:
    """The tunable part of a runtime: captured buckets and the static memory fraction."""

    buckets: tuple[int, ...]
    mem_fraction_static: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", validate_buckets(self.buckets))
        if self.mem_fraction_static is not None:
            object.__setattr__(self, "mem_fraction_static", validate_mem_fraction(self.mem_fraction_static))

    @property
    def max_bucket(self) -> int:
        return self.buckets[-1]

    def to_dict(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "mem_fraction_static": self.mem_fraction_static}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GraphProfile:
        if not isinstance(data, dict):
            raise ProfileError("a profile must be a JSON object")
        unknown = set(data) - {"buckets", "mem_fraction_static"}
        if unknown:
            raise ProfileError(f"unknown profile fields: {sorted(unknown)}")
        if "buckets" not in data:
            raise ProfileError("a profile needs 'buckets'")
        return cls(buckets=tuple(data["buckets"]), mem_fraction_static=data.get("mem_fraction_static"))


def bucket_for(buckets: tuple[int, ...], num_tokens: int) -> int | None:
    """Smallest bucket >= num_tokens, or None when num_tokens is above the largest."""
    lo, hi = 0, len(buckets)
    while lo < hi:
        mid = (lo + hi) // 2
        if buckets[mid] < num_tokens:
            lo = mid + 1
        else:
            hi = mid
    return buckets[lo] if lo < len(buckets) else None


MIXED_STEP_KNEE = 1.25  # a step with decodes may cost this much more than a decode-sized one
MIXED_STEP_MIN_TOKENS = 64


def mixed_step_knee(replay_seconds: dict[int, float], max_tokens: int) -> int | None:
    """Token budget of a step that carries decodes, from each captured bucket's measured replay time:
    the largest bucket below the first whose replay costs more than MIXED_STEP_KNEE times a
    decode-sized bucket's (the median of those up to 32 tokens), at least MIXED_STEP_MIN_TOKENS.
    Below that knee the step is bound by reading the weights, so prefill tokens added to a decode
    step are nearly free; above it they cost compute and slow every running stream. None when
    nothing was measured."""
    timed = sorted((b, t) for b, t in replay_seconds.items() if t > 0 and b <= max_tokens)
    if not timed:
        return None
    small = sorted(t for b, t in timed if b <= 32) or [timed[0][1]]
    limit = MIXED_STEP_KNEE * small[len(small) // 2]
    knee = timed[0][0]
    for b, t in timed:  # up to the first bucket above the limit
        if t > limit:
            break
        knee = b
    return min(max(knee, MIXED_STEP_MIN_TOKENS), max_tokens)


def default_buckets(max_num_tokens: int) -> tuple[int, ...]:
    """Default ladder: dense at small sizes (decode), four sizes per octave above 64, up to the max."""
    sizes = {1, 2, 4, 8, *range(16, 65, 8)}
    base = 64
    while base < max_num_tokens:
        sizes.update(base + base * q // 4 for q in range(4))
        base *= 2
    ladder = sorted(s for s in sizes if s < max_num_tokens)
    return (*ladder, max_num_tokens)


@dataclass
class BucketStats:
    """What the runtime measured for one captured bucket (wire format of GET /admin/profile)."""

    num_tokens: int
    memory_bytes: int = 0  # graph-pool memory this bucket added at capture
    replay_seconds: float = 0.0  # mean replay time of the whole layer stack, measured at capture
    capture_seconds: float = 0.0
    replays: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_tokens": self.num_tokens,
            "memory_bytes": self.memory_bytes,
            "replay_seconds": self.replay_seconds,
            "capture_seconds": self.capture_seconds,
            "replays": self.replays,
        }


@dataclass
class StatsWindow:
    """Exact counts since a cursor (wire format of GET /admin/stats).

    `num_tokens` maps each forward's real token count to how many forwards had it; `replays` maps
    bucket -> replays; `rejects` maps reason -> eager forwards. Counts cover steps in
    (`since`, `cursor`]; the next read passes `cursor` back, so nothing is counted twice or lost.
    """

    cursor: int
    since: int
    num_tokens: dict[int, int] = field(default_factory=dict)
    replays: dict[int, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    padded_tokens: int = 0
    graph_tokens: int = 0
    eager_tokens: int = 0
    forward_seconds: float = 0.0
    generation_tokens: int = 0
    lost_steps: int = 0  # steps older than the runtime's log that this read could not count
    kv_cache_usage_ratio: float = 0.0
    kv_cache_capacity_tokens: int = 0
    num_requests_running: int = 0
    num_requests_waiting: int = 0
    num_preemptions: int = 0  # in the window
    prefix_cache_query_tokens: int = 0  # prompt tokens looked up in the prefix cache in the window
    prefix_cache_hit_tokens: int = 0  # ... and found there

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["num_tokens"] = {str(k): v for k, v in sorted(self.num_tokens.items())}
        d["replays"] = {str(k): v for k, v in sorted(self.replays.items())}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatsWindow:
        d = dict(data)
        d["num_tokens"] = {int(k): int(v) for k, v in d.get("num_tokens", {}).items()}
        d["replays"] = {int(k): int(v) for k, v in d.get("replays", {}).items()}
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})
