"""Acknowledged calls survive restarts; crash leftovers are cleaned; limits protect the disk."""

from __future__ import annotations

import hashlib

import httpx
import pytest
import trio

from tests.conftest import Vault, VaultFactory
from tests.wire import fixture_bytes, multipart, openmhz, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")


async def test_restart_keeps_everything_and_removes_stray_temp_files(vault: Vault) -> None:
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    assert (await vault.post("/metro/upload", openmhz(M4A_2))).status_code == 200
    before = vault.calls()
    await vault.stop()
    # A crash mid-upload leaves a temp file behind.
    stray = vault.settings.audio_dir / ".incoming" / "deadbeef.part"
    stray.write_bytes(b"half a call")

    await vault.start()
    assert not stray.exists()
    assert vault.calls() == before
    for call in before:
        data = vault.audio_path(call["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == call["sha256"]
    # The restarted server still de-duplicates against what it stored before.
    again = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert again.status_code == 200
    assert len(vault.calls()) == 2


async def test_readiness_and_liveness(vault: Vault) -> None:
    live = await vault.client.get(vault.url + "/healthz")
    assert live.status_code == 200
    ready = await vault.client.get(vault.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"journal": "ok", "audio_dir": "ok"}}


async def test_stalled_upload_is_cut_and_leaves_nothing(make_vault: VaultFactory) -> None:
    vault = await make_vault(idle_timeout=1)
    body, content_type = multipart(rdio_trunk_recorder(M4A))
    host, port = vault.url.removeprefix("http://").split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    head = (
        f"POST /api/call-upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    await stream.send_all(head + body[:3000])  # then silence
    received = b""
    with trio.fail_after(20):
        while chunk := await stream.receive_some():
            received += chunk
    await stream.aclose()
    assert received.startswith(b"HTTP/1.1 408") or received == b""
    assert vault.incoming() == []
    assert vault.calls() == []


async def test_slow_sender_that_keeps_sending_is_not_cut(make_vault: VaultFactory) -> None:
    vault = await make_vault(idle_timeout=1)
    body, content_type = multipart(rdio_trunk_recorder(M4A))
    parts = [body[i : i + 1500] for i in range(0, len(body), 1500)]

    async def trickle():  # type: ignore[no-untyped-def]
        for piece in parts:  # ~9 pieces at 0.3 s: longer than the idle timeout in total
            yield piece
            await trio.sleep(0.3)

    with trio.fail_after(20):
        response = await vault.client.post(
            vault.url + "/api/call-upload",
            content=trickle(),
            headers={"Content-Type": content_type},
        )
    assert response.status_code == 200
    assert len(vault.calls()) == 1


async def test_uploads_in_flight_are_capped(make_vault: VaultFactory) -> None:
    vault = await make_vault(max_inflight_uploads=1, inflight_wait=0.2, idle_timeout=30)
    body, content_type = multipart(rdio_trunk_recorder(M4A))
    host, port = vault.url.removeprefix("http://").split(":")
    holder = await trio.open_tcp_stream(host, int(port))
    await holder.send_all(
        (
            f"POST /api/call-upload HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body[:2000]
    )
    # Wait until the server has the first upload's temp file open: it holds the only slot.
    with trio.fail_after(10):
        while not vault.incoming():
            await trio.sleep(0.01)
    busy = await vault.post("/metro/upload", openmhz(M4A_2))
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "30"
    await holder.send_all(body[2000:])
    with trio.fail_after(10):
        reply = await holder.receive_some()
    assert reply.startswith(b"HTTP/1.1 200")
    await holder.aclose()
    assert (await vault.post("/metro/upload", openmhz(M4A_2))).status_code == 200
    assert len(vault.calls()) == 2


async def test_full_disk_watermark_refuses_with_507(make_vault: VaultFactory) -> None:
    vault = await make_vault(min_free_mb=10**9)  # more free space than any disk has
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert response.status_code == 507
    assert "retry later" in response.text
    assert vault.calls() == []


async def test_anonymous_uploads_on_loopback(make_vault: VaultFactory) -> None:
    vault = await make_vault(api_keys="")
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, key=""))
    assert response.status_code == 200


async def test_graceful_shutdown_finishes_an_upload_in_flight(vault: Vault) -> None:
    body, content_type = multipart(rdio_trunk_recorder(M4A))

    async def slow():  # type: ignore[no-untyped-def]
        yield body[:4000]
        await trio.sleep(0.5)
        yield body[4000:]

    result: list[httpx.Response] = []

    async def upload() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            result.append(
                await client.post(
                    vault.url + "/api/call-upload",
                    content=slow(),
                    headers={"Content-Type": content_type},
                )
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        with trio.fail_after(10):
            while not vault.incoming():
                await trio.sleep(0.01)
        await vault.stop()
    assert result[0].status_code == 200
    assert len(vault.calls()) == 1


async def test_a_locked_journal_refuses_with_503_and_leaves_no_file(
    make_vault: VaultFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tr_vault.journal.BUSY_TIMEOUT", 0.2)
    vault = await make_vault()
    blocker = vault.db()
    blocker.execute("BEGIN IMMEDIATE")  # an operator's long write transaction
    try:
        refused = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    finally:
        blocker.rollback()
        blocker.close()
    assert refused.status_code == 503
    assert "retry later" in refused.text
    assert not list(vault.settings.audio_dir.rglob("*.m4a"))
    # The recorder's retry lands under the call's own name.
    again = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert again.status_code == 200
    [call] = vault.calls()
    assert call["key"] == "metro/2025-11-24/9131-1764001234_851012500.0-call_123.m4a"
