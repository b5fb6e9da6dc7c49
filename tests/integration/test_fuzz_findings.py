"""What the HTTP fuzz suite (test_fuzz.py) found, pinned as plain regression tests.

Each test names the finding and the minimal example hypothesis printed for it. The rule they
check is the fuzz's own: no 5xx but the README's, nothing half-stored, the server keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.conftest import Vault, make_settings
from tests.wire import (
    TR_META,
    Part,
    fixture_bytes,
    openmhz,
    rdio_trunk_recorder,
    sdrtrunk,
    trunk_recorder_meta_upload,
)
from tr_vault.app import serve

M4A = fixture_bytes("call-9131-1764001234.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
SUCCESS = "Call imported successfully.\n"


def cached_files(vault: Vault) -> list[str]:
    root = vault.settings.audio_dir
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] != ".incoming"
    )


def assert_nothing_stored(vault: Vault) -> None:
    assert vault.calls() == []
    assert cached_files(vault) == []
    assert vault.incoming() == []


# -- F1: more than 200 multipart parts: 500 -----------------------------------------------------
# werkzeug's MultipartDecoder(max_parts=200) raises RequestEntityTooLarge, an HTTPException
# that tr_vault.intake.form.read_form did not catch (only ValueError and OSError).
# Minimal examples: the SDRTrunk replica plus 199 fields, on /api/call-upload (UploadCase(
# focus=('parts',), parts=[...sdrtrunk..., Part('x', '1') * 199])); the OpenMHz replica plus
# 199 fields, on /metro/upload.


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("/api/call-upload", sdrtrunk(M4A)),
        ("/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV)),
        ("/metro/upload", openmhz(M4A)),
    ],
)
async def test_more_than_200_parts_is_refused_not_a_500(
    vault: Vault, path: str, parts: list[Part]
) -> None:
    response = await vault.post(path, [*parts, *[Part("x", "1")] * (201 - len(parts))])
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert_nothing_stored(vault)


async def test_200_parts_are_still_a_call(vault: Vault) -> None:
    parts = rdio_trunk_recorder(M4A)
    response = await vault.post(
        "/api/call-upload", [*parts, *[Part("x", "1")] * (200 - len(parts))]
    )
    assert (response.status_code, response.text) == (200, SUCCESS)
    assert len(vault.calls()) == 1


# -- F2: an RFC 2231 boundary that is not latin-1: 500 ------------------------------------------
# werkzeug's parse_options_header decodes `boundary*=UTF-8''%E2%82%AC` to '€'; multipart_boundary
# then runs boundary.encode("latin-1"): UnicodeEncodeError.
# Minimal example: the SDRTrunk replica on /api/call-upload with
# Content-Type: multipart/form-data; boundary*=UTF-8''%E2%82%AC


async def test_a_boundary_that_is_not_latin_1_is_invalid_content_type(vault: Vault) -> None:
    body = b"--\xe2\x82\xac\r\n"  # whatever follows: the header alone must be refused
    response = await vault.client.post(
        vault.url + "/api/call-upload",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary*=UTF-8''%E2%82%AC"},
    )
    assert (response.status_code, response.text) == (400, "Invalid content-type\n")
    assert_nothing_stored(vault)


# -- F3: a lone surrogate in a label of `meta`: 500, and a cached file no row owns ---------------
# trunk-recorder-call-upload copies meta's talkgroup_tag / talkgroup_group_tag / talkgroup_group
# into text columns; JSON may escape a lone surrogate ("\ud800"), which json.loads keeps and
# SQLite refuses (UnicodeEncodeError, not a sqlite3.Error, so not a JournalError). The audio
# was already linked under its key: every attempt left one more file without a row (seven, one
# per candidate key), then every resend was a 500 (all keys taken).
# Minimal example: the meta replica with meta = json.dumps(TR_META | {'talkgroup_tag': '\ud800'}).
# Fixed in tr_vault.intake.fields.label (a lone surrogate becomes U+FFFD).


@pytest.mark.parametrize(
    ("meta_name", "column"),
    [
        ("talkgroup_tag", "talkgroup_label"),
        ("talkgroup_group_tag", "talkgroup_tag"),
        ("talkgroup_group", "talkgroup_group"),
    ],
)
async def test_a_lone_surrogate_in_a_meta_label_is_stored(
    vault: Vault, meta_name: str, column: str
) -> None:
    meta = json.dumps({**TR_META, meta_name: "FD \ud800"})  # ASCII text: "FD \\ud800"
    for _ in range(2):  # the resend is a duplicate
        response = await vault.post(
            "/api/trunk-recorder-call-upload", trunk_recorder_meta_upload(WAV, meta=meta)
        )
        assert (response.status_code, response.text) == (200, SUCCESS)
    [call] = vault.calls()
    assert call[column] == "FD \ufffd"
    assert json.loads(call["metadata"])["meta"][meta_name] == "FD \ud800"  # kept as sent
    assert cached_files(vault) == [call["key"]]
    read = await vault.client.get(vault.url + f"/api/calls/{call['id']}")
    assert read.status_code == 200


# -- F3b: what F3 exposed: a call whose row cannot be written leaves its file ------------------
# Intake._record removes the linked file only on JournalError; any other exception from the
# insert leaves a file no row owns, which no restart reclaims (its temp name is already gone)
# and which takes the name's candidate keys one by one.


async def test_a_call_whose_row_fails_leaves_no_file(
    vault: Vault, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tr_vault.intake.store

    def broken(*args: object, **kwargs: object) -> object:
        raise ValueError("injected: the row cannot be written")

    monkeypatch.setattr(tr_vault.intake.store, "add_call", broken)
    response = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))
    assert response.status_code != 200
    assert_nothing_stored(vault)


# -- F4: one malformed request stops the server (hypercorn 0.18) -------------------------------
# A request whose Content-Length is longer than its body, then a half-close (the client's
# FIN), to a route that answers without reading the body (/healthz, any unknown path, a typo
# such as /api/call-upload/): h11 reports the short body while the app's answer is being sent;
# hypercorn's _close() sends EOF outside its send lock, and the BusyResourceError that the
# protocol's own error answer then meets is not caught: it ends hypercorn's serve(), so
# tr_vault stops serving. Unauthenticated (/healthz is open in every configuration).
# Minimal example: UploadCase(focus=('target', 'framing'), target='/api/call-upload/',
# framing=Framing(length='long', delta=1)); by hand: POST /healthz, Content-Length: 10,
# five bytes, shutdown(SHUT_WR): the server stopped after 2 to 6 such requests.


async def _short_body_then_eof(port: int, target: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        head = f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n"
        await stream.send_all(head.encode() + b"x" * 5)
        await stream.send_eof()
        with trio.move_on_after(0.5):
            while await stream.receive_some(65536):
                pass
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


@pytest.mark.parametrize("target", ["/healthz", "/api/call-upload/"])
async def test_a_body_shorter_than_its_length_does_not_stop_the_server(
    tmp_path: Path, target: str
) -> None:
    settings = make_settings(tmp_path, idle_timeout=1.0)
    shutdown = trio.Event()
    crashed: list[BaseException] = []

    async def run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve(settings, shutdown=shutdown, task_status=task_status)
        except Exception as exc:  # what stops the server is what this test is about
            crashed.append(exc)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        port = int(binds[0].rsplit(":", 1)[1])
        sent = 0
        while sent < 30 and not crashed:
            try:
                await _short_body_then_eof(port, target)
            except OSError:  # nothing listens any more
                await trio.sleep(0.5)
                break
            sent += 1
            await trio.sleep(0.02)
        shutdown.set()
    assert not crashed, f"the server stopped after {sent} requests: {crashed[0]!r}"
