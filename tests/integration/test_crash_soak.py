"""Crash soak: SIGKILL `tr-vault serve` at random moments under load; no acknowledged call is lost.

`python -m tr_vault serve` runs as a child process against moto. Several recorder-like
clients post calls of 5 KB to 2 MB (m4a and wav, built from the fixture audio, every call's
bytes unique) while the server uploads them to the bucket; after a random delay drawn from a
seeded `random.Random` the server is SIGKILLed with requests in flight, and restarted on the same
data dir. Calls not answered `200 Call imported successfully.` are resent in the next round, as
a recorder would, which exercises the duplicate path. After the last kill a final server gets
the rest, drains the backlog, and stops on SIGTERM. Then every acknowledged call must have exactly
one `done` row with the SHA-256 sent, its object in the bucket with that SHA-256, no other audio
object, no temp file, and no cached file without its row.

    TR_VAULT_SOAK_ROUNDS   kill rounds (default 5; `make soak` runs 50)
    TR_VAULT_SOAK_SEED     the seed (default: a random one, printed; pass it back to replay
                           the same kill delays and call contents)
    TR_VAULT_SOAK_REPORT   a path: the summary is also written there as JSON

They are read at import: the autouse `clean_env` fixture removes every TR_VAULT_* variable
before a test runs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import SUCCESS, free_port, log_tail, post_call, query, scalar, sha, wait_healthy
from tests.s3_fixtures import MotoS3
from tests.wire import Part, fixture_bytes, rdio_trunk_recorder

ROUNDS = int(os.environ.get("TR_VAULT_SOAK_ROUNDS", "5"))
SEED = int(os.environ.get("TR_VAULT_SOAK_SEED") or random.SystemRandom().randrange(2**32))
REPORT = os.environ.get("TR_VAULT_SOAK_REPORT", "")

CLIENTS = 6
WORKERS = 4
MIN_SIZE = 5 * 1024
MAX_SIZE = 2 * 1024 * 1024
KILL_DELAY = (0.2, 2.0)  # seconds of traffic before the SIGKILL
SYSTEM = "11"
TALKGROUPS = (9131, 2201, 1001, 4512, 7300)
FIRST_START = 1764001234
FIXTURES = {  # fixture file: (extension, the audioType trunk-recorder sends for it)
    "call-9131-1764001234.m4a": (".m4a", "audio/mp4"),
    "call-2201-1764001301.m4a": (".m4a", "audio/mp4"),
    "call-9131-1764001234.wav": (".wav", "audio/wav"),
}
FIXTURE_BYTES = {name: fixture_bytes(name) for name in FIXTURES}
ROUND_TIMEOUT = 60.0
DRAIN_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0


# -- the calls ----------------------------------------------------------------------------------


@dataclass
class Call:
    """One recording: what is sent is regenerated from (seed, n), so nothing big stays in memory."""

    n: int
    fixture: str
    size: int
    talkgroup: int
    start: int
    audio_name: str
    sha256: str = ""
    posts: int = 0
    acked: bool = False

    def audio(self) -> bytes:
        """The fixture repeated to `size` bytes, ending in a tag that makes the bytes unique."""
        tag = f"\n#tr-vault-soak seed={SEED} call={self.n}\n".encode()
        fill = FIXTURE_BYTES[self.fixture]
        body = max(self.size - len(tag), 0)
        return (fill * (body // len(fill) + 1))[:body] + tag

    def parts(self) -> list[Part]:
        parts = rdio_trunk_recorder(
            self.audio(),
            system=SYSTEM,
            talkgroup=str(self.talkgroup),
            date_time=str(self.start),
            audio_name=self.audio_name,
        )
        audio_type = FIXTURES[self.fixture][1]
        return [replace(p, value=audio_type) if p.name == "audioType" else p for p in parts]


def make_call(n: int) -> Call:
    """Call `n` of this seed, the same whatever order the clients ask for calls in.

    Every tenth call is a second recorder's copy of the call before it: same name, talkgroup
    and start, other audio, so the server has to store it under a name made unique.
    """
    rng = random.Random(f"{SEED}/{n}")
    size = int(math.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE))))
    if n % 10 == 9:
        twin = make_call(n - 1)
        call = replace(twin, n=n, size=size)
    else:
        fixture = rng.choice(sorted(FIXTURES))
        talkgroup = rng.choice(TALKGROUPS)
        start = FIRST_START + 30 * n
        ext = FIXTURES[fixture][0]
        name = f"{talkgroup}-{start}_851012500.0-call_{n}{ext}"
        call = Call(n, fixture, size, talkgroup, start, name)
    call.sha256 = sha(call.audio())
    return call


class Calls:
    """Every call made so far, and those to (re)send: unacknowledged calls go first."""

    def __init__(self) -> None:
        self.all: list[Call] = []
        self.resend: deque[Call] = deque()
        self.fresh = True  # False: only resend, make no new call

    def take(self) -> Call | None:
        if self.resend:
            return self.resend.popleft()
        if not self.fresh:
            return None
        call = make_call(len(self.all))
        self.all.append(call)
        return call

    def give_back(self, call: Call) -> None:
        self.resend.append(call)


@dataclass
class Traffic:
    """What the clients saw in one round."""

    posts: int = 0
    acked: int = 0
    cut: int = 0  # transport errors after the kill: expected, the call is resent
    inflight: int = 0
    killing: trio.Event = field(default_factory=trio.Event)  # set just before the SIGKILL
    unexpected: list[str] = field(default_factory=list)


async def sender(url: str, calls: Calls, traffic: Traffic) -> None:
    """A recorder: one call at a time, a new connection for each (trunk-recorder's curl)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, trust_env=False, limits=limits) as client:
        while not traffic.killing.is_set():
            call = calls.take()
            if call is None:
                return
            call.posts += 1
            traffic.posts += 1
            traffic.inflight += 1
            try:
                response = await post_call(client, url, call.parts())
            except httpx.TransportError as exc:
                calls.give_back(call)
                if traffic.killing.is_set():
                    traffic.cut += 1
                else:
                    traffic.unexpected.append(f"call {call.n}: {exc!r} with the server up")
                continue
            finally:
                traffic.inflight -= 1
            if (response.status_code, response.text) == (200, SUCCESS):
                call.acked = True
                traffic.acked += 1
            else:
                calls.give_back(call)
                traffic.unexpected.append(
                    f"call {call.n}: {response.status_code} {response.text[:200]!r}"
                )


# -- the server ---------------------------------------------------------------------------------


class ServeProcess:
    """`tr-vault serve` as a child process on one data dir; each start gets a new port and log."""

    def __init__(self, tmp_path: Path, bucket: MotoS3) -> None:
        self.tmp_path = tmp_path
        self.bucket = bucket
        self.data_dir = tmp_path / "data"
        self.db = self.data_dir / "vault.db"
        self.incoming = self.data_dir / "audio" / ".incoming"
        self.process: trio.Process | None = None
        self.url = ""
        self.log = tmp_path / "serve-none.log"
        self.starts = 0

    def env(self, port: int) -> dict[str, str]:
        # PYTHONPATH passes through, so the child serves the tr_vault this test imports.
        inherited = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
        return inherited | {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TR_VAULT_DATA_DIR": str(self.data_dir),
            "TR_VAULT_LISTEN": f"127.0.0.1:{port}",
            "TR_VAULT_API_KEYS": "tr-key",
            "TR_VAULT_SHUTDOWN_GRACE": "1s",
            "TR_VAULT_UPLOAD_WORKERS": str(WORKERS),
            "TR_VAULT_UPLOAD_BACKOFF_BASE": "0.05",
            "TR_VAULT_UPLOAD_BACKOFF_MAX": "0.5",
            "TR_VAULT_UPLOAD_TIMEOUT": "30s",
            # Each kill counts as an attempt for the uploads in flight; the kills are the
            # harness's doing, so they must not push a call to `failed`.
            "TR_VAULT_UPLOAD_MAX_ATTEMPTS": "1000",
            "TR_VAULT_RECONCILE_INTERVAL": "2s",
            "S3_BUCKET": self.bucket.bucket,
            "S3_ENDPOINT": self.bucket.url,
            "S3_REGION": self.bucket.region,
            "S3_ACCESS_KEY": self.bucket.access_key,
            "S3_SECRET_KEY": self.bucket.secret_key,
        }

    async def start(self) -> None:
        assert self.process is None
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.tmp_path / f"serve-{self.starts:03d}.log"
        self.starts += 1
        with open(self.log, "wb") as log_file:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "tr_vault", "serve"],
                env=self.env(port),
                cwd=self.tmp_path,  # no .env of the developer's is read
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        await wait_healthy(self.url, self.process, self.log)

    async def kill(self) -> None:
        process, self.process = self.process, None
        assert process is not None
        if process.returncode is not None:
            pytest.fail(
                f"tr_vault exited with {process.returncode} by itself:\n{log_tail(self.log)}"
            )
        process.kill()
        with trio.fail_after(10):
            await process.wait()

    async def stop(self) -> int:
        """SIGTERM, as systemd stops it; returns the exit status."""
        process, self.process = self.process, None
        assert process is not None
        process.terminate()
        with trio.fail_after(STOP_TIMEOUT):
            return await process.wait()

    async def aclose(self) -> None:
        """On the way out of a failed test: no child outlives it, and no new failure masks why."""
        process, self.process = self.process, None
        if process is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                if process.returncode is None:
                    process.kill()
                await process.wait()


