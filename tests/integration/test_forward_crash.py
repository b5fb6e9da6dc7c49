"""A `tr-vault serve` SIGKILLed while deliveries to rdio-scanner are in flight, then restarted.

The server is its own process (local-only mode); its one destination is the fake rdio-scanner
of tests/downstream.py, slowed so that deliveries are on the wire when the process is killed.
The restarted server (same data dir) gives the dead run's claims back and delivers every call:
each reaches the fake with its own bytes, only the ones in flight at the kill may arrive twice,
nothing fails and no attempt is charged for the interruption.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path

import httpx
import trio

from tests.conftest import wait_until
from tests.downstream import FakeRdioScanner, open_rdio_scanner
from tests.helpers import SUCCESS, free_port, log_tail, post_call, query, scalar, serve_process, sha
from tests.wire import fixture_bytes, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
RDIO_KEY = "rdio-secret"
CALLS = 10
BASE = 1764001234


def audio(n: int) -> bytes:
    return M4A + f"\n#call {n}\n".encode()


def start_time(n: int) -> int:
    return BASE + 60 * n  # a minute apart: outside rdio-scanner's duplicate window


def received(rdio: FakeRdioScanner) -> Counter[tuple[int, bytes]]:
    """(dateTime, audio bytes) of every upload request the fake saw, resends included."""
    got: Counter[tuple[int, bytes]] = Counter()
    for request in rdio.requests:
        date_time, part = request.part("dateTime"), request.part("audio")
        assert date_time is not None and part is not None, request.field_names
        got[(int(date_time.text), part.value)] += 1
    return got


async def test_sigkill_mid_delivery_then_restart_delivers_every_call(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    db = data_dir / "vault.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(60):
        async with open_rdio_scanner({RDIO_KEY: None}) as rdio:
            rdio.delay = 0.5  # each delivery is on the wire for half a second
            toml = tmp_path / "forward.toml"
            toml.write_text(
                "[[destinations]]\n"
                'name = "rdio"\n'
                'kind = "rdio-scanner"\n'
                f'url = "{rdio.url}"\n'
                f'api_key = "{RDIO_KEY}"\n'
                "concurrency = 2\n"
                'timeout = "5s"\n'
            )
            env = {
                "TR_VAULT_DATA_DIR": str(data_dir),
                "TR_VAULT_LISTEN": f"127.0.0.1:{port}",
                "TR_VAULT_API_KEYS": "tr-key",
                "TR_VAULT_FORWARD_FILE": str(toml),
                "TR_VAULT_FORWARD_PROBE_MAX": "0.5",
                "TR_VAULT_SHUTDOWN_GRACE": "2",
            }
            first_log = tmp_path / "serve-1.log"
            async with serve_process(env, cwd=tmp_path, stderr=first_log) as process:
                async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                    for n in range(CALLS):
                        parts = rdio_trunk_recorder(
                            audio(n),
                            date_time=str(start_time(n)),
                            audio_name=f"9131-{start_time(n)}_851012500.0-call_{n}.m4a",
                        )
                        response = await post_call(client, url, parts)
                        assert (response.status_code, response.text) == (200, SUCCESS)
                # Some deliveries done, others claimed and on the wire, the rest waiting.
                await wait_until(
                    lambda: (
                        scalar(db, "SELECT count(*) FROM deliveries WHERE state = 'done'") >= 2
                        and scalar(db, "SELECT count(claimed_by) FROM deliveries") >= 1
                    ),
                    within=20,
                )
                process.send_signal(signal.SIGKILL)  # this server's pid only
                await process.wait()
                assert process.returncode == -signal.SIGKILL, log_tail(first_log)

            # What the dead run left: done before the kill, and claimed (in flight) at it.
            rows = query(db, "SELECT call_id, state, claimed_by FROM deliveries ORDER BY call_id")
            assert len(rows) == CALLS, rows
            done_before = {r["call_id"] for r in rows if r["state"] == "done"}
            in_flight = {r["call_id"] for r in rows if r["claimed_by"] is not None}
            assert done_before and in_flight, rows
            assert len(done_before) < CALLS, "all delivered before the kill: nothing was tested"
            assert {r["state"] for r in rows if r["call_id"] in in_flight} == {"pending"}

            rdio.delay = 0.05
            second_log = tmp_path / "serve-2.log"
            async with serve_process(env, cwd=tmp_path, stderr=second_log):
                await wait_until(
                    lambda: (
                        scalar(db, "SELECT count(*) FROM deliveries WHERE state != 'done'") == 0
                    ),
                    within=30,
                )

    calls = query(db, "SELECT id, sha256 FROM calls ORDER BY id")
    assert len(calls) == CALLS
    call_of = {c["sha256"]: c["id"] for c in calls}
    got = received(rdio)
    sent = {(start_time(n), audio(n)) for n in range(CALLS)}
    # Every call reached the fake, with its exact bytes; nothing else did.
    assert set(got) == sent, sorted(set(got) ^ sent)
    twice = {key for key, count in got.items() if count > 1}
    assert all(count <= 2 for count in got.values()), got.values()
    twice_ids = {call_of[sha(data)] for _, data in twice}
    assert twice_ids <= in_flight, (
        f"calls {sorted(twice_ids - in_flight)} reached rdio-scanner twice but were"
        f" not in flight at the kill (in flight: {sorted(in_flight)})"
    )
    assert twice_ids.isdisjoint(done_before)
    assert rdio.duplicates == len(twice)  # the resends were rdio-scanner duplicates, dropped
    assert len(rdio.calls) == CALLS

    final = query(db, "SELECT call_id, state, attempts FROM deliveries ORDER BY call_id")
    assert [r["state"] for r in final] == ["done"] * CALLS, final
    # One attempt each: the interruption is not charged to the calls it cut off.
    assert [r["attempts"] for r in final] == [1] * CALLS, final
    assert scalar(db, "SELECT count(*) FROM events WHERE kind = 'forward_failed'") == 0
    requeued = query(
        db,
        "SELECT call_id, detail FROM events WHERE kind = 'forward_requeued' ORDER BY call_id",
    )
    assert {r["call_id"] for r in requeued} == in_flight, requeued
    assert all("interrupted" in r["detail"] for r in requeued), requeued
