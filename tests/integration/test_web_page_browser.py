"""The web page in a real browser (Debian's Chromium through Playwright, tests/browser.py):
it lists uploaded calls with their states, plays a cached call (200/206) and a pruned one
(307 to moto's presigned URL, allowed by the page's media-src) to `canplay`, filters, pages
back in time, shows a call's history, refreshes itself, and with read keys asks for a key
once, keeps it out of every URL and shows only what the key may see.

One browser for the module; each test a fresh context (its own localStorage). A screenshot
of each test is kept in tests/artifacts/ (or $TR_VAULT_ARTIFACTS).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import browser as chromium
from tests.conftest import Vault, VaultFactory, s3_settings, wait_until
from tests.s3_fixtures import MotoS3
from tests.webhooks import WebhookServer
from tests.wire import Part, fixture_bytes
from tr_vault.app import prune_once

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
WAV = fixture_bytes("call-9131-1764001234.wav")
KEY = "listen-metro-7f3a9c"  # distinctive: found in no URL unless leaked
READ_KEYS = f"{KEY}:11|metro,listen-all-2b8e"
TIMEOUT_MS = 10_000

why_not = chromium.missing()
pytestmark = pytest.mark.skipif(why_not is not None, reason=why_not or "")


@pytest.fixture(scope="module")
def browser() -> Iterator[chromium.BrowserThread]:
    thread = chromium.BrowserThread()
    thread.start()
    yield thread
    thread.stop()


# -- calls to show ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    system: str
    short_name: str
    talkgroup: int
    tag: str
    group: str
    minutes_ago: float
    length: float
    unit: int
    audio: bytes
    ext: str = "m4a"


NOW = int(time.time())
# Three systems; the states are staged after the uploads (see `_stage`).
CALLS = [
    Call("11", "metro", 9131, "FD Dispatch", "Fire", 1, 4.9, 1402211, M4A),  # cached
    Call("12", "county", 4105, "Sheriff Ops", "Law", 3, 7.4, 30117, WAV, "wav"),  # cached
    Call("11", "metro", 2201, "PD North", "Police", 6, 3.2, 4411, M4A_2),  # pruned
    Call("14", "harbor", 300, "Port Control", "Marine", 9, 12.6, 7002, M4A),  # pending
    Call("12", "county", 4110, "EMS Dispatch", "EMS", 13, 5.8, 30240, M4A_2),  # failed
    Call("11", "metro", 9133, "FD Tac 2", "Fire", 18, 21.3, 1402390, WAV, "wav"),  # pruned
    Call("14", "harbor", 310, "Harbor Patrol", "Marine", 26, 2.7, 7015, M4A_2),  # lost
    Call("11", "metro", 9131, "FD Dispatch", "Fire", 35, 9.1, 1402211, M4A_2),  # cached
]
STATES = [
    "in S3, cached", "in S3, cached", "in S3", "pending",
    "failed", "in S3", "lost", "in S3, cached",
]  # fmt: skip


def _parts(call: Call, n: int, key: str = "tr-key") -> list[Part]:
    """trunk-recorder's call JSON as a user's script sends it (`/api/trunk-recorder-call-upload`):
    the talkgroup's tag, the unit and the length come with it."""
    start = NOW - int(call.minutes_ago * 60)
    meta = {
        "talkgroup": call.talkgroup,
        "talkgroup_tag": call.tag,
        "talkgroup_group": call.group,
        "short_name": call.short_name,
        "start_time": start,
        "stop_time": start + round(call.length),
        "call_length": call.length,
        "freq": 851012500,
        "srcList": [{"src": call.unit, "time": start, "pos": 0.0}],
    }
    name = f"{call.talkgroup}-{start}_851012500.0-call_{n}.{call.ext}"
    kind = "audio/mp4" if call.ext == "m4a" else "audio/wav"
    return [
        Part("audio", call.audio, filename=name, content_type=kind),
        Part("meta", json.dumps(meta), filename="call.json", content_type="application/json"),
        Part("system", call.system),
        Part("key", key),
    ]


