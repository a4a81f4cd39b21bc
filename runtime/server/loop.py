"""The engine loop: one thread calls `engine.step()`; asyncio handlers await their outputs.

The thread hands each step's outputs to the event loop with `call_soon_threadsafe`; every request
has its own asyncio queue. With nothing to do the thread waits on an event (no busy spin); it keeps
stepping while a capture is pending, because live retunes run between steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from graphpilot.runtime.config import EngineConfig

log = logging.getLogger(__name__)


class EngineNotReady(RuntimeError):
    """The engine is still loading (or failed to load), or the server is draining."""


class EngineDead(RuntimeError):
    """The engine raised while stepping; in-flight requests end with this error."""


@dataclass
class Failure:
    """Delivered to a request's queue instead of an output when the engine cannot finish it."""

    message: str


class Observer:
    """What the metrics see of a request's life (all durations in seconds)."""

    def first_token(self, seconds: float) -> None: ...

    def inter_token(self, seconds: float) -> None: ...

    def finished(self, status: str, seconds: float) -> None: ...


class RequestGroup:
    """The outputs of one API call's requests (one per prompt), in engine order, as (index, output)."""

    def __init__(self, owner: AsyncEngine, request_ids: list[str], queue: asyncio.Queue[Any]) -> None:
        self.owner, self.request_ids, self.queue = owner, request_ids, queue
        self.index = {rid: i for i, rid in enumerate(request_ids)}
        self.status: dict[str, str] = {}
        self.start = time.perf_counter()
        self._last: dict[str, float] = {}
        self._closed = False

    def __aiter__(self) -> RequestGroup:
        return self

    async def __anext__(self) -> tuple[int, Any]:
        if len(self.status) == len(self.request_ids):
            raise StopAsyncIteration
        item = await self.queue.get()
        if isinstance(item, Failure):
            for rid in self.request_ids:
                if rid not in self.status:
                    self.status[rid] = "error"
                    if self.owner.observer is not None:
                        self.owner.observer.finished("error", time.perf_counter() - self.start)
            raise EngineDead(item.message)
        self._observe(item)
        return self.index[item.request_id], item

    def _observe(self, out: Any) -> None:
        now, obs = time.perf_counter(), self.owner.observer
        last = self._last.get(out.request_id)
        self._last[out.request_id] = now
        if out.finished:
            self.status[out.request_id] = out.finish_reason or "stop"
        if obs is None:
            return
        if last is None:
            obs.first_token(now - self.start)
        else:
            obs.inter_token(now - last)
        if out.finished:
            obs.finished(self.status[out.request_id], now - self.start)

    def close(self, abort: bool = True) -> None:
        """Forget the queue; abort the requests that did not finish (the client went away)."""
        if self._closed:
            return
        self._closed = True
        self.owner._unregister(self.request_ids)
        if not abort:
            return
        unfinished = [rid for rid in self.request_ids if rid not in self.status]
        engine, obs = self.owner.engine, self.owner.observer
        for rid in unfinished:
            self.status[rid] = "abort"
            if obs is not None:
                obs.finished("abort", time.perf_counter() - self.start)
        if unfinished and engine is not None:
            # a thread: the abort waits for the engine lock, the event loop must not
            threading.Thread(target=lambda: [engine.abort(r) for r in unfinished], daemon=True).start()


