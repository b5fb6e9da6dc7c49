"""A real tr_vault forwarding to the fake rdio-scanner, OpenMHz and Broadcastify at once.

Calls come in through trunk-recorder's own rdio request (tests/wire.py); the destinations are
the downstream fakes of tests/downstream.py; nothing of tr_vault's is mocked. Real time, kept
short by `forward_probe_max` (0.5 s): every wait is a poll with a deadline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.conftest import VaultFactory, wait_until
from tests.downstream import (
    FakeBroadcastify,
    FakeOpenMHz,
    FakeRdioScanner,
    open_broadcastify,
    open_openmhz,
    open_rdio_scanner,
)
from tests.wire import fixture_bytes, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
RDIO_KEY, OMHZ_KEY, BCFY_KEY = "rdio-secret", "omhz-secret", "bcfy-secret"
FAST = {"forward_probe_max": 0.5, "forward_misconfigured_retry": 0.5, "read_keys": "r-all"}


def forward_toml(rdio: str, omhz: str, bcfy: str, *, rdio_key: str = RDIO_KEY) -> str:
    return f"""
[[destinations]]
name = "rdio"
kind = "rdio-scanner"
url = "{rdio}"
api_key = "{rdio_key}"

[[destinations]]
name = "omhz"
kind = "openmhz"
url = "{omhz}"
concurrency = 1

[destinations.per_system.metro]
api_key = "{OMHZ_KEY}"

[[destinations]]
name = "bcfy"
kind = "broadcastify"
url = "{bcfy}"

[destinations.per_system.metro]
api_key = "{BCFY_KEY}"
system_id = 1234
"""


def audio(n: int) -> bytes:
    """The fixture call with a byte of its own: each call's bytes are told apart."""
    return M4A + bytes([n])


def start_time(n: int) -> int:
    return 1764001234 + 60 * n  # a minute apart: no duplicate window of rdio-scanner's


async def upload(vault: Any, n: int) -> int:
    parts = rdio_trunk_recorder(
        audio(n), date_time=str(start_time(n)), audio_name=f"9131-{start_time(n)}.m4a"
    )
    response = await vault.post("/api/call-upload", parts)
    assert response.status_code == 200, response.text
    [row] = vault.rows("SELECT max(id) AS id FROM calls")
    return int(row["id"])


def rdio_got(rdio: FakeRdioScanner) -> list[tuple[int, bytes]]:
    return [(int(c.fields["dateTime"]), c.audio) for c in rdio.calls]


def omhz_got(omhz: FakeOpenMHz) -> list[tuple[int, bytes]]:
    return [(int(c.fields["start_time"]), c.audio) for c in omhz.calls]


def bcfy_got(bcfy: FakeBroadcastify) -> list[tuple[int, bytes]]:
    return [(int(c.metadata["start_time"]), c.audio) for c in bcfy.calls]


def want(ns: range | list[int]) -> list[tuple[int, bytes]]:
    return [(start_time(n), audio(n)) for n in ns]


def deliveries(vault: Any, destination: str) -> list[dict[str, Any]]:
    return vault.rows(
        "SELECT call_id, state, attempts, last_answer FROM deliveries WHERE destination = ?"
        " ORDER BY call_id",
        destination,
    )


def health(vault: Any, name: str) -> str | None:
    rows = vault.rows("SELECT state FROM destination_health WHERE name = ?", name)
    return str(rows[0]["state"]) if rows else None


async def summary(vault: Any) -> dict[str, dict[str, Any]]:
    response = await vault.client.get(
        vault.url + "/api/journal/summary", headers={"Authorization": "Bearer r-all"}
    )
    assert response.status_code == 200, response.text
    return {row["name"]: row for row in response.json()["forward"]}


async def already_at_broadcastify(bcfy: FakeBroadcastify, n: int) -> None:
    """Call `n` reaches Broadcastify by another way first (the site's old direct upload)."""
    meta = {"talkgroup": 9131, "start_time": start_time(n), "short_name": "metro"}
    async with httpx.AsyncClient() as client:
        files = {"metadata": ("call_meta.json", json.dumps(meta), "application/json")}
        data = {"callDuration": "5.000000", "systemId": "1234", "apiKey": BCFY_KEY}
        answer = (await client.post(bcfy.calls_url, files=files, data=data)).text
        assert answer.startswith("0 "), answer
        assert (await client.put(answer[2:], content=audio(n))).status_code == 200


