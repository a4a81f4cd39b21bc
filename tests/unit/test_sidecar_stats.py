"""The decayed window follows traffic and forgets it; the cursor notices restarts."""

from __future__ import annotations

import pytest

from graphpilot.runtime.profile import StatsWindow
from graphpilot.sidecar.stats import Cursor, DecayedWindow


def window(counts: dict[int, int], cursor: int = 0, **kw: int) -> StatsWindow:
    return StatsWindow(cursor=cursor, since=0, num_tokens=counts, **kw)


def test_older_intervals_weigh_less_and_are_forgotten() -> None:
    w = DecayedWindow(decay=0.5, min_weight=0.1)
    w.add(window({4000: 1}))
    w.add(window({8: 10}))
    assert w.counts == {4000: 0.5, 8: 10.0}
    assert w.quantile(1.0) == 4000
    for _ in range(3):
        w.add(window({8: 10}))
    assert 4000 not in w.counts  # one long prompt 4 intervals ago no longer sets the largest bucket
    assert w.quantile(1.0) == 8


def test_quantile_and_padding_waste_are_the_users_numbers() -> None:
    w = DecayedWindow(decay=1.0)
    w.add(window({10: 90, 100: 9, 1000: 1}))
    assert w.quantile(0.5) == 10 and w.quantile(0.95) == 100 and w.quantile(1.0) == 1000
    # 10 -> 16, 100 -> 128, 1000 runs eager: padding / replayed tokens
    assert w.padding_waste((16, 128)) == pytest.approx((90 * 6 + 9 * 28) / (90 * 16 + 9 * 128))
    assert w.padding_waste((10, 100, 1000)) == 0.0


def test_cursor_going_backwards_means_the_runtime_restarted() -> None:
    c = Cursor()
    assert c.accept(window({}, cursor=500, lost_steps=3))
    assert c.value == 500 and c.lost_steps == 3
    assert not c.accept(window({}, cursor=20))
    assert c.value == 0 and c.restarts == 1