async def _upload(vault: Vault, calls: list[Call]) -> list[int]:
    for n, call in enumerate(calls):
        response = await vault.post("/api/trunk-recorder-call-upload", _parts(call, n))
        assert response.status_code == 200, response.text
    await wait_until(lambda: all(c["state"] == "done" for c in vault.calls()))
    by_start = sorted(vault.calls(), key=lambda c: c["start_time"], reverse=True)
    return [c["id"] for c in by_start]  # in CALLS order: newest first


async def _stage(vault: Vault, ids: list[int]) -> None:
    """Bring the calls into the states of STATES: prune two (the real pruner, after making
    their upload old), and write what an outage, a refused upload and a lost object leave in
    the journal for three others (the page shows rows; how rows get there is tested elsewhere)."""
    pruned = [ids[2], ids[5]]
    conn = vault.db()
    try:
        marks = ",".join("?" * len(pruned))
        conn.execute(
            f"UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000' WHERE id IN ({marks})",
            pruned,
        )
        conn.commit()
    finally:
        conn.close()
    assert (await prune_once(vault.settings, dry_run=False)).count("delete") == 2
    at = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime(NOW - 60))
    [failed_key] = [c["key"] for c in vault.calls() if c["id"] == ids[4]]
    error = f"put audio/{failed_key}: HTTP 400 InvalidArgument: Invalid storage class."
    conn = vault.db()
    try:
        conn.execute(
            "UPDATE calls SET state = 'pending', uploaded_at = NULL, bucket = NULL,"
            " object_key = NULL, next_attempt_at = '2100-01-01 00:00:00.000' WHERE id = ?",
            (ids[3],),
        )
        conn.execute(
            "UPDATE calls SET state = 'failed', uploaded_at = NULL, bucket = NULL,"
            " object_key = NULL, attempts = 10, last_error = ? WHERE id = ?",
            (error, ids[4]),
        )
        for kind in ("upload_error", "failed"):
            conn.execute(
                "INSERT INTO events (call_id, at, kind, detail) VALUES (?, ?, ?, ?)",
                (ids[4], at, kind, error),
            )
        conn.execute(
            "UPDATE calls SET state = 'lost', cached = 0 WHERE id = ?",
            (ids[6],),
        )
        conn.commit()
    finally:
        conn.close()


# -- in the browser ----------------------------------------------------------------------------


@dataclass
class Seen:
    """What the page did on the network and in its console."""

    requests: list[Any] = field(default_factory=list)
    finished: list[tuple[str, int, str | None]] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("request", lambda r: self.requests.append(r))
        page.on("requestfinished", self._finished)
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def _finished(self, request: Any) -> None:
        response = request.response()
        source = request.redirected_from.url if request.redirected_from else None
        self.finished.append((request.url, response.status if response else 0, source))

    def violations(self) -> list[str]:
        return [
            m
            for m in self.console
            if "Content Security Policy" in m or "Trusted Type" in m or m.startswith("pageerror")
        ]


def _context(browser: Any) -> Any:
    context = browser.new_context(
        viewport={"width": 1280, "height": 860}, timezone_id="UTC", locale="en-GB"
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


def _rows(page: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "#calls tbody tr",
        """rows => rows.map(r => ({
            id: r.dataset.id,
            system: r.querySelector('.system').textContent,
            talkgroup: r.querySelector('.talkgroup').textContent,
            state: r.querySelector('.state').textContent,
            time: r.querySelector('.time').textContent,
        }))""",
    )
    return rows


def _until(page: Any, condition: str) -> None:
    """Wait until the JavaScript `condition` holds. Given as a function: Playwright would
    `eval` an expression string, and the page's CSP (no 'unsafe-eval') refuses that."""
    page.wait_for_function(f"() => ({condition})", timeout=TIMEOUT_MS)


def _wait_rows(page: Any, count: int) -> list[dict[str, str]]:
    _until(page, f"document.querySelectorAll('#calls tbody tr').length === {count}")
    return _rows(page)


def _play(page: Any, call_id: int) -> None:
    """Click the call's Play and wait until the audio element reaches `canplay`."""
    page.click(f"#calls tr[data-id='{call_id}'] button.play")
    _until(page, f"document.getElementById('audio').dataset.canplay === '{call_id}'")


def _shot(page: Any, name: str) -> None:
    chromium.ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(chromium.ARTIFACTS / name))


