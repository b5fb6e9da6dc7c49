"""Who may write and read what: key scopes on uploads and reads, answers no browser runs,
every bad read parameter a 400 naming it, and servers that are public although on loopback."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import S3Bucket
from tests.wire import (
    fixture_bytes,
    openmhz,
    rdio_trunk_recorder,
    sdrtrunk,
    trunk_recorder_meta_upload,
)
from tr_vault.app import prune_once
from tr_vault.config import load_settings
from tr_vault.errors import ConfigError
from tr_vault.web.client import TrustedProxies, client_address

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
SUCCESS = "Call imported successfully.\n"
CSP = "default-src 'none'; sandbox"

UPLOAD_KEYS = "up11:11,upmetro:metro,both:11|metro,up99:99,all-key"
READ_KEYS = "r-metro:metro,r-11:11,r-both:11|Metro,r-all"


async def get(
    vault: Vault,
    path: str,
    key: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    **kw: Any,
) -> httpx.Response:
    sent = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    return await vault.client.get(vault.url + path, headers=sent, **kw)


def assert_no_browser_runs_it(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == CSP


def assert_json(response: httpx.Response) -> None:
    assert response.headers["content-type"] == "application/json"
    assert_no_browser_runs_it(response)
    response.json()


# -- uploads: a scope is matched against the one system identifier each protocol uses ------


async def test_a_label_never_widens_an_upload_key(make_vault: VaultFactory) -> None:
    vault = await make_vault(api_keys=UPLOAD_KEYS)
    refused = "Invalid API key for system 11 talkgroup 9131.\n"
    # upmetro may write metro; system 11 calling itself "metro" is still system 11.
    for label in ("", "metro", "METRO"):
        response = await vault.post(
            "/api/call-upload", rdio_trunk_recorder(M4A, key="upmetro", system_label=label)
        )
        assert response.status_code == 401, label
        assert response.text == refused
    # The meta route: meta.short_name is a label too; the `system` form field decides.
    meta = await vault.post(
        "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV, key="upmetro")
    )
    assert meta.status_code == 401
    assert meta.text == refused
    # SDRTrunk sends the key first: refused before the audio, with the same rule.
    early = await vault.post("/api/call-upload", sdrtrunk(M4A_2, key="upmetro"))
    assert early.status_code == 401
    assert early.text == "Invalid API key for system 11 talkgroup 2201.\n"
    # OpenMHz: the path's short name decides, not a field of the form.
    assert (await vault.post("/county/upload", openmhz(M4A, api_key="upmetro"))).status_code == 401
    assert vault.calls() == []
    assert vault.incoming() == []

    # The key for system 11 may write it, whatever label it gives.
    ok = await vault.post(
        "/api/call-upload", rdio_trunk_recorder(M4A, key="up11", system_label="county")
    )
    assert ok.status_code == 200
    assert ok.text == SUCCESS
    [call] = vault.calls()
    assert (call["system"], call["system_label"]) == ("11", "county")


async def test_a_key_for_both_forms_of_one_system_writes_both_protocols(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(api_keys=UPLOAD_KEYS)
    rdio = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, key="both"))
    assert (rdio.status_code, rdio.text) == (200, SUCCESS)
    meta = await vault.post(
        "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV, key="both")
    )
    assert (meta.status_code, meta.text) == (200, SUCCESS)
    omhz = await vault.post("/metro/upload", openmhz(M4A_2, api_key="both"))
    assert (omhz.status_code, omhz.text) == (200, "")
    assert (await vault.post("/METRO/upload", openmhz(M4A_2, api_key="both"))).status_code == 200
    # ... and nothing else: another id, another short name.
    other = await vault.post(
        "/api/call-upload", rdio_trunk_recorder(M4A_2, key="both", system="12")
    )
    assert (other.status_code, other.text) == (
        401,
        "Invalid API key for system 12 talkgroup 9131.\n",
    )
    county = await vault.post("/county/upload", openmhz(M4A, api_key="both"))
    assert (county.status_code, county.text) == (401, "API Keys do not match!\n")
    assert sorted((c["protocol"], c["system"]) for c in vault.calls()) == [
        ("openmhz", "metro"), ("rdio", "11"), ("rdio-tr", "11"),
    ]  # fmt: skip


# -- reads: a scoped key sees only its systems ---------------------------------------------


async def _four_systems(vault: Vault) -> dict[str, int]:
    """rdio 11 labelled metro, OpenMHz metro, OpenMHz county, and rdio 99 that *calls itself*
    metro: the ids of their calls by a short name."""
    uploads = [
        ("/api/call-upload", rdio_trunk_recorder(M4A, key="all-key")),
        ("/metro/upload", openmhz(M4A_2, api_key="all-key")),
        ("/county/upload", openmhz(WAV, api_key="all-key", filename="county-1.wav")),
        (
            "/api/call-upload",
            rdio_trunk_recorder(M4A + b"99", key="up99", system="99", audio_name="spoof.m4a"),
        ),
    ]
    for path, parts in uploads:
        response = await vault.post(path, parts)
        assert response.status_code == 200, response.text
    by = {(c["system"], c["system_label"]): c["id"] for c in vault.calls()}
    return {
        "rdio11": by[("11", "metro")],
        "metro": by[("metro", "metro")],
        "county": by[("county", "county")],
        "spoof99": by[("99", "metro")],
    }


async def _listed(vault: Vault, key: str | None, **params: str) -> set[int]:
    response = await get(vault, "/api/calls", key, params=params)
    assert response.status_code == 200, response.text
    assert_json(response)
    return {c["id"] for c in response.json()["calls"]}


async def test_a_scoped_read_key_sees_only_its_systems(make_vault: VaultFactory) -> None:
    vault = await make_vault(api_keys=UPLOAD_KEYS, read_keys=READ_KEYS)
    ids = await _four_systems(vault)

    # The scope matches `system` only: a label (client-sent) shows nothing to anyone.
    assert await _listed(vault, "r-metro") == {ids["metro"]}
    assert await _listed(vault, "r-11") == {ids["rdio11"]}
    assert await _listed(vault, "r-both") == {ids["rdio11"], ids["metro"]}
    assert await _listed(vault, "r-all") == set(ids.values())
    # A filter narrows within the scope, never beyond it.
    assert await _listed(vault, "r-metro", system="county") == set()
    assert await _listed(vault, "r-both", system="metro") == {ids["rdio11"], ids["metro"]}
    assert await _listed(vault, "r-all", system="metro") == {
        ids["rdio11"], ids["metro"], ids["spoof99"],
    }  # fmt: skip
    # An upload key is not a read key once read keys are set.
    assert (await get(vault, "/api/calls", "all-key")).status_code == 401

    # One call and its audio: another system's call is a 404, as if it did not exist.
    nowhere = await get(vault, "/api/calls/999999", "r-metro")
    assert (nowhere.status_code, nowhere.json()) == (404, {"error": "no call 999999"})
    for other in ("rdio11", "county", "spoof99"):
        call_id = ids[other]
        for path in (f"/api/calls/{call_id}", f"/api/calls/{call_id}/audio"):
            response = await get(vault, path, "r-metro")
            assert response.status_code == 404, path
            assert response.json() == {"error": f"no call {call_id}"}
            assert_json(response)
    mine = await get(vault, f"/api/calls/{ids['metro']}", "r-metro")
    assert mine.status_code == 200
    assert mine.json()["call"]["system"] == "metro"
    audio = await get(vault, f"/api/calls/{ids['metro']}/audio", params={"key": "r-metro"})
    assert (audio.status_code, audio.content) == (200, M4A_2)
    assert (await get(vault, f"/api/calls/{ids['rdio11']}/audio", "r-all")).content == M4A

    # The summary counts the calls of the systems the key may see, and nothing else.
    async def summary_for(key: str) -> Any:
        response = await get(vault, "/api/journal/summary", key)
        assert_json(response)
        return response.json()

    metro = await summary_for("r-metro")
    assert metro["states"]["done"] == {"calls": 1, "bytes": len(M4A_2)}
    assert metro["cached"] == {"calls": 1, "bytes": len(M4A_2)}
    both = await summary_for("r-both")
    assert both["states"]["done"] == {"calls": 2, "bytes": len(M4A) + len(M4A_2)}
    everything = await summary_for("r-all")
    assert everything["states"]["done"]["calls"] == 4
    assert everything["cached"]["calls"] == 4


async def test_summary_of_a_scope_leaves_out_other_systems_errors(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(api_keys=UPLOAD_KEYS, read_keys=READ_KEYS)
    ids = await _four_systems(vault)
    conn = vault.db()
    conn.execute("UPDATE calls SET state = 'pending' WHERE id = ?", (ids["county"],))
    conn.execute(
        "INSERT INTO events (call_id, at, kind, detail) VALUES (?, datetime('now'),"
        " 'upload_error', 'county-secret')",
        (ids["county"],),
    )
    conn.commit()
    conn.close()
    metro = (await get(vault, "/api/journal/summary", "r-metro")).json()
    assert metro["oldest_pending"] is None
    assert metro["last_error"] is None
    assert metro["upload_errors_last_hour"] == 0
    assert metro["states"]["pending"] == {"calls": 0, "bytes": 0}
    everything = (await get(vault, "/api/journal/summary", "r-all")).json()
    assert everything["oldest_pending"]["id"] == ids["county"]
    assert everything["last_error"]["error"] == "county-secret"
    assert everything["upload_errors_last_hour"] == 1


async def test_upload_keys_read_with_their_scopes_when_no_read_key_is_set(
    make_vault: VaultFactory,
) -> None:
    # TR_VAULT_PUBLIC: on loopback, yet not private, so reads need a key: the upload keys.
    vault = await make_vault(api_keys=UPLOAD_KEYS, public=True)
    ids = await _four_systems(vault)
    assert (await get(vault, "/api/calls")).status_code == 401
    assert (await get(vault, "/api/calls", "nope")).status_code == 401
    assert await _listed(vault, "upmetro") == {ids["metro"]}
    assert await _listed(vault, "up11") == {ids["rdio11"]}
    assert await _listed(vault, "all-key") == set(ids.values())
    assert (await get(vault, f"/api/calls/{ids['rdio11']}/audio", "upmetro")).status_code == 404
    # Probes stay open (no call data in them).
    assert (await get(vault, "/healthz")).status_code == 200


async def test_open_reads_on_a_private_loopback_server_are_unchanged(vault: Vault) -> None:
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    assert len((await get(vault, "/api/calls")).json()["calls"]) == 1
    # Reads are open to everyone: a scoped key given along changes nothing.
    assert len((await get(vault, "/api/calls", "other-key")).json()["calls"]) == 1


# -- answers no browser can run -------------------------------------------------------------


async def test_cached_audio_answers_carry_nosniff_and_a_sandbox(vault: Vault) -> None:
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    [call] = vault.calls()
    url = f"/api/calls/{call['id']}/audio"
    whole = await get(vault, url)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "audio/mp4"
    assert_no_browser_runs_it(whole)
    part = await get(vault, url, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206
    assert part.content == M4A[:10]
    assert_no_browser_runs_it(part)
    same = await get(vault, url, headers={"If-None-Match": whole.headers["etag"]})
    assert same.status_code == 304
    assert_no_browser_runs_it(same)

    # A row of an old journal may hold any type: playback serves one of the fixed set only.
    for stored, served in (("text/html", "audio/mp4"), ("audio/mp4\r\nX-Evil: 1", "audio/mp4")):
        conn = vault.db()
        conn.execute("UPDATE calls SET content_type = ?", (stored,))
        conn.commit()
        conn.close()
        response = await get(vault, url)
        assert response.status_code == 200
        assert response.headers["content-type"] == served
        assert "x-evil" not in response.headers
        assert_no_browser_runs_it(response)


async def test_an_unknown_stored_type_is_served_as_octet_stream(vault: Vault) -> None:
    parts = rdio_trunk_recorder(M4A, audio_name="call.m4a")
    assert (await vault.post("/api/call-upload", parts)).status_code == 200
    [call] = vault.calls()
    conn = vault.db()
    conn.execute(
        "UPDATE calls SET content_type = 'text/html', key = 'metro/2025-11-24/x.html' WHERE id = ?",
        (call["id"],),
    )
    conn.commit()
    conn.close()
    old = vault.audio_path(call["key"])
    old.rename(vault.audio_path("metro/2025-11-24/x.html"))
    response = await get(vault, f"/api/calls/{call['id']}/audio")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == M4A
    assert_no_browser_runs_it(response)


async def test_the_redirect_to_s3_carries_the_headers_and_a_stored_type(
    make_vault: VaultFactory, moto_s3: S3Bucket
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_cache_retention=3600))
    response = await vault.post("/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV))
    assert response.status_code == 200
    await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"])
    [call] = vault.calls()
    conn = vault.db()
    # Older than the retention, and a type an old journal could hold.
    conn.execute(
        "UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000', content_type = 'text/html'"
    )
    conn.commit()
    conn.close()
    assert (await prune_once(vault.settings, dry_run=False)).count("delete") == 1
    assert not vault.audio_path(call["key"]).exists()

    redirect = await get(vault, f"/api/calls/{call['id']}/audio")
    assert redirect.status_code == 307
    assert_no_browser_runs_it(redirect)
    assert redirect.content == b""
    assert "text/html" not in redirect.headers.get("content-type", "")
    location = redirect.headers["location"]
    assert "response-content-type=audio%2Fwav" in location
    async with httpx.AsyncClient() as client:
        fetched = await client.get(location)
    assert fetched.status_code == 200
    assert fetched.content == WAV
    assert fetched.headers["content-type"] == "audio/wav"


async def test_every_json_answer_is_json_with_nosniff(make_vault: VaultFactory) -> None:
    vault = await make_vault(read_keys="r-all")
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    [call] = vault.calls()
    answers = {
        "/api/calls": 200,
        f"/api/calls/{call['id']}": 200,
        "/api/journal/summary": 200,
        "/api/calls?limit=0": 400,
        "/api/calls/999": 404,
        "/api/calls/999/audio": 404,
        f"/api/calls/{call['id']}/nothing": 404,
    }
    for path, status in answers.items():
        response = await get(vault, path, "r-all")
        assert response.status_code == status, path
        assert_json(response)
    unauthorized = await get(vault, "/api/calls")
    assert unauthorized.status_code == 401
    assert_json(unauthorized)
    not_allowed = await vault.client.post(
        vault.url + "/api/calls", headers={"Authorization": "Bearer r-all"}
    )
    assert not_allowed.status_code == 405
    assert "GET" in not_allowed.headers["allow"]
    assert_json(not_allowed)
    for path in ("/healthz", "/metrics", "/readyz"):
        assert_no_browser_runs_it(await get(vault, path))


# -- every bad parameter is a 400 naming it -------------------------------------------------


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


BAD_LISTING_PARAMETERS = [
    ("talkgroup", "²"),  # str.isdigit() is true, int() fails
    (
        "talkgroup",
        "\u0661\u0662",
    ),  # Arabic-Indic digits: int() reads them, a client does not mean them
    ("talkgroup", "99999999999999999999"),  # beyond a SQLite INTEGER
    ("talkgroup", "0"),
    ("talkgroup", "-5"),
    ("talkgroup", "12abc"),
    ("since", "999999999999"),  # past the year 9999
    ("since", "yesterday"),
    ("until", "0"),
    ("until", "²"),
    ("until", "9999-12-31T23:59:59-01:00"),
    ("cursor", "nope"),
    ("cursor", "A" * 5000),
    ("cursor", _cursor("2025-11-24 16:20:34.000|99999999999999999999")),
    ("cursor", _cursor("2025-11-24 16:20:34.000|²")),
    ("cursor", _cursor("2025-13-45 16:20:34.000|1")),
    ("cursor", _cursor("' OR 1=1 --|1")),
    ("cursor", "éé"),
    ("limit", "0"),
    ("limit", "501"),
    ("limit", "x"),
    ("limit", "\u0665"),  # ARABIC-INDIC DIGIT FIVE
    ("limit", "5_0"),
    ("limit", " 5"),
    ("limit", "+5"),
    ("limit", "99999999999999999999999"),
    ("state", "gone"),
    ("state", "DONE"),
]


@pytest.mark.parametrize(("name", "value"), BAD_LISTING_PARAMETERS)
async def test_a_bad_listing_parameter_is_a_400_naming_it(
    vault: Vault, name: str, value: str
) -> None:
    response = await get(vault, "/api/calls", params={name: value})
    assert response.status_code == 400, response.text
    assert_json(response)
    assert response.json()["error"].startswith(f"{name}: ")


@pytest.mark.parametrize(
    "raw", ["99999999999999999999", "9223372036854775808", "abc", "0", "²", "-1", "1.5"]
)
async def test_a_bad_call_id_is_a_400_naming_it(vault: Vault, raw: str) -> None:
    for path in (f"/api/calls/{raw}", f"/api/calls/{raw}/audio"):
        response = await get(vault, path)
        assert response.status_code == 400, path
        assert_json(response)
        assert response.json()["error"].startswith("id: ")


async def test_good_parameters_at_their_limits_still_work(vault: Vault) -> None:
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    params = {
        "talkgroup": "9131",
        "since": "1",
        "until": "253402300799",  # 9999-12-31 23:59:59
        "limit": "500",
        "state": "done",
        "system": "",  # empty: no filter
    }
    assert len((await get(vault, "/api/calls", params=params)).json()["calls"]) == 1
    big = await get(vault, "/api/calls/9223372036854775807")  # the largest id: just none
    assert (big.status_code, big.json()) == (404, {"error": "no call 9223372036854775807"})
    assert (await get(vault, "/api/calls", params={"talkgroup": "9223372036854775807"})).json()[
        "calls"
    ] == []
    # A cursor we returned still pages.
    for n in range(3):
        parts = rdio_trunk_recorder(M4A_2 + bytes([n]), audio_name=f"c{n}.m4a")
        assert (await vault.post("/api/call-upload", parts)).status_code == 200
    first = (await get(vault, "/api/calls", params={"limit": "2"})).json()
    second = await get(vault, "/api/calls", params={"limit": "2", "cursor": first["next_cursor"]})
    assert second.status_code == 200
    assert len(first["calls"]) + len(second.json()["calls"]) == 4


# -- a server that is public although it listens on loopback --------------------------------


async def test_a_public_loopback_server_without_keys_refuses_to_start(
    make_vault: VaultFactory,
) -> None:
    with pytest.raises(ConfigError, match="TR_VAULT_API_KEYS.*TR_VAULT_PUBLIC=true"):
        await make_vault(api_keys="", public=True)
    with pytest.raises(ConfigError, match="TR_VAULT_API_KEYS.*TR_VAULT_TRUSTED_PROXIES"):
        await make_vault(api_keys="", trusted_proxies="127.0.0.1")
    # Told that anonymous is fine: it starts, and uploads and reads are open.
    vault = await make_vault(api_keys="", public=True, allow_anonymous=True)
    parts = rdio_trunk_recorder(M4A, key="")
    assert (await vault.post("/api/call-upload", parts)).status_code == 200
    assert len((await get(vault, "/api/calls")).json()["calls"]) == 1


async def test_a_proxied_loopback_server_with_keys_needs_them_for_reads(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(api_keys=UPLOAD_KEYS, trusted_proxies="127.0.0.1")
    assert (
        await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, key="up11"))
    ).status_code == 200
    assert (
        await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, key=""))
    ).status_code == 401
    assert (await get(vault, "/api/calls")).status_code == 401
    assert len((await get(vault, "/api/calls", "up11")).json()["calls"]) == 1


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TR_VAULT_PUBLIC", "true")
    with pytest.raises(ConfigError, match=r"^TR_VAULT_API_KEYS: .*TR_VAULT_PUBLIC=true"):
        load_settings(_env_file=None)
    monkeypatch.setenv("TR_VAULT_ALLOW_ANONYMOUS", "true")
    settings = load_settings(_env_file=None)
    assert settings.public and not settings.private and settings.open_reads
    monkeypatch.delenv("TR_VAULT_PUBLIC")
    monkeypatch.delenv("TR_VAULT_ALLOW_ANONYMOUS")
    assert load_settings(_env_file=None).private
    monkeypatch.setenv("TR_VAULT_TRUSTED_PROXIES", "10.0.0.0/8, not-an-ip")
    with pytest.raises(ConfigError, match=r"^TR_VAULT_TRUSTED_PROXIES: 'not-an-ip' is not"):
        load_settings(_env_file=None)
    monkeypatch.setenv("TR_VAULT_TRUSTED_PROXIES", "10.0.0.0/8, ::1")
    monkeypatch.setenv("TR_VAULT_API_KEYS", "k")
    settings = load_settings(_env_file=None)
    assert not settings.private
    assert settings.proxies.trusts("10.1.2.3") and settings.proxies.trusts("::1")
    assert not settings.proxies.trusts("192.0.2.1")


# -- client_address: X-Forwarded-For only from a trusted proxy --------------------------------


def _scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "type": "http",
        "client": (peer, 50000) if peer else None,
        "headers": [(b"host", b"vault")] + [(b"x-forwarded-for", f.encode()) for f in forwarded],
    }


PROXIES = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # A peer that is not a trusted proxy wrote the header itself: ignored.
        ("198.51.100.4", ("127.0.0.1",), "198.51.100.4"),
        # Through a trusted proxy: the hop it appended.
        ("127.0.0.1", ("203.0.113.9",), "203.0.113.9"),
        # The client's own entries are left of the hop the proxy appended: ignored.
        ("127.0.0.1", ("6.6.6.6, 203.0.113.9",), "203.0.113.9"),
        ("127.0.0.1", ("6.6.6.6", "203.0.113.9"), "203.0.113.9"),  # two headers, one list
        # Several trusted proxies in a row: the right-most untrusted hop.
        ("127.0.0.1", ("6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2",), "203.0.113.9"),
        # Only trusted hops: the left-most.
        ("127.0.0.1", ("10.1.1.1, 10.2.2.2",), "10.1.1.1"),
        # A hop that is not an address: stop at the trusted proxy that passed it on.
        ("127.0.0.1", ("203.0.113.9, garbage",), "127.0.0.1"),
        ("127.0.0.1", ("6.6.6.6, junk, 10.1.1.1",), "10.1.1.1"),
        # No header from a trusted proxy: the proxy itself.
        ("127.0.0.1", (), "127.0.0.1"),
        # Ports and brackets as some proxies write them; IPv6; IPv4-mapped peers.
        ("127.0.0.1", ("203.0.113.9:4711",), "203.0.113.9"),
        ("127.0.0.1", ("[2001:db8::5]:4711",), "2001:db8::5"),
        ("fd00::1", ("2001:db8::5",), "2001:db8::5"),
        ("::ffff:127.0.0.1", ("203.0.113.9",), "203.0.113.9"),
        ("127.0.0.1", (" 203.0.113.9 ",), "203.0.113.9"),
    ],
)
def test_client_address(peer: str, forwarded: tuple[str, ...], expected: str) -> None:
    assert client_address(_scope(peer, *forwarded), PROXIES) == expected


def test_client_address_of_a_request_and_of_no_peer() -> None:
    class Request:
        scope = _scope("127.0.0.1", "203.0.113.9")

    assert client_address(Request(), PROXIES) == "203.0.113.9"
    # No proxy trusted: the peer, whatever the header says.
    assert client_address(_scope("127.0.0.1", "203.0.113.9"), TrustedProxies()) == "127.0.0.1"
    assert client_address(_scope(None, "203.0.113.9"), PROXIES) == ""
    assert not TrustedProxies.parse(" , ")
    with pytest.raises(ValueError, match="'10.0.0.300' is not an IP address or network"):
        TrustedProxies.parse("10.0.0.300")
