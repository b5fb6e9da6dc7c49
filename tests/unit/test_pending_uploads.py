"""The Broadcastify upload URLs' store: one PUT per token, within its time, bounded."""

from __future__ import annotations

import pytest

from tr_vault.call import CallMeta
from tr_vault.errors import IntakeError
from tr_vault.web.pending import PendingUploads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def meta(talkgroup: int) -> CallMeta:
    return CallMeta("broadcastify", "metro", "metro", talkgroup, 1764001234.0, "a.m4a", "audio/mp4")


def refused(store: PendingUploads, token: str) -> int:
    with pytest.raises(IntakeError) as info:
        store.take(token)
    return info.value.status


def test_a_token_is_good_for_one_put_within_its_time() -> None:
    clock = Clock()
    store = PendingUploads(ttl=600, capacity=10, clock=clock)
    first, second = store.add(meta(1)), store.add(meta(2))
    assert first != second and len(first) >= 32
    assert store.take(first).talkgroup == 1
    assert refused(store, first) == 404  # used
    clock.now += 600
    assert refused(store, second) == 410  # expired
    assert refused(store, "../../etc") == 404
    assert len(store) == 0


def test_the_oldest_goes_beyond_capacity_and_expired_ones_go_first() -> None:
    clock = Clock()
    store = PendingUploads(ttl=60, capacity=2, clock=clock)
    a, b = store.add(meta(1)), store.add(meta(2))
    c = store.add(meta(3))
    assert len(store) == 2
    assert refused(store, a) == 404
    clock.now += 61
    store.add(meta(4))  # b and c expired: both dropped, not just the oldest
    assert len(store) == 1
    assert refused(store, b) == refused(store, c) == 404
