"""The relay: every call reaches every destination once it is up, oldest first; outages,
wrong keys, refusals and slow answers each cost what they should and nothing more.

Destinations are webhook receivers of our own (tests/webhooks.py); tr_vault's journal, intake
and workers are the real ones. Time is trio's MockClock: an outage of hours takes no time.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from tests.loops import Bench, open_bench
from tests.webhooks import WebhookSink
from tr_vault.forward.base import Destination
from tr_vault.forward.queue import backfill, retry_deliveries
from tr_vault.forward.senders import SENDERS
from tr_vault.forward.worker import ForwardPolicy, Relay

AUDIO = b"\x00\x00\x00\x18ftypM4A " + bytes(range(256)) * 40


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.05)


def hook(name: str, **kw: object) -> Destination:
    return Destination(name=name, kind="webhook", url=f"http://{name}/hook", **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def relaying(
    bench: Bench, sink: WebhookSink, destinations: Sequence[Destination], **policy: float
) -> AsyncIterator[Relay]:
    relay = Relay(
        bench.journal,
        bench.cache,
        None,
        destinations,
        SENDERS,
        ForwardPolicy(**{"idle_poll": 600.0, **policy}),  # type: ignore[arg-type]
        run_id="r1",
        rng=random.Random(5),
        client_factory=sink.client,
    )
    bench.intake.destinations = tuple(destinations)
    bench.intake.on_stored = _waker(relay)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        yield relay
        relay.stop()
        nursery.cancel_scope.cancel()


def _waker(relay: Relay):  # type: ignore[no-untyped-def]
    async def wake(call_id: int) -> None:
        relay.wake()

    return wake


def deliveries(bench: Bench, destination: str) -> list[tuple[object, ...]]:
    return bench.rows(
        "SELECT call_id, state, attempts, last_answer FROM deliveries WHERE destination = ?"
        " ORDER BY call_id",
        destination,
    )


async def until(predicate, within: float = 600) -> None:  # type: ignore[no-untyped-def]
    """Poll `predicate` every 2 s of virtual time (each poll costs the autojump threshold in
    real time while all else waits, so a bound of 600 s fails within about 15 s)."""
    with trio.fail_after(within):
        while not predicate():
            await trio.sleep(2)


async def test_a_long_outage_of_one_destination(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path, state="done")
    sink = WebhookSink(status={"down": 503})
    dests = [hook("a"), hook("b", concurrency=4), hook("down", concurrency=1)]
    async with relaying(bench, sink, dests, probe_max=300.0):
        ids = [(await bench.add_call(AUDIO + bytes([n]), n)).call_id for n in range(6)]
        started = trio.current_time()
        await until(lambda: len(sink.accepted("a")) == 6 and len(sink.accepted("b")) == 6)
        assert trio.current_time() - started < 5  # the healthy ones never waited
        await trio.sleep(3 * 3600)  # down far longer than any backoff
        assert sink.accepted("down") == []
        probes = sink.attempts("down")
        assert 3 <= probes < 3 * 3600 / 100  # probed with capped backoff, not hammered
        assert [r[2] for r in deliveries(bench, "down")] == [0] * 6  # no attempt spent
        assert bench.rows("SELECT state FROM destination_health WHERE name = 'down'") == [("down",)]
        sink.status.clear()  # it is back
        await until(lambda: len(sink.accepted("down")) == 6, within=120)
        await trio.sleep(30)
    for name in ("a", "b", "down"):
        got = sink.accepted(name)
        assert sorted(b["id"] for b in got) == ids  # each exactly once
        assert {r[1] for r in deliveries(bench, name)} == {"done"}
    assert [b["id"] for b in sink.accepted("down")] == ids  # oldest first
    first = sink.accepted("a")[0]
    call = bench.rows("SELECT sha256, talkgroup, size FROM calls WHERE id = ?", ids[0])[0]
    assert (first["audio_sha256"], first["talkgroup"], first["audio_size"]) == call
    events = bench.rows("SELECT kind, detail FROM events WHERE call_id = ? ORDER BY id", ids[0])
    kinds = [k for k, _ in events]
    assert kinds.count("forward_ok") == 3
    assert "forward_error" in kinds  # the outage's probes are on the call's history


async def test_answers_refused_already_there_and_wrong_key(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path, state="done")

    def answer(host: str, body: dict[str, object]) -> int | None:
        if host == "picky" and body["audio_name"].endswith("235.m4a"):  # type: ignore[union-attr]
            return 422
        if host == "dup":
            return 409
        return None

    sink = WebhookSink(status={"locked": 401}, answer=answer)
    dests = [hook("picky"), hook("dup"), hook("locked", api_key="wrong")]
    async with relaying(bench, sink, dests, misconfigured_retry=600.0, idle_poll=30.0):
        ids = [(await bench.add_call(AUDIO + bytes([n]), n)).call_id for n in range(3)]
        await until(lambda: [r[1] for r in deliveries(bench, "dup")] == ["done"] * 3)
        await until(lambda: {r[1] for r in deliveries(bench, "picky")} == {"done", "failed"})
        await trio.sleep(1200)
        picky = deliveries(bench, "picky")
        assert [r[1] for r in picky] == ["done", "failed", "done"]
        assert picky[1][2] == 1 and "HTTP 422" in str(picky[1][3])  # stopped at once, says why
        assert sink.attempts("picky") == 3
        locked = deliveries(bench, "locked")
        assert [(r[1], r[2]) for r in locked] == [("pending", 0)] * 3  # waiting, nothing spent
        assert sink.accepted("locked") == []
        assert sink.attempts("locked") <= 4  # the first, then one slow re-probe per 10 min
        health = bench.rows(
            "SELECT state, last_error FROM destination_health WHERE name = 'locked'"
        )
        assert health[0][0] == "misconfigured" and "401" in health[0][1]
        failed = bench.rows(
            "SELECT detail FROM events WHERE call_id = ? AND kind = 'forward_failed'", ids[1]
        )
        assert "422" in failed[0][0]
        # The operator fixes the key and asks for a retry: delivered without waiting 10 min.
        sink.status.clear()
        conn = sqlite3.connect(bench.journal.path)
        conn.row_factory = sqlite3.Row
        retry_deliveries(conn, "locked", bench.journal.clock(), failed=False)
        conn.close()
        await until(lambda: len(sink.accepted("locked")) == 3, within=120)
    assert sorted(b["id"] for b in sink.accepted("locked")) == ids
    assert sink.received[-1].headers["authorization"] == "Bearer wrong"


async def test_slow_answer_past_timeout_is_retried_and_the_duplicate_harmless(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    bench = await open_bench(tmp_path, state="done")
    sink = WebhookSink(delay={"slow": 120.0})  # the first request takes 2 minutes
    async with relaying(bench, sink, [hook("slow", timeout=30.0, concurrency=1)]):
        call = await bench.add_call(AUDIO, 0)
        await until(lambda: [r[1] for r in deliveries(bench, "slow")] == ["done"], within=600)
        await trio.sleep(300)  # the late first answer arrives meanwhile
    # It got the call twice (the first send was cut off by the timeout, not by the receiver),
    # and it is done once, with no attempt charged for the slow answer.
    assert sink.arrivals == [("slow", call.call_id), ("slow", call.call_id)]
    assert deliveries(bench, "slow") == [(call.call_id, "done", 1, "HTTP 200: ok")]


@pytest.mark.parametrize("alone", [False, True], ids=["with-others", "alone-first"])
async def test_one_bad_call_does_not_block_the_others(
    tmp_path: Path, clock: trio.testing.MockClock, alone: bool
) -> None:
    """The oldest call always fails (HTTP 500). Whether the others were due when it first
    failed or only arrived after it had the destination marked down (which a loaded machine
    makes happen by chance), they are delivered and the bad call alone is charged."""
    bench = await open_bench(tmp_path, state="done")

    def answer(host: str, body: dict[str, object]) -> int | None:
        return 500 if body["audio_name"].endswith("234.m4a") else None  # type: ignore[union-attr]

    sink = WebhookSink(answer=answer)
    dest = hook("x", concurrency=1, max_attempts=3)
    async with relaying(bench, sink, [dest], backoff_max=10.0, probe_max=30.0):
        ids = [(await bench.add_call(AUDIO, 0)).call_id]
        if alone:  # nothing else to tell by: it looks like an outage, and waits uncharged
            await until(lambda: bench.rows(DOWN_X) == [("down",)], within=60)
            assert [(r[1], r[2]) for r in deliveries(bench, "x")] == [("pending", 0)]
        ids += [(await bench.add_call(AUDIO + bytes([n]), n)).call_id for n in range(1, 4)]
        await until(lambda: len(sink.accepted("x")) == 3, within=600)
        await until(lambda: deliveries(bench, "x")[0][1] == "failed", within=600)
    assert sorted(b["id"] for b in sink.accepted("x")) == ids[1:]
    assert deliveries(bench, "x")[0][2] == 3  # charged: the destination answered the others
    assert [r[1] for r in deliveries(bench, "x")] == ["failed", "done", "done", "done"]


DOWN_X = "SELECT state FROM destination_health WHERE name = 'x'"


async def test_backfill_and_filters(tmp_path: Path, clock: trio.testing.MockClock) -> None:
    bench = await open_bench(tmp_path, state="done")
    for n in range(3):
        await bench.add_call(AUDIO + bytes([n]), n, system="north" if n else "south")
    only_north = Destination(name="n", kind="webhook", url="http://n/hook", systems=("north",))
    conn = sqlite3.connect(bench.journal.path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        assert backfill(conn, only_north, None, bench.journal.clock()) == 2
        assert backfill(conn, only_north, None, bench.journal.clock()) == 0  # idempotent
    finally:
        conn.close()
    sink = WebhookSink()
    async with relaying(bench, sink, [only_north]):
        await until(lambda: len(sink.accepted("n")) == 2, within=60)
    assert {b["system"] for b in sink.accepted("n")} == {"north"}
