"""S3 faults end to end: a real server, real uploads, moto (or SeaweedFS) behind our fault proxy.

What is checked is the store-health model from the outside. An error about the store (refused
or reset connections, timeouts, 5xx, SlowDown, a missing bucket, refused credentials, a skewed
clock) never spends a call's attempts: the store is probed (a PUT and a HEAD of
`.tr-vault/probe`), marked down, and the calls wait `pending` with `attempts = 0` while one probe
at a time re-checks it. Whatever happens, every acknowledged call ends `done`, in the bucket
exactly once, with the bytes that were sent.

Probes are PUTs and HEADs too, so faults queued on the proxy are taken by probes as well as by
uploads, as they would be on a real store: assertions are about outcomes (states, attempts,
objects, which requests were sent), never about which request took which fault, unless the
test makes that deterministic.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio

import tr_vault.journal
import tr_vault.services.uploader
from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.faultproxy import NO_RESPONSE, open_fault_proxy
from tests.helpers import SUCCESS, sha
from tests.s3_fixtures import MotoS3, S3Bucket
from tests.wire import Part, fixture_bytes, rdio_trunk_recorder
from tr_vault.services.store_health import PROBE_KEY
from tr_vault.timefmt import from_db

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
TALKGROUPS = ("9131", "2201", "4405")
CLEAN_EVENTS = ["received", "upload_ok", "verified"]

Seen = list[tuple[str, str, int]]


# -- helpers ------------------------------------------------------------------------------------


def distinct_call(index: int) -> tuple[list[Part], bytes]:
    """Call `index` as trunk-recorder sends it: its own audio bytes, talkgroup and start time."""
    base = M4A if index % 2 == 0 else M4A_2
    audio = base + f"\n#tr-vault fault test call {index}\n".encode() * (1 + index % 5)
    talkgroup = TALKGROUPS[index % len(TALKGROUPS)]
    start = 1764001234 + 37 * index
    parts = rdio_trunk_recorder(
        audio,
        talkgroup=talkgroup,
        date_time=str(start),
        audio_name=f"{talkgroup}-{start}_851012500.0-call_{index}.m4a",
    )
    return parts, audio


async def send_calls(vault: Vault, indexes: Iterable[int]) -> dict[int, str]:
    """Upload the calls; each must be acknowledged. Returns the SHA-256 sent, by index."""
    sent: dict[int, str] = {}
    for index in indexes:
        parts, audio = distinct_call(index)
        response = await vault.post("/api/call-upload", parts)
        assert (response.status_code, response.text) == (200, SUCCESS), f"call {index}"
        sent[index] = sha(audio)
    return sent


def all_done(vault: Vault, count: int) -> bool:
    calls = vault.calls()
    return len(calls) == count and all(c["state"] == "done" for c in calls)


def upload_errors(vault: Vault) -> int:
    [row] = vault.rows("SELECT count(*) AS n FROM events WHERE kind = 'upload_error'")
    n: int = row["n"]
    return n


def assert_waiting_untouched(vault: Vault, count: int) -> None:
    """Every call is pending, unclaimed, with no attempt spent and no error recorded."""
    calls = vault.calls()
    assert len(calls) == count
    for call in calls:
        assert (call["state"], call["attempts"], call["claimed_by"]) == ("pending", 0, None), call
        assert call["last_error"] is None, call
    assert upload_errors(vault) == 0


def assert_each_call_once_and_intact(
    vault: Vault, bucket: S3Bucket, sent: dict[int, str]
) -> list[dict[str, Any]]:
    """Every call is `done`, unclaimed, and in the bucket exactly once with the bytes sent."""
    calls = vault.calls()
    assert [c["state"] for c in calls] == ["done"] * len(sent)
    assert all(c["claimed_by"] is None for c in calls)
    assert sorted(c["sha256"] for c in calls) == sorted(sent.values())
    keys = bucket.keys()  # every object but the probe's
    assert keys == sorted(f"audio/{c['key']}" for c in calls)  # one object per call, no other
    for call in calls:
        assert sha(bucket.read(f"audio/{call['key']}")) == call["sha256"]
    return calls


def is_probe(target: str) -> bool:
    return target.split("?", 1)[0].endswith(PROBE_KEY)


def call_requests(seen: Seen) -> Seen:
    """The requests of `seen` that were about a call (not the store probe)."""
    return [entry for entry in seen if not is_probe(entry[1])]


def port_of(bucket: S3Bucket) -> int:
    port = urlsplit(bucket.url).port
    assert port is not None
    return port


async def get_summary(vault: Vault) -> dict[str, Any]:
    response = await vault.client.get(vault.url + "/api/journal/summary")
    assert response.status_code == 200
    summary: dict[str, Any] = response.json()
    return summary


async def wait_summary(
    vault: Vault, predicate: Callable[[dict[str, Any]], bool], *, within: float = 10.0
) -> dict[str, Any]:
    """Poll the summary until `predicate` holds; fail after `within` seconds."""
    with trio.fail_after(within):
        while not predicate(summary := await get_summary(vault)):
            await trio.sleep(0.05)
    return summary


async def wait_probes(vault: Vault, count: int, *, within: float = 10.0) -> dict[str, Any]:
    """Wait until `count` more probes have answered (each moves the store's `checked_at`)."""
    last = (await get_summary(vault))["store"]["checked_at"]
    with trio.fail_after(within):
        while count > 0:
            await trio.sleep(0.05)
            summary = await get_summary(vault)
            if summary["store"]["checked_at"] != last:
                last = summary["store"]["checked_at"]
                count -= 1
    return summary


def store_is(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda summary: summary["store"]["state"] == state


# -- 1. mixed faults ----------------------------------------------------------------------------

MIXED_CALLS = 21


async def test_mixed_faults_every_call_lands_once_and_intact(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    with trio.fail_after(45):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(moto_s3, endpoint=proxy.url, upload_timeout=1.0, upload_workers=4)
            )
            # Bursts queued between batches of calls, so they land while uploads are running.
            proxy.fail_next(
                4, status=500, code="InternalError", message="We encountered an internal error."
            )  # any method: PUTs, verifying HEADs, probes
            sent = await send_calls(vault, range(7))
            proxy.fail_next(3, status=503, code="SlowDown", methods={"PUT"})
            proxy.reset_next(
                3, after_body_bytes=4096, methods={"PUT"}
            )  # mid-body: every audio is > 8 KiB
            sent |= await send_calls(vault, range(7, 14))
            proxy.delay_next(2, seconds=2.5, methods={"PUT"})  # past the 1 s upload timeout
            proxy.fail_next(2, status=503, code="SlowDown")
            proxy.reset_next(1, after_body_bytes=2048, methods={"PUT"})
            sent |= await send_calls(vault, range(14, MIXED_CALLS))
            await wait_until(
                lambda: proxy.faults_pending == 0 and all_done(vault, MIXED_CALLS), within=35
            )
            statuses = {status for _, _, status in proxy.seen}
        calls = assert_each_call_once_and_intact(vault, moto_s3, sent)

    assert {500, 503, NO_RESPONSE} <= statuses  # the faults were really served
    assert not vault.rows("SELECT id FROM events WHERE kind = 'failed'")
    # Every attempt charged to a call (a fault after which the probe found the store working)
    # left its error event, and no call came near its limit of 10.
    assert sum(c["attempts"] - 1 for c in calls) == upload_errors(vault)
    assert max(c["attempts"] for c in calls) < 10


# -- 2. the ambiguous case: stored, but the answer is lost --------------------------------------


async def test_stored_but_unanswered_upload_ends_done_once(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    """The PUT (or the verifying HEAD) reaches moto and succeeds there, but its answer comes
    after the upload timeout: the call is charged one attempt, PUT again (the same key, the
    same bytes, `If-None-Match: *`: 412, the object there is ours) and ends `done` with one
    object."""
    with trio.fail_after(30):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(
                    moto_s3,
                    endpoint=proxy.url,
                    upload_timeout=1.0,
                    upload_workers=2,
                    s3_conditional_put="true",  # moto honours it (the proxy hides that)
                )
            )
            sent: dict[int, str] = {}
            # One call at a time, so the held answer is always the call's own first request.
            for index, method in enumerate(["PUT", "PUT", "HEAD"]):
                proxy.delay_next(1, seconds=2.0, methods={method})
                sent |= await send_calls(vault, [index])
                await wait_until(partial(all_done, vault, index + 1), within=10)
                assert proxy.faults_pending == 0
            calls = vault.calls()
            keys = {c["id"]: f"/{moto_s3.bucket}/audio/{c['key']}" for c in calls}
            # The held answers come last: wait for them, they are 200s for requests moto served.
            await wait_until(
                lambda: all(
                    sum(target == key and method == "PUT" for method, target, _ in proxy.seen) == 2
                    for key in keys.values()
                ),
                within=5,
            )
            seen = list(proxy.seen)
        assert_each_call_once_and_intact(vault, moto_s3, sent)

    for call in calls:
        assert call["attempts"] == 2  # the lost answer cost one attempt, the retry worked
        [error] = [e["detail"] for e in vault.events(call["id"]) if e["kind"] == "upload_error"]
        assert "TR_VAULT_UPLOAD_TIMEOUT" in error
        assert "charged to this call" in error
        requests = [(m, s) for m, t, s in seen if t == keys[call["id"]]]
        assert requests.count(("PUT", 200)) == 1, requests  # the first PUT was stored
        assert requests.count(("PUT", 412)) == 1, requests  # the second replaced nothing
        assert all(status in (200, 412) for _, status in requests), requests


# -- 3. a long outage ---------------------------------------------------------------------------

OUTAGE_CALLS = 7


@pytest.mark.parametrize("outage", ["refused", "bad_gateway"])
async def test_long_outage_spends_no_attempts_and_sends_only_probes(
    make_vault: VaultFactory, moto_s3: MotoS3, outage: str
) -> None:
    """`refused`: the endpoint is down (connections refused). `bad_gateway`: the endpoint
    answers, but S3 behind it is down (moto stopped: the proxy answers 502 to everything), so
    every request tr_vault sends during the outage is visible in `proxy.seen`."""
    assert moto_s3.server is not None
    with trio.fail_after(40):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(moto_s3, endpoint=proxy.url, upload_timeout=1.0, upload_workers=4)
            )
            await wait_summary(vault, store_is("up"))
            start = len(proxy.seen)
            if outage == "refused":
                proxy.set_down(True)
            else:
                moto_s3.stop()
            # The first call finds the outage (its upload fails, so does the probe after it).
            sent = await send_calls(vault, [0])
            down = await wait_summary(vault, store_is("down"))
            marked = len(proxy.seen)
            # Calls keep arriving through the outage, one per failed probe.
            for index in range(1, OUTAGE_CALLS):
                sent |= await send_calls(vault, [index])
                during = await wait_probes(vault, 1)
                assert during["store"]["state"] == "down"
                assert during["store"]["since"] == down["store"]["since"]
                assert_waiting_untouched(vault, index + 1)
            during = await wait_probes(vault, 2)
            assert_waiting_untouched(vault, OUTAGE_CALLS)
            assert during["upload_errors_last_hour"] == 0
            assert during["states"]["pending"]["calls"] == OUTAGE_CALLS
            outage_seen = proxy.seen[start:]

            if outage == "refused":
                proxy.set_down(False)
            else:
                moto_s3.start()
            back_at = trio.current_time()
            # Every call is done within a few probe intervals (store_probe_max = 0.5 s).
            await wait_until(lambda: all_done(vault, OUTAGE_CALLS), within=4)
            drained_in = trio.current_time() - back_at
            after = await get_summary(vault)
        calls = assert_each_call_once_and_intact(vault, moto_s3, sent)

    store = down["store"]
    assert store["last_error"]
    assert store["checked_at"] and store["since"]
    if outage == "refused":
        assert "connect" in store["last_error"].lower(), store
        assert outage_seen == []  # nothing reached the endpoint, probes included
    else:
        assert store["code"] == "BadGateway", store
        assert "502" in store["last_error"], store
        # Before the store was known down: call 0's one PUT (502), then the probe it asked for.
        [(method, target, status)] = call_requests(outage_seen[: marked - start])
        assert (method, status) == ("PUT", 502)
        assert target.endswith("-call_0.m4a"), target
        # Once down: probes only, each a 502, one after another (about one per interval).
        probes = outage_seen[marked - start :]
        assert call_requests(probes) == [], probes
        assert len(probes) >= OUTAGE_CALLS + 1, probes
        assert all((m, s) == ("PUT", 502) for m, _, s in probes), probes
    assert after["store"]["state"] == "up"
    for call in calls:
        assert call["attempts"] == 1
        assert [e["kind"] for e in vault.events(call["id"])] == CLEAN_EVENTS
    print(f"\n{outage} outage: all {OUTAGE_CALLS} calls done {drained_in:.2f} s after S3 came back")


# -- 4. a restart in the middle of an outage ----------------------------------------------------


async def test_restart_during_an_outage_keeps_the_backlog(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    with trio.fail_after(40):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(moto_s3, endpoint=proxy.url, upload_timeout=1.0, upload_workers=4)
            )
            proxy.set_down(True)
            sent = await send_calls(vault, range(5))
            await wait_summary(vault, store_is("down"))
            assert_waiting_untouched(vault, 5)

            await vault.restart()  # still down
            summary = await get_summary(vault)
            assert summary["store"]["state"] == "down"  # the first probe of the new run
            assert summary["states"]["pending"]["calls"] == 5
            sent |= await send_calls(vault, range(5, 8))  # the new run takes calls too
            await wait_probes(vault, 2)
            assert_waiting_untouched(vault, 8)

            proxy.set_down(False)
            await wait_until(lambda: all_done(vault, 8), within=10)
        calls = assert_each_call_once_and_intact(vault, moto_s3, sent)

    for call in calls:
        assert call["attempts"] == 1
        assert [e["kind"] for e in vault.events(call["id"])] == CLEAN_EVENTS


# -- 5. S3 up before its bucket (compose) -------------------------------------------------------


async def test_bucket_created_after_start_then_calls_drain(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    bucket = dataclasses.replace(moto_s3, bucket="tr-vault-compose-late")
    with trio.fail_after(30):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(**s3_settings(bucket, endpoint=proxy.url))  # no start-up error
            first = await get_summary(vault)
            assert first["store"]["state"] == "down"
            assert first["store"]["code"] == "NoSuchBucket"
            sent = await send_calls(vault, range(4))
            summary = await wait_probes(vault, 2)
            assert summary["store"]["state"] == "down"
            assert summary["store"]["code"] == "NoSuchBucket"
            assert "create the bucket" in summary["store"]["last_error"]
            assert_waiting_untouched(vault, 4)
            assert call_requests(proxy.seen) == []  # down from the first probe: no call tried

            moto_s3.client().create_bucket(Bucket=bucket.bucket)
            await wait_until(lambda: all_done(vault, 4), within=10)
        calls = assert_each_call_once_and_intact(vault, bucket, sent)

    assert all(c["attempts"] == 1 for c in calls)
    assert (await get_summary(vault))["store"]["state"] == "up"


# -- 6. a clock-skew window ---------------------------------------------------------------------

SKEW_MESSAGE = "The difference between the request time and the current time is too large."


async def test_clock_skew_window_spends_no_attempts(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    workers = 3
    with trio.fail_after(30):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(moto_s3, endpoint=proxy.url, upload_workers=workers)
            )
            start = len(proxy.seen)
            # The window: every request, of any method, is refused as skewed.
            proxy.fail_next(10_000, status=403, code="RequestTimeTooSkewed", message=SKEW_MESSAGE)
            sent = await send_calls(vault, range(6))
            down = await wait_summary(vault, store_is("down"))
            during = await wait_probes(vault, 3)
            assert_waiting_untouched(vault, 6)
            window = proxy.seen[start:]
            proxy.reset_faults()  # the clock is synced
            await wait_until(lambda: all_done(vault, 6), within=10)
        calls = assert_each_call_once_and_intact(vault, moto_s3, sent)

    for summary in (down, during):
        assert summary["store"]["code"] == "RequestTimeTooSkewed"
        assert SKEW_MESSAGE in summary["store"]["last_error"]
        assert "sync it (NTP)" in summary["store"]["last_error"]
    assert all(status == 403 for _, _, status in window)
    # At most one call per worker was tried before the store was known down.
    assert len(call_requests(window)) <= workers, window
    assert all(c["attempts"] == 1 for c in calls)


# -- 7. a write-only key (SeaweedFS) ------------------------------------------------------------


async def test_write_only_key_is_a_store_outage_with_a_diagnosis(
    make_vault: VaultFactory, seaweed_s3: S3Bucket, seaweed_write_only: S3Bucket
) -> None:
    with trio.fail_after(30):
        async with open_fault_proxy("127.0.0.1", port_of(seaweed_s3)) as proxy:
            vault = await make_vault(**s3_settings(seaweed_write_only, endpoint=proxy.url))
            sent = await send_calls(vault, range(3))
            summary = await wait_probes(vault, 2)
            assert_waiting_untouched(vault, len(sent))
            metrics = (await vault.client.get(vault.url + "/metrics")).text
            seen = list(proxy.seen)

    store = summary["store"]
    assert store["state"] == "down"
    assert store["code"] == "AccessDenied"
    assert "may PUT but not HEAD" in store["last_error"]
    assert "grant it s3:GetObject" in store["last_error"]
    assert "tr_vault_store_up 0.0" in metrics.splitlines()
    # The store was down from the first probe: no call was tried. Each probe's PUT worked,
    # its HEAD was refused.
    assert call_requests(seen) == []
    assert ("PUT", 200) in {(m, s) for m, _, s in seen}
    assert {(m, s) for m, _, s in seen if m == "HEAD"} == {("HEAD", 403)}
    assert seaweed_s3.all_keys() == [PROBE_KEY]  # the key can write: the probe object is there


# -- 8. the journal locked by another writer ----------------------------------------------------


async def test_journal_locked_by_an_external_writer_leaves_nothing_stuck(
    make_vault: VaultFactory,
    moto_s3: MotoS3,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(tr_vault.journal, "BUSY_TIMEOUT", 0.5)  # a write waits 0.5 s, then fails
    monkeypatch.setattr(tr_vault.services.uploader, "LEASE_MARGIN", 1.0)  # leases of 2 + 1 s
    caplog.set_level(logging.WARNING, logger="tr_vault.services.uploader")
    workers = 2
    with trio.fail_after(40):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(
                    moto_s3, endpoint=proxy.url, upload_timeout=2.0, upload_workers=workers
                )
            )
            proxy.delay_next(workers, seconds=0.7, methods={"PUT"})  # uploads stay in flight
            sent = await send_calls(vault, range(6))
            await wait_until(
                lambda: len([c for c in vault.calls() if c["claimed_by"]]) == workers, within=5
            )
            locker = sqlite3.connect(
                vault.settings.db_path, isolation_level=None, check_same_thread=False
            )
            try:
                await trio.to_thread.run_sync(locker.execute, "BEGIN IMMEDIATE")
                claimed = [c for c in vault.calls() if c["claimed_by"]]
                expires = max(from_db(c["claim_expires_at"]) for c in claimed)
                # Hold the lock until the workers' journal writes have failed and every claim
                # taken before the lock has expired.
                await wait_until(
                    lambda: any("database is locked" in r.getMessage() for r in caplog.records),
                    within=10,
                )
                await wait_until(lambda: time.time() > expires, within=10)
                during = vault.calls()
            finally:
                await trio.to_thread.run_sync(locker.execute, "ROLLBACK")
                locker.close()
            released_at = trio.current_time()
            await wait_until(
                lambda: all_done(vault, 6) and not any(c["claimed_by"] for c in vault.calls()),
                within=15,
            )
            recovered_in = trio.current_time() - released_at
        calls = assert_each_call_once_and_intact(vault, moto_s3, sent)

    assert [c["state"] for c in during].count("done") == 0  # nothing could be written meanwhile
    assert {c["id"] for c in claimed} == {c["id"] for c in during if c["claimed_by"]}
    for call in calls:
        kinds = [e["kind"] for e in vault.events(call["id"])]
        assert "upload_error" not in kinds and "failed" not in kinds, kinds
        if call["id"] in {c["id"] for c in claimed}:  # its claim expired under the lock
            assert kinds[:2] == ["received", "requeued"], kinds
    print(f"\njournal lock released; all done {recovered_in:.1f} s later")