async def test_the_page_lists_plays_filters_pages_and_refreshes(
    make_vault: VaultFactory, moto_s3: MotoS3, browser: chromium.BrowserThread
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_cache_retention=3600))
    ids = await _upload(vault, CALLS)
    await _stage(vault, ids)
    url = vault.url
    cached, pruned, county = ids[0], ids[2], ids[1]

    def first_page(b: Any) -> tuple[Seen, list[dict[str, str]], dict[str, str]]:
        context = _context(b)
        page = context.new_page()
        seen = Seen()
        seen.watch(page)
        page.goto(url + "/")
        rows = _wait_rows(page, len(CALLS))
        cards = page.eval_on_selector_all(
            ".card",
            "cs => Object.fromEntries(cs.map(c => [c.querySelector('.card-title').textContent,"
            " c.querySelector('.card-value').textContent]))",
        )
        _play(page, cached)
        _play(page, pruned)  # through the 307, to moto's origin
        _shot(page, "web-page.png")
        context.close()
        return seen, rows, cards

    seen, rows, cards = await browser.run(first_page)
    assert [int(r["id"]) for r in rows] == ids
    assert [r["state"] for r in rows] == STATES
    assert rows[0]["system"] == "metro (11)"
    assert rows[0]["talkgroup"] == "FD Dispatch 9131"
    assert cards["Pending"] == "1"
    assert cards["Failed"] == "1"
    assert cards["Lost"] == "1"
    assert cards["Store"] == "up"
    audio = {u: (status, source) for u, status, source in seen.finished if "/audio" in u}
    assert audio[f"{url}/api/calls/{cached}/audio"][0] in (200, 206)
    # The pruned call: its audio request was redirected to the presigned URL, which answered.
    [(s3_status, s3_source)] = [
        (status, source) for u, status, source in seen.finished if u.startswith(moto_s3.url)
    ]
    assert s3_status in (200, 206)
    assert s3_source == f"{url}/api/calls/{pruned}/audio"
    redirect = await vault.client.get(f"{url}/api/calls/{pruned}/audio")
    assert redirect.status_code == 307
    assert seen.violations() == []

    def filters_and_paging(b: Any) -> dict[str, Any]:
        context = _context(b)
        page = context.new_page()
        seen = Seen()
        seen.watch(page)
        out: dict[str, Any] = {}
        page.goto(url + "/#calls?limit=3")
        out["page1"] = _wait_rows(page, 3)
        page.click("#older")
        _until(page, "document.getElementById('page-note').textContent === 'page 2'")
        out["page2"] = _wait_rows(page, 3)
        page.click("#older")
        _until(page, "document.getElementById('page-note').textContent === 'page 3'")
        out["page3"] = _wait_rows(page, 2)
        out["older_disabled"] = page.is_disabled("#older")
        page.click("#newest")
        _until(page, "document.getElementById('page-note').textContent === 'newest calls'")
        out["back"] = _rows(page)

        page.fill("#f-system", "county")
        page.click("#filters button[type=submit]")
        out["county"] = _wait_rows(page, 2)
        page.fill("#f-talkgroup", "4105")
        page.click("#filters button[type=submit]")
        out["county_4105"] = _wait_rows(page, 1)
        page.click("#f-clear")
        # A time window: from 20 to 5 minutes ago (the page's inputs are local time: UTC here).
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 20 * 60))
        until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(NOW - 5 * 60))
        _until(page, "document.getElementById('f-system').value === ''")
        page.fill("#f-since", since)
        page.fill("#f-until", until)
        page.click("#filters button[type=submit]")
        # The rows of the window, not the 3 newest still shown from before the submit.
        _until(page, "(document.getElementById('calls').dataset.query || '').includes('since=')")
        out["window"] = _wait_rows(page, 3)  # Clear keeps the page size of 3
        page.click("#older")
        out["window"] += _wait_rows(page, 1)
        out["hash"] = page.url

        # One call's page: its whole history.
        page.goto(f"{url}/#call/{county}")
        page.wait_for_selector("#call-view h2")
        out["title"] = page.text_content("#call-view h2")
        out["events"] = page.eval_on_selector_all(
            "#call-view .events .kind", "ks => ks.map(k => k.textContent)"
        )
        out["violations"] = seen.violations()
        context.close()
        return out

    out = await browser.run(filters_and_paging)
    pages = out["page1"] + out["page2"] + out["page3"]
    assert [int(r["id"]) for r in pages] == ids  # every call once, newest to oldest
    assert out["older_disabled"]
    assert out["back"] == out["page1"]
    assert [int(r["id"]) for r in out["county"]] == [ids[1], ids[4]]
    assert [int(r["id"]) for r in out["county_4105"]] == [ids[1]]
    assert [int(r["id"]) for r in out["window"]] == ids[2:6]
    assert "since=" in out["hash"]
    assert out["title"] == f"Call {county}"
    assert out["events"][0] == "received"
    assert "upload_ok" in out["events"]
    assert out["violations"] == []

    # Refresh: on the first page, a call uploaded meanwhile shows up by itself.
    def open_first_page(b: Any) -> Any:
        context = _context(b)
        page = context.new_page()
        page.goto(url + "/")
        _wait_rows(page, len(CALLS))
        return context

    context = await browser.run(open_first_page)
    try:
        late = Call("11", "metro", 9135, "FD Tac 4", "Fire", 0.2, 3.0, 1402999, WAV, "wav")
        response = await vault.post("/api/trunk-recorder-call-upload", _parts(late, 99))
        assert response.status_code == 200
        rows = await browser.run(lambda b: _wait_rows(context.pages[0], len(CALLS) + 1))
        assert rows[0]["talkgroup"] == "FD Tac 4 9135"
    finally:
        await browser.run(lambda b: context.close())