class AsyncEngine:
    """Owns the Engine, its stepping thread and the per-request output queues."""

    def __init__(self, config: EngineConfig, fail_capture_at: tuple[int, ...] = ()) -> None:
        self.config = config
        self.engine: Any = None  # graphpilot.runtime.engine.engine.Engine once built
        self.error: str | None = None
        self.draining = False
        self.observer: Observer | None = None  # latency metrics, called on the event loop
        self._fail_capture_at = set(fail_capture_at)
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = asyncio.Event()
        self.started = asyncio.Event()  # set once the engine is built, or failed to build

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.draining and self.error is None

    @property
    def num_in_flight(self) -> int:
        return len(self._queues)

    def start(self) -> None:
        """Build the engine (initial capture included) and step it, in one background thread."""
        self._loop = asyncio.get_running_loop()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Fail what is still in flight and join the thread."""
        self._fail_all("the server is shutting down")
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30.0)

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait until in-flight ones finish; False on timeout."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    # ---- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            from graphpilot.runtime.engine.engine import Engine

            engine = Engine(self.config)
            engine.runner.fail_capture_at |= self._fail_capture_at
        except Exception as e:  # the server reports it on /ready and exits
            log.exception("engine failed to start")
            self.error = f"{type(e).__name__}: {e}"
            self._call(self.started.set)
            return
        self.engine = engine
        self._call(self.started.set)
        log.info("engine ready", extra={"buckets": len(engine.runner.buckets)})
        while not self._stop.is_set():
            if not engine.has_unfinished():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                outputs = engine.step()
            except Exception as e:
                log.exception("engine step failed")
                self.error = f"engine step failed: {type(e).__name__}: {e}"
                self._call(self._fail_all, self.error)
                return
            if outputs:
                self._call(self._dispatch, outputs)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is waiting any more
            self._loop.call_soon_threadsafe(fn, *args)

    # ---- event-loop side -------------------------------------------------------------------------

    def _dispatch(self, outputs: list[Any]) -> None:
        for out in outputs:
            q = self._queues.get(out.request_id)
            if q is not None:
                q.put_nowait(out)

    def _fail_all(self, message: str) -> None:
        for q in {id(q): q for q in self._queues.values()}.values():
            q.put_nowait(Failure(message))

    def _register(self, request_ids: list[str]) -> asyncio.Queue[Any]:
        q: asyncio.Queue[Any] = asyncio.Queue()
        for rid in request_ids:
            self._queues[rid] = q
        self._idle.clear()
        return q

    def _unregister(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            self._queues.pop(rid, None)
        if not self._queues:
            self._idle.set()

    def check_ready(self) -> Any:
        """The engine, or EngineNotReady saying why requests cannot be served now."""
        if self.draining:
            raise EngineNotReady("the server is shutting down and accepts no new requests")
        return self.check_started()

    def fail_in_flight(self, message: str) -> None:
        """End every in-flight request with an error (shutdown after the drain timeout)."""
        self._fail_all(message)

    async def add(self, prompts: list[list[int]], params: list[Any], request_ids: list[str]) -> RequestGroup:
        """Queue requests that share one output queue; RequestError if any cannot be served."""
        engine = self.check_ready()
        group = RequestGroup(self, request_ids, self._register(request_ids))
        try:
            await asyncio.to_thread(self._add_all, engine, prompts, params, request_ids)
        except BaseException:
            group.close(abort=False)
            raise
        self._wake.set()
        return group

    @staticmethod
    def _add_all(engine: Any, prompts: list[list[int]], params: list[Any], request_ids: list[str]) -> None:
        added = []
        try:
            for ids, p, rid in zip(prompts, params, request_ids, strict=True):
                engine.add_request(ids, p, rid)
                added.append(rid)
        except BaseException:
            for rid in added:
                engine.abort(rid)
            raise

    def check_started(self) -> Any:
        """The engine once built (also while draining, for the admin API), or EngineNotReady."""
        if self.error is not None:
            raise EngineNotReady(f"the engine is not running: {self.error}")
        if self.engine is None:
            raise EngineNotReady("the model is still loading; retry when /ready answers 200")
        return self.engine

    async def apply_profile(self, buckets: tuple[int, ...]) -> Any:
        """Start a live retune and wait for its ApplyResult (captures run between steps)."""
        engine = self.check_started()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any) -> None:
            if not done.done():
                done.set_result(result)

        def on_done(result: Any) -> None:
            loop.call_soon_threadsafe(settle, result)

        await asyncio.to_thread(engine.apply_profile, buckets, on_done)
        self._wake.set()
        return await done