async def test_three_destinations_one_down_for_longer_than_any_backoff(
    tmp_path: Path, make_vault: VaultFactory
) -> None:
    with trio.fail_after(60):
        async with (
            open_rdio_scanner({RDIO_KEY: {11}}) as rdio,
            open_openmhz({"metro": OMHZ_KEY}) as omhz,
            open_broadcastify({1234: BCFY_KEY}) as bcfy,
        ):
            await already_at_broadcastify(bcfy, 1)
            toml = tmp_path / "forward.toml"
            toml.write_text(forward_toml(rdio.url, omhz.url, bcfy.calls_url))
            vault = await make_vault(forward_file=str(toml), **FAST)
            ids = [await upload(vault, n) for n in range(3)]
            await wait_until(lambda: len(omhz.calls) == 3 and len(rdio.calls) == 3)
            await wait_until(lambda: len(bcfy.calls) == 3 and bcfy.skipped == 1)

            await omhz.go_down()
            ids += [await upload(vault, n) for n in range(3, 7)]
            # The healthy ones get theirs while OpenMHz is down.
            await wait_until(lambda: len(rdio.calls) == 7 and len(bcfy.calls) == 7)
            await wait_until(lambda: health(vault, "omhz") == "down")
            # Down for several probe intervals (each at most 0.5 s): longer than any backoff.
            errors = "SELECT count(*) AS n FROM events WHERE kind = 'forward_error'"
            await wait_until(lambda: vault.rows(errors)[0]["n"] >= 6)
            assert omhz_got(omhz) == want(range(3))
            assert [d["attempts"] for d in deliveries(vault, "omhz")][3:] == [0] * 4
            during = await summary(vault)
            assert (
                during["omhz"]["state"] == "down" and during["omhz"]["deliveries"]["pending"] == 4
            )
            assert during["rdio"]["state"] == "up" and during["rdio"]["deliveries"]["done"] == 7

            await omhz.come_up()
            await wait_until(lambda: len(omhz.calls) == 7)
            await wait_until(lambda: {d["state"] for d in deliveries(vault, "omhz")} == {"done"})
            after = await summary(vault)
            assert after["omhz"]["state"] == "up" and after["omhz"]["deliveries"]["done"] == 7
            assert after["omhz"]["lag_seconds"] == 0.0
            await trio.sleep(0.3)  # no late duplicate trails in (not a timing assertion)

    # Every call at every destination, exactly once, with its own bytes; oldest first at the
    # one that was down.
    assert sorted(rdio_got(rdio)) == want(range(7)) and rdio.duplicates == 0
    assert omhz_got(omhz) == want(range(7))
    assert sorted(bcfy_got(bcfy)) == want(range(7))  # call 1 once: by the other way
    assert bcfy.skipped == 1
    for name in ("rdio", "omhz", "bcfy"):
        rows = deliveries(vault, name)
        assert [d["call_id"] for d in rows] == ids
        assert {d["state"] for d in rows} == {"done"}, (name, rows)
        # One attempt each: the outage's probes are not charged to the calls.
        assert [d["attempts"] for d in rows] == [1] * 7, (name, rows)
    assert "SKIPPED" in deliveries(vault, "bcfy")[1]["last_answer"]
    first = omhz.calls[0].fields
    assert (first["talkgroup_num"], first["freq"]) == ("9131", "851012500")
    assert rdio.calls[0].fields["system"] == "11" and rdio.calls[0].fields["talkgroup"] == "9131"


async def test_wrong_key_pauses_the_destination_until_fixed(
    tmp_path: Path, make_vault: VaultFactory
) -> None:
    with trio.fail_after(60):
        async with (
            open_rdio_scanner({RDIO_KEY: {11}}) as rdio,
            open_openmhz({"metro": OMHZ_KEY}) as omhz,
            open_broadcastify({1234: BCFY_KEY}) as bcfy,
        ):
            toml = tmp_path / "forward.toml"
            toml.write_text(forward_toml(rdio.url, omhz.url, bcfy.calls_url, rdio_key="wrong"))
            vault = await make_vault(forward_file=str(toml), **FAST)
            ids = [await upload(vault, n) for n in range(3)]
            await wait_until(lambda: len(omhz.calls) == 3 and len(bcfy.calls) == 3)
            await wait_until(lambda: health(vault, "rdio") == "misconfigured")
            # Re-probed every 0.5 s, and still nothing is spent or failed.
            await wait_until(lambda: len(rdio.requests) >= 3)
            assert rdio.calls == []
            waiting = deliveries(vault, "rdio")
            assert [(d["state"], d["attempts"]) for d in waiting] == [("pending", 0)] * 3
            row = (await summary(vault))["rdio"]
            assert row["state"] == "misconfigured" and "401" in row["last_error"]
            assert row["deliveries"] == {"pending": 3, "done": 0, "failed": 0, "skipped": 0}

            # The operator fixes the key, restarts and asks for a retry.
            toml.write_text(forward_toml(rdio.url, omhz.url, bcfy.calls_url))
            await vault.stop()
            from click.testing import CliRunner

            from tr_vault.cli import main

            result = CliRunner().invoke(
                main,
                ["forward", "retry", "--destination", "rdio"],
                env={
                    "TR_VAULT_DATA_DIR": str(vault.settings.data_dir),
                    "TR_VAULT_FORWARD_FILE": str(toml),
                },
            )
            assert result.exit_code == 0, result.output
            # Its deliveries were due all along (nothing was charged): none needed moving.
            assert result.output == "re-queued 0 delivery(ies) for rdio\n"
            await vault.start()
            await wait_until(lambda: len(rdio.calls) == 3)
            await wait_until(lambda: {d["state"] for d in deliveries(vault, "rdio")} == {"done"})
            assert (await summary(vault))["rdio"]["state"] == "up"
    assert sorted(rdio_got(rdio)) == want(range(3))
    assert [d["call_id"] for d in deliveries(vault, "rdio")] == ids
    assert [d["attempts"] for d in deliveries(vault, "rdio")] == [1] * 3
    assert len(omhz.calls) == 3 and len(bcfy.calls) == 3  # the others only once
