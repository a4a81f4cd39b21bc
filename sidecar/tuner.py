"""The tuning loop: read stats -> decayed window -> propose -> gate -> apply -> evaluate -> keep or roll back."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from graphpilot.runtime.profile import GraphProfile, StatsWindow

from .actuator import ProfileStore, RuntimeAPI, RuntimeUnavailable
from .costmodel import CostModel
from .metrics import TunerMetrics
from .policy import Decision, Evaluation, MemoryPolicy, SafetyGate
from .proposer import Proposal, propose_buckets
from .settings import SidecarSettings
from .stats import Cursor, DecayedWindow

log = logging.getLogger("graphpilot.sidecar")


class Tuner:
    """Owns the tuning state; `tick` does one interval and `run` loops until stopped."""

    def __init__(
        self,
        settings: SidecarSettings,
        api: RuntimeAPI,
        store: ProfileStore,
        metrics: TunerMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ):
        s = self.settings = settings
        self.api, self.store, self.clock = api, store, clock
        self.metrics = metrics or TunerMetrics()
        self.window = DecayedWindow(s.decay, s.min_weight)
        self.cursor = Cursor()
        self.model = CostModel(s.eager_overhead_ratio)
        self.memory = MemoryPolicy(s.mem_fraction_min, s.mem_fraction_max, s.mem_fraction_step)
        self.gate = SafetyGate(s.min_gain_ratio, s.cooldown_seconds, s.hold_seconds, s.max_payback_seconds)
        self.recent: deque[StatsWindow] = deque(maxlen=s.eval_intervals)  # windows before an apply
        self.evaluation: Evaluation | None = None
        self.decisions: deque[Decision] = deque(maxlen=50)
        self.current: dict[str, Any] = {}
        self.proposal: Proposal | None = None
        self.restored = False
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every interval until `stop` is set; back off while the runtime is unreachable."""
        while not stop.is_set():
            delay = self.settings.interval_seconds
            try:
                await self.tick()
                self.failures = 0
            except RuntimeUnavailable as e:
                self.failures += 1
                delay = min(self.settings.backoff_max_seconds, delay * 2 ** min(self.failures - 1, 8))
                if self.failures == 1 or math.log2(self.failures).is_integer():
                    log.warning("runtime unreachable", extra={"error": str(e), "failures": self.failures})
            except Exception:
                log.exception("tuning step failed")  # a bug must not stop the sidecar serving /status
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)

    async def tick(self) -> None:
        """One interval: read and learn, judge an apply in flight, else maybe apply a better profile."""
        now = self.clock()
        window = await self._read_stats()
        self.current = await self.api.get_profile()
        if not self.restored:
            await self._restore(now)
        buckets = self.buckets
        self.model.observe_profile(buckets, self.current.get("bucket_stats", []))
        self.model.calibrate(window, buckets, self.settings.decay)
        self.model.observe_token_cost(window, self.settings.padding_weight, self.settings.decay)
        self.window.add(window)
        self.metrics.padding_waste.set(self.window.padding_waste(buckets))
        judged = False
        if self.evaluation is not None:
            self.evaluation.add(window)
            await self._judge(now)
            judged = self.evaluation is None
        else:
            self.recent.append(window)
        self.proposal = self.propose(window, now)
        if self.proposal is None or judged:  # at most one profile change per interval
            return
        self.metrics.expected_gain.set(self.proposal.gain)
        if self.evaluation is not None and self.proposal.urgent:
            # traffic above the largest bucket cannot wait for the evaluation to finish
            ev, self.evaluation = self.evaluation, None
            self._record(Decision(now, "retune", "kept", "superseded: coverage", None, ev.new.to_dict()))
        if self.evaluation is None:
            await self._act(self.proposal, now)

    @property
    def buckets(self) -> tuple[int, ...]:
        return tuple(self.current.get("buckets", ()))

    @property
    def max_padding_ratio(self) -> float:
        return float(self.current.get("graph_max_padding_ratio", self.settings.max_padding_ratio))

    @property
    def mem_fraction(self) -> float | None:
        """The fraction the runtime will use: the pending one (next start) if any, else the live one.

        None unless graphs are real CUDA graphs: only then do graphs and KV cache share GPU memory.
        """
        if self.current.get("backend", "cuda") != "cuda":
            return None
        pending = self.current.get("pending_restart") or {}
        value = pending.get("mem_fraction_static", self.current.get("mem_fraction_static"))
        return None if value is None else float(value)

    async def _read_stats(self) -> StatsWindow:
        window = await self.api.get_stats(self.cursor.value)
        if not self.cursor.accept(window):
            log.warning("runtime restarted: counting again from its first step")
            self.evaluation, self.restored = None, False  # old measurements describe a dead process
            self.recent.clear()
            window = await self.api.get_stats(0)
            self.cursor.accept(window)
        return window

    def propose(self, window: StatsWindow, now: float) -> Proposal | None:
        """Best buckets for the window (optimal under the model) and the next memory fraction."""
        if not self.buckets:
            return None
        p = propose_buckets(
            self.settings,
            self.model,
            self.window,
            live=self.buckets,
            limit=int(self.current.get("max_num_batched_tokens") or 0),
            max_padding_ratio=self.max_padding_ratio,
            budget=self.memory.graph_budget(self.settings.memory_budget),
            forward_seconds=window.forward_seconds,
        )
        if p is None:
            return None
        return dataclasses.replace(p, mem_fraction_static=self.memory.propose(self.mem_fraction, window, now))

    async def _act(self, p: Proposal, now: float) -> None:
        """Apply the bucket change if the gate lets it through, else a memory-fraction step if any."""
        if p.buckets != self.buckets:
            new = GraphProfile(p.buckets, self.mem_fraction)
            reason = self.gate.refuse(p.buckets, p.gain, p.urgent, now, p.payback_seconds)
            if reason is None:
                await self._decide("retune", "coverage" if p.urgent else "gain", new, p.gain, now)
                return
            self._record(Decision(now, "retune", "skipped", reason, None, new.to_dict(), p.gain))
        if p.mem_fraction_static is not None:
            new = GraphProfile(self.buckets, p.mem_fraction_static)
            why = "kv_pressure" if p.mem_fraction_static > (self.mem_fraction or 0) else "kv_idle"
            if now - self.gate.last_apply < self.gate.cooldown_seconds:
                self._record(Decision(now, "mem_fraction", "skipped", "cooldown", None, new.to_dict(), None))
            else:
                await self._decide("mem_fraction", why, new, None, now)

    async def _decide(self, action: str, why: str, new: GraphProfile, gain: float | None, now: float) -> None:
        if self.settings.dry_run:
            self._record(Decision(now, action, "dry_run", why, None, new.to_dict(), gain))
        else:
            await self._apply(action, why, new, gain, now)

    async def _apply(self, action: str, why: str, new: GraphProfile, gain: float | None, now: float) -> str:
        old = GraphProfile(self.buckets, self.mem_fraction)
        answer = await self.api.put_profile(new)
        result = str(answer.get("result", "rejected"))
        if isinstance(answer.get("profile"), dict):
            self.current = answer["profile"]
        reason = f"{why}: {answer.get('reason', '')}".rstrip(": ")
        decision = self._record(Decision(now, action, result, reason, old.to_dict(), new.to_dict(), gain))
        self.gate.applied(now)  # a failure also waits out the cooldown
        if result == "applied":
            self.metrics.last_apply.set(now)
            if action == "retune":
                self.evaluation = Evaluation(
                    old, new, gain or 0.0, decision, self.max_padding_ratio, list(self.recent)
                )
            elif action != "rollback":
                await self._persist(new)
        elif result == "rolled_back":
            self.metrics.rollbacks.inc()
            changed = new.mem_fraction_static != old.mem_fraction_static
            graph_bytes = self.model.memory_bytes(new.buckets)
            wait = self.memory.on_failure(new.mem_fraction_static if changed else None, graph_bytes, now)
            self.gate.hold(new.buckets, now, pause=wait)
        log.info("profile decision", extra=decision.to_dict())
        return result

    async def _judge(self, now: float) -> None:
        ev = self.evaluation
        assert ev is not None
        s = self.settings
        shifted = ev.traffic_shift() > s.max_traffic_shift  # not comparable: no need to wait for more
        # after ten evaluation windows too idle to judge: nothing to compare, nothing regressed either
        waiting = (
            not ev.ready(s.eval_intervals, s.eval_min_forwards) and len(ev.windows) < 10 * s.eval_intervals
        )
        if waiting and not shifted:
            return
        self.evaluation = None
        self.recent.clear()
        if shifted or not ev.ready(s.eval_intervals, s.eval_min_forwards):
            why = "not comparable: traffic shifted" if shifted else "not comparable: too few forwards"
            self._record(Decision(now, "retune", "kept", why, None, ev.new.to_dict(), None, None))
            await self._persist(GraphProfile(self.buckets, self.mem_fraction))
            return
        gain = ev.measured_gain(self.model)
        ev.decision.measured_gain = gain
        largest = max((max(w.num_tokens, default=0) for w in ev.windows), default=0)
        if gain < -s.regression_tolerance and largest > ev.old.max_bucket:
            # never roll back into eager fallback: the old set cannot serve what the traffic now sends
            why = f"measured {gain:+.1%}, but the old set would run {largest}-token forwards eager"
            self._record(Decision(now, "retune", "kept", why, None, ev.new.to_dict(), None, gain))
            await self._persist(GraphProfile(self.buckets, self.mem_fraction))
            return
        if gain < -s.regression_tolerance:
            self.gate.hold(ev.new.buckets, now, pause=s.hold_seconds)
            result = await self._apply("rollback", f"measured {gain:+.1%}", ev.old, None, now)
            if result == "applied":
                self.metrics.rollbacks.inc()
            return
        self._record(
            Decision(now, "retune", "kept", f"measured {gain:+.1%}", None, ev.new.to_dict(), None, gain)
        )
        await self._persist(GraphProfile(self.buckets, self.mem_fraction))

    async def _restore(self, now: float) -> None:
        """Apply the persisted profile once per runtime start if the runtime's differs."""
        self.restored = True
        kept = await self.store.load()
        if kept is None:
            return
        live = GraphProfile(self.buckets, self.mem_fraction) if self.buckets else None
        if kept != live and not self.settings.dry_run:
            await self._apply("restore", "persisted", kept, None, now)

    async def _persist(self, profile: GraphProfile) -> None:
        try:
            await self.store.save(profile)
        except Exception as e:  # persistence must never stop tuning; the next keep retries
            log.warning("cannot persist the tuned profile", extra={"error": str(e)})

    def _record(self, d: Decision) -> Decision:
        self.metrics.decisions.labels(action=d.action, result=d.result).inc()
        last = self.decisions[-1] if self.decisions else None
        if d.result == "skipped" and last is not None and (last.action, last.result, last.reason) == (
            d.action, d.result, d.reason):  # fmt: skip
            self.decisions[-1] = d  # a skip repeated every interval is counted, and listed once
        else:
            self.decisions.append(d)
        return d

    def status(self) -> dict[str, Any]:
        """Everything /status shows."""
        ev = self.evaluation
        return {
            "window": {
                "forwards": round(self.window.total, 3),
                "num_tokens": self.window.distribution(),
                "rejects": {k: round(v, 3) for k, v in self.window.rejects.items()},
                "padding_waste_ratio": self.window.padding_waste(self.buckets) if self.buckets else 0.0,
            },
            "current": {k: v for k, v in self.current.items()},
            "proposed": self.proposal.to_dict() if self.proposal else None,
            "evaluating": None if ev is None else {"new": ev.new.to_dict(), "windows": len(ev.windows)},
            "decisions": [d.to_dict() for d in self.decisions],
            "model": {
                "eager_overhead_seconds": self.model.eager_overhead(),
                "bucket_bytes": self.model.bucket_bytes,
                "measured_sizes": len(self.model.replay_seconds),
            },
            "runtime": {
                "failures": self.failures,
                "restarts": self.cursor.restarts,
                "lost_steps": self.cursor.lost_steps,
            },
        }