async def test_with_read_keys_the_page_asks_once_and_keeps_the_key_out_of_urls(
    make_vault: VaultFactory, moto_s3: MotoS3, browser: chromium.BrowserThread
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_cache_retention=3600), read_keys=READ_KEYS)
    ids = await _upload(vault, CALLS)
    await _stage(vault, ids)
    metro = [ids[i] for i, c in enumerate(CALLS) if c.system == "11"]
    url = vault.url

    def with_key(b: Any) -> dict[str, Any]:
        context = _context(b)
        page = context.new_page()
        seen = Seen()
        seen.watch(page)
        out: dict[str, Any] = {}
        page.goto(url + "/")
        page.wait_for_selector("#key-prompt:not([hidden])")
        out["main_hidden"] = page.is_hidden("#main")
        page.fill("#key-input", "not-a-key")
        page.press("#key-input", "Enter")
        _until(
            page,
            "document.getElementById('key-error').textContent === 'That key was not accepted.'",
        )
        page.fill("#key-input", KEY)
        page.press("#key-input", "Enter")
        out["rows"] = _wait_rows(page, len(metro))
        out["stored"] = page.evaluate("localStorage.getItem('tr_vault.read_key')")
        out["done"] = page.text_content(".card:nth-child(2) .card-value")
        _play(page, metro[1])  # pruned: token, then 307 to S3
        out["src"] = page.get_attribute("#audio", "src")
        _shot(page, "web-page-key.png")
        # The link expires under the player (a seek minutes later): the page asks for a new
        # one and plays on.
        expired = f"token={int(time.time()) - 10}.{'A' * 43}"
        page.evaluate(
            """expired => {
                const audio = document.getElementById('audio');
                delete audio.dataset.canplay;
                audio.src = audio.getAttribute('src').replace(/token=[^&]*/, expired);
            }""",
            expired,
        )
        _until(page, f"document.getElementById('audio').dataset.canplay === '{metro[1]}'")
        out["renewed"] = page.get_attribute("#audio", "src")
        out["expired_asked"] = any(expired in r.url for r in seen.requests)

        page.reload()  # asked once: the stored key is used
        out["rows_again"] = _wait_rows(page, len(metro))
        out["prompt_after_reload"] = page.is_visible("#key-prompt")
        out["url"] = page.url
        page.click("#forget-key")
        page.wait_for_selector("#key-prompt:not([hidden])")
        out["forgotten"] = page.evaluate("localStorage.getItem('tr_vault.read_key')")
        out["violations"] = seen.violations()
        out["urls"] = [r.url for r in seen.requests]
        out["auth"] = {r.headers.get("authorization") for r in seen.requests if "/api/" in r.url}
        out["finished"] = seen.finished
        context.close()
        return out

    out = await browser.run(with_key)
    assert out["main_hidden"]
    assert {int(r["id"]) for r in out["rows"]} == set(metro)  # the key's systems only
    assert out["stored"] == KEY
    assert out["done"] == "4"  # the summary is the key's: metro's four calls, of eight
    assert out["src"].startswith(f"/api/calls/{metro[1]}/audio?token=")
    assert out["renewed"].startswith(f"/api/calls/{metro[1]}/audio?token=")
    assert "AAAAAAAA" not in out["renewed"]
    assert out["expired_asked"]  # the player did try the dead link first
    assert [int(r["id"]) for r in out["rows_again"]] == [int(r["id"]) for r in out["rows"]]
    assert not out["prompt_after_reload"]
    assert out["forgotten"] is None
    assert out["violations"] == []
    # The key went only into the Authorization header, never into an address.
    assert all(KEY not in u for u in [*out["urls"], out["url"]])
    assert f"Bearer {KEY}" in out["auth"]
    s3 = [(status, source) for u, status, source in out["finished"] if u.startswith(moto_s3.url)]
    assert [status for status, _ in s3] and all(status in (200, 206) for status, _ in s3)
    assert all("token=" in (source or "") for _, source in s3)


