"""The graph-break primitive.

Decorate any op that depends on the live batch (attention, anything reading the forward context)
with `@graph_break`. Outside the graph runner the op is a plain call. Inside it, a handler decides
what a break means: the CUDA capture ends the current graph segment there and replays the op
eagerly between segments; the eager backend runs the op on the real rows of a padded batch.

An op with an `out` keyword argument may be handed the boundary buffer to write into, which saves
a copy per break on replay. On the way in, model code can build a break's input in `break_input(...)`:
under capture that is a shared boundary buffer already, so the segment ends without a copy.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


class BreakHandler(Protocol):
    def __call__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any: ...


_handler: BreakHandler | None = None


def graph_break(fn: F) -> F:
    """Mark `fn` as a break: captured graphs end before it and resume after it."""
    fn.__break_writes_out__ = "out" in inspect.signature(fn).parameters  # type: ignore[attr-defined]

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        handler = _handler
        if handler is None:
            return fn(*args)
        return handler(fn, args)

    wrapper.__graph_break__ = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


@contextmanager
def break_handler(handler: BreakHandler) -> Iterator[None]:
    """Route every `@graph_break` call in this block to `handler`."""
    global _handler
    prev, _handler = _handler, handler
    try:
        yield
    finally:
        _handler = prev


def writes_out(fn: Callable[..., Any]) -> bool:
    """True when the break op takes an `out=` buffer to write its result into."""
    return bool(getattr(fn, "__break_writes_out__", False))


def break_input(
    name: str, rows: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialised [rows, *shape] tensor to compute a break's input (or a tensor it is a view of) in.

    While a graph is being captured this is rows of a boundary buffer shared by all buckets and layers,
    which the break then reads in place; anywhere else it is a new tensor.
    """
    stage = getattr(_handler, "stage", None)
    if stage is None:
        return torch.empty((rows, *shape), dtype=dtype, device=device)
    return stage(name, rows, shape, dtype)
