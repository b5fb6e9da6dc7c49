"""S3 requests over a call's whole life, counted at a proxy in front of moto.

What a call costs the store is behaviour, not timing: one PUT, one HEAD to verify it, one HEAD
before the cache copy is pruned, and nothing at all while the store is down (only the store
probe asks then, one probe at a time, whatever the number of calls waiting).
"""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlsplit

import trio

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.faultproxy import FaultProxy, open_fault_proxy
from tests.helpers import SUCCESS
from tests.s3_fixtures import MotoS3
from tests.wire import fixture_bytes, rdio_trunk_recorder
from tr_vault.app import prune_once
from tr_vault.services.store_health import PROBE_KEY

M4A = fixture_bytes("call-9131-1764001234.m4a")
CALLS = 6
OUTAGE_CALLS = 5


def port_of(bucket: MotoS3) -> int:
    port = urlsplit(bucket.url).port
    assert port is not None
    return port


async def send(vault: Vault, index: int) -> None:
    """Call `index`: its own bytes, talkgroup-second and file name; it must be acknowledged."""
    audio = M4A + f"\n#request count call {index}\n".encode()
    start = 1764001234 + 61 * index
    parts = rdio_trunk_recorder(
        audio, date_time=str(start), audio_name=f"9131-{start}_851012500.0-call_{index}.m4a"
    )
    response = await vault.post("/api/call-upload", parts)
    assert (response.status_code, response.text) == (200, SUCCESS), index


def per_call(
    seen: list[tuple[str, str, int]], vault: Vault, bucket: str
) -> dict[str, Counter[str]]:
    """Requests by object key of each call (method counts); probe requests are left out."""
    keys = {f"/{bucket}/audio/{c['key']}": c["key"] for c in vault.calls()}
    counts: dict[str, Counter[str]] = {key: Counter() for key in keys.values()}
    for method, target, _status in seen:
        path = target.split("?", 1)[0]
        if path.endswith(PROBE_KEY):
            continue
        assert path in keys, (method, target)  # no request about anything but our calls
        counts[keys[path]][method] += 1
    return counts


def probes_only(seen: list[tuple[str, str, int]]) -> bool:
    return all(target.split("?", 1)[0].endswith(PROBE_KEY) for _, target, _ in seen)


def all_done(vault: Vault, count: int) -> bool:
    calls = vault.calls()
    return len(calls) == count and all(c["state"] == "done" for c in calls)


async def test_a_call_costs_one_put_and_two_heads_over_its_life(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    with trio.fail_after(40):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(moto_s3, endpoint=proxy.url, s3_cache_retention=3600)
            )
            await wait_until(lambda: bool(proxy.seen))  # the start-up probe
            start = len(proxy.seen)
            for index in range(CALLS):
                await send(vault, index)
            await wait_until(lambda: all_done(vault, CALLS))
            uploads = proxy.seen[start:]
            conn = vault.db()
            conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
            conn.commit()
            conn.close()
            pruned_from = len(proxy.seen)
            report = await prune_once(vault.settings, dry_run=False)
            pruning = proxy.seen[pruned_from:]
    assert report.count("delete") == CALLS

    upload_counts = per_call(uploads, vault, moto_s3.bucket)
    assert upload_counts == {key: Counter(PUT=1, HEAD=1) for key in upload_counts}, uploads
    assert all(status == 200 for _, _, status in uploads), uploads
    prune_counts = per_call(pruning, vault, moto_s3.bucket)
    assert prune_counts == {key: Counter(HEAD=1) for key in prune_counts}, pruning
    assert len(upload_counts) == CALLS


async def _down_with_calls(vault: Vault, proxy: FaultProxy, moto_s3: MotoS3) -> int:
    """Stop moto (the proxy answers 502), let call 0 find it out, then send the others."""
    moto_s3.stop()
    await send(vault, 0)
    await wait_until(lambda: vault.rows("SELECT state FROM store_health") == [{"state": "down"}])
    marked = len(proxy.seen)
    for index in range(1, OUTAGE_CALLS):
        await send(vault, index)
    await trio.sleep(1.5)  # a few probe intervals (store_probe_max = 0.5 s)
    return marked


async def test_an_outage_sends_probes_only_and_no_request_per_call(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    with trio.fail_after(40):
        async with open_fault_proxy("127.0.0.1", port_of(moto_s3)) as proxy:
            vault = await make_vault(
                **s3_settings(moto_s3, endpoint=proxy.url, upload_timeout=1.0, upload_workers=4)
            )
            await wait_until(lambda: bool(proxy.seen))
            start = len(proxy.seen)
            marked = await _down_with_calls(vault, proxy, moto_s3)
            outage = proxy.seen[marked:]
            finding_out = proxy.seen[start:marked]
            moto_s3.start()
            back = len(proxy.seen)
            await wait_until(lambda: all_done(vault, OUTAGE_CALLS), within=10)
            recovery = proxy.seen[back:]

    # Finding the outage: call 0's one PUT, then probes; nothing for the calls that wait.
    counts = per_call(finding_out, vault, moto_s3.bucket)
    assert sum(counts.values(), Counter()) == Counter(PUT=1), finding_out
    # Once down: probes only, however many calls arrive; at least one per interval.
    assert outage and probes_only(outage), outage
    # Back up: each call once more, one PUT and one HEAD, each answered.
    counts = per_call([r for r in recovery if r[2] != 502], vault, moto_s3.bucket)
    assert counts == {key: Counter(PUT=1, HEAD=1) for key in counts}, recovery
    assert len(counts) == OUTAGE_CALLS
    for call in vault.calls():
        assert call["attempts"] == 1, call  # the outage was not charged to any call