# -- checks -------------------------------------------------------------------------------------


def not_done(db: Path) -> list[dict[str, Any]]:
    return query(
        db,
        "SELECT id, key, state, attempts, last_error FROM calls WHERE state != 'done' ORDER BY id",
    )


def cached_files(audio_dir: Path) -> dict[str, Path]:
    """Every file of the cache by its key (`system/date/file`), temp files left out."""
    return {
        path.relative_to(audio_dir).as_posix(): path
        for path in audio_dir.rglob("*")
        if path.is_file() and path.relative_to(audio_dir).parts[0] != ".incoming"
    }


def orphans(vault: ServeProcess) -> set[str]:
    """Cached files no journal row points at (the server never looks for them again)."""
    keys = {r["key"] for r in query(vault.db, "SELECT key FROM calls")}
    return cached_files(vault.data_dir / "audio").keys() - keys


@dataclass
class Audit:
    problems: list[str] = field(default_factory=list)
    lost: set[int] = field(default_factory=set)  # acknowledged calls not done, or not in S3
    orphans: list[str] = field(default_factory=list)  # cached files without a journal row


def audit(vault: ServeProcess, calls: list[Call]) -> Audit:
    """Everything wrong with journal, bucket and cache once the backlog has drained."""
    result = Audit()
    problems, lost = result.problems, result.lost
    rows = query(
        vault.db,
        "SELECT id, key, state, sha256, size, talkgroup, cached,"
        " CAST(strftime('%s', start_time) AS INTEGER) AS start_unix FROM calls ORDER BY id",
    )
    by_sha: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_sha.setdefault(row["sha256"], []).append(row)
    sent = {call.sha256 for call in calls}
    for row in rows:
        if row["sha256"] not in sent:
            problems.append(f"journal row {row['id']} ({row['key']}) is no call that was sent")

    client = vault.bucket.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=vault.bucket.bucket)
    objects = {o["Key"] for page in pages for o in page.get("Contents", [])}
    audio_objects = {key for key in objects if key.startswith("audio/")}  # not a store probe
    expected_objects = {f"audio/{row['key']}" for row in rows}
    for key in sorted(audio_objects - expected_objects):
        problems.append(f"stray object {key}: no journal row has its key")

    for call in calls:
        if not call.acked:
            continue
        found = by_sha.get(call.sha256, [])
        if len(found) != 1:
            problems.append(f"call {call.n}: {len(found)} journal rows with its SHA-256, not 1")
            lost.add(call.n)
            continue
        row = found[0]
        wanted = (call.talkgroup, call.start)
        if row["state"] != "done" or (row["talkgroup"], row["start_unix"]) != wanted:
            problems.append(f"call {call.n}: row {row} does not match {wanted} done")
            lost.add(call.n)
            continue
        key = f"audio/{row['key']}"
        if key not in audio_objects:
            problems.append(
                f"call {call.n}: row {row['id']} is done but {key} is not in the bucket"
            )
            lost.add(call.n)
            continue
        body = client.get_object(Bucket=vault.bucket.bucket, Key=key)["Body"].read()
        if sha(body) != call.sha256:
            problems.append(f"call {call.n}: {key} holds {len(body)} bytes of other content")
            lost.add(call.n)

    temps = sorted(p.name for p in vault.incoming.iterdir())
    if temps:
        problems.append(f"temp files left in {vault.incoming}: {temps}")
    files = cached_files(vault.data_dir / "audio")
    cached_rows = {row["key"]: row for row in rows if row["cached"]}
    all_keys = {row["key"] for row in rows}
    for key in sorted(files.keys() - all_keys):
        digest = sha(files[key].read_bytes())
        twins = [f"row {r['id']} at {r['key']}" for r in by_sha.get(digest, [])]
        result.orphans.append(
            f"cached file {key} belongs to no journal row"
            f" (same audio as: {', '.join(twins) or 'no row'})"
        )
    for key in sorted((files.keys() & all_keys) - cached_rows.keys()):
        problems.append(f"cached file {key} is there but its row says cached = 0")
    for key, row in cached_rows.items():
        if key not in files:
            problems.append(f"row {row['id']} says cached but {key} is not in the cache")
        elif sha(files[key].read_bytes()) != row["sha256"]:
            problems.append(f"cached file {key} does not hold the SHA-256 of row {row['id']}")
    return result