async def test_the_forwarding_panel_shows_a_destination_that_is_down(
    make_vault: VaultFactory, browser: chromium.BrowserThread, tmp_path: Path
) -> None:
    hook = WebhookServer()
    hook.status = 503  # the sink is down for the whole test
    forward = tmp_path / "forward.toml"
    forward.write_text(f'[[destinations]]\nname = "alerts"\nkind = "webhook"\nurl = "{hook.url}"\n')
    try:
        vault = await make_vault(forward_file=str(forward), forward_probe_max=0.5)
        for n, call in enumerate(CALLS[:2]):
            response = await vault.post("/api/trunk-recorder-call-upload", _parts(call, n))
            assert response.status_code == 200, response.text

        def health() -> str | None:
            conn = vault.db()
            try:
                row = conn.execute("SELECT state FROM destination_health").fetchone()
                return row[0] if row else None
            finally:
                conn.close()

        await wait_until(lambda: health() == "down")
        url = vault.url

        def panel(b: Any) -> dict[str, Any]:
            context = _context(b)
            page = context.new_page()
            seen = Seen()
            seen.watch(page)
            page.goto(url + "/")
            page.wait_for_selector("#forward:not([hidden]) tr[data-name='alerts']")
            out: dict[str, Any] = page.eval_on_selector(
                "#forward tr[data-name='alerts']",
                """r => Object.fromEntries([...r.children].map((c, i) =>
                    [['name', 'kind', 'state', 'pending', 'done', 'failed', 'skipped', 'lag',
                      'error'][i], c.textContent]))""",
            )
            out["badge"] = page.get_attribute("#forward .state", "class")
            out["violations"] = seen.violations()
            _shot(page, "web-page-forward.png")
            context.close()
            return out

        out = await browser.run(panel)
    finally:
        hook.close()
    assert out["name"] == "alerts" and out["kind"] == "webhook"
    assert out["state"] == "down" and "dest-down" in out["badge"]
    assert (out["pending"], out["done"], out["failed"], out["skipped"]) == ("2", "0", "0", "0")
    assert out["lag"].endswith((" s", " min"))
    assert "503" in out["error"]
    assert out["violations"] == []