# -- the soak -----------------------------------------------------------------------------------


@dataclass
class RoundFigures:
    round: int
    kill_delay: float
    posts: int
    acked: int
    cut: int
    inflight_at_kill: int
    temp_files_after_kill: int
    rows_after_kill: int
    orphans_after_kill: int  # cached files without a journal row, all rounds so far


@pytest.mark.soak
async def test_sigkill_at_random_moments_loses_no_acknowledged_call(
    tmp_path: Path, moto_s3: MotoS3, caplog: pytest.LogCaptureFixture
) -> None:
    # moto's request log costs CPU the server and the clients need; errors still show.
    caplog.set_level(logging.WARNING, logger="werkzeug")
    print(f"\ncrash soak: seed={SEED} rounds={ROUNDS} (TR_VAULT_SOAK_SEED={SEED} replays it)")
    wall = time.monotonic()
    rng = random.Random(SEED)
    calls = Calls()
    vault = ServeProcess(tmp_path, moto_s3)
    figures: list[RoundFigures] = []
    unexpected: list[str] = []
    final = Traffic()

    def fail(what: str) -> None:
        pytest.fail(f"seed={SEED}, server log {vault.log}: {what}\n{log_tail(vault.log)}")

    def check_acknowledged_in_journal(when: str) -> None:
        shas = {r["sha256"] for r in query(vault.db, "SELECT sha256 FROM calls")}
        missing = [c.n for c in calls.all if c.acked and c.sha256 not in shas]
        if missing:
            fail(f"{when}: acknowledged calls {missing} have no journal row")

    try:
        with trio.fail_after(120 + 20 * ROUNDS):
            for n in range(ROUNDS):
                await vault.start()
                # Temp files of the uploads the last kill cut off are gone before intake opens.
                if any(vault.incoming.iterdir()):
                    fail(f"round {n}: {list(vault.incoming.iterdir())} survived the restart")
                delay = rng.uniform(*KILL_DELAY)
                traffic = Traffic()
                with trio.fail_after(ROUND_TIMEOUT):
                    async with trio.open_nursery() as nursery:
                        for _ in range(CLIENTS):
                            nursery.start_soon(sender, vault.url, calls, traffic)
                        await trio.sleep(delay)  # the deliberate random kill moment
                        with trio.fail_after(10):  # the clients never all pause for long
                            while traffic.inflight == 0:
                                await trio.sleep(0.01)
                        inflight = traffic.inflight
                        traffic.killing.set()
                        await vault.kill()
                unexpected += [f"round {n}: {u}" for u in traffic.unexpected]
                check_acknowledged_in_journal(f"after kill {n}")
                figures.append(
                    RoundFigures(
                        round=n,
                        kill_delay=round(delay, 3),
                        posts=traffic.posts,
                        acked=traffic.acked,
                        cut=traffic.cut,
                        inflight_at_kill=inflight,
                        temp_files_after_kill=sum(1 for _ in vault.incoming.iterdir()),
                        rows_after_kill=scalar(vault.db, "SELECT count(*) FROM calls"),
                        orphans_after_kill=len(orphans(vault)),
                    )
                )

            # The last start: the rest is resent and acknowledged, the backlog drains.
            await vault.start()
            calls.fresh = False
            with trio.fail_after(ROUND_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for _ in range(CLIENTS):
                        nursery.start_soon(sender, vault.url, calls, final)
            unexpected += [f"final run: {u}" for u in final.unexpected]
            never = [c.n for c in calls.all if not c.acked]
            if never:
                fail(f"calls {never} were never acknowledged: {unexpected[:10]}")
            drain = time.monotonic()
            with trio.move_on_after(DRAIN_TIMEOUT):
                while not_done(vault.db):
                    await trio.sleep(0.1)
            drain = time.monotonic() - drain
            pending = not_done(vault.db)
            if pending:
                listed = "\n".join(str(r) for r in pending[:20])
                fail(f"{len(pending)} calls still not done after {DRAIN_TIMEOUT:g} s:\n{listed}")
            status = await vault.stop()
            if status != 0:
                fail(f"SIGTERM: tr_vault exited with {status}")
    finally:
        await vault.aclose()

    audited = time.monotonic()
    found = audit(vault, calls.all)
    audited = time.monotonic() - audited
    lost = len(found.lost)
    kinds = Counter(
        r["kind"]
        for r in query(vault.db, "SELECT kind FROM events WHERE kind IN ('duplicate', 'requeued')")
    )
    attempts = scalar(vault.db, "SELECT max(attempts) FROM calls") or 0
    summary: dict[str, Any] = {
        "seed": SEED,
        "rounds": ROUNDS,
        "calls_sent": len(calls.all),
        "bytes_sent": sum(c.size for c in calls.all),
        "posts": sum(f.posts for f in figures) + final.posts,
        "acknowledged": sum(c.acked for c in calls.all),
        "lost": lost,
        "duplicates_answered": kinds["duplicate"],
        "resent": sum(c.posts - 1 for c in calls.all),
        "cut_by_kills": sum(f.cut for f in figures),
        "kills_with_requests_in_flight": sum(f.inflight_at_kill > 0 for f in figures),
        "temp_files_left_by_kills": sum(f.temp_files_after_kill for f in figures),
        "uploads_requeued": kinds["requeued"],
        "max_upload_attempts": attempts,
        "orphaned_cache_files": len(found.orphans),
        "problems": len(found.problems) + len(unexpected),
        "drain_seconds": round(drain, 1),  # after the last call was acknowledged
        "audit_seconds": round(audited, 1),
        "wall_seconds": round(time.monotonic() - wall, 1),
        "per_round": [asdict(f) for f in figures],
    }
    print(
        f"crash soak: seed={SEED} rounds={ROUNDS} calls sent={summary['calls_sent']}"
        f" ({summary['bytes_sent'] / 1e6:.0f} MB, {summary['posts']} posts)"
        f" acknowledged={summary['acknowledged']} lost={lost}"
        f" duplicates answered={summary['duplicates_answered']} (resent={summary['resent']})"
        f" cut by kills={summary['cut_by_kills']}"
        f" temp files left by kills={summary['temp_files_left_by_kills']}"
        f" uploads requeued={summary['uploads_requeued']}"
        f" orphaned cache files={len(found.orphans)}"
        f" drain={summary['drain_seconds']} s wall={summary['wall_seconds']} s"
    )
    if REPORT:
        Path(REPORT).write_text(json.dumps(summary, indent=2) + "\n")
    everything = unexpected + found.problems + found.orphans
    assert not everything, f"seed={SEED}: {len(everything)} problems:\n" + "\n".join(
        everything[:40]
    )
