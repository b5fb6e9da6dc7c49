"""Forwarding: the relay's delivery rate, and the server's memory with a large backlog waiting.

`rate`: a journal of N stored calls (local-only mode, 22 KB m4a each in the cache) with one
pending delivery each is made first, not timed. Then the real server (`python -m tr_vault
serve`, a child process) starts and forwards them to a receiver in this process (trio + h11,
tests/downstream.py's `FakeService`): a webhook receiver answering 200, and tests/downstream.py's
fake rdio-scanner (multipart parsed, audio kept). Timed from the first request the receiver
reads to the last delivery marked `done` in the journal; the server's CPU over the same span.

`memory`: a journal of N calls (default 100,000) with a pending delivery each (cache files as
hard links: a stored call without audio fails at once) to a webhook destination that refuses
connections (a closed port): the relay probes it and waits. The server starts on it while
intake goes on (a call posted every 0.1 s); its RSS is sampled every 0.5 s for `--seconds` and
its peak (VmHWM) read at the end. Goal: flat, under 150 MB.

Example: .venv/bin/python bench/forward_rate.py rate --calls 2000
         .venv/bin/python bench/forward_rate.py memory --calls 100000 --seconds 30
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import httpx
import trio
from benchlib import (
    closed_port,
    cpu_seconds,
    ensure_repo_on_path,
    print_machine,
    print_table,
    proc_status_kb,
)
from intake import API_KEY, Server

ensure_repo_on_path()

from tests.downstream import FakeRdioScanner, FakeService, Recorded, Response  # noqa: E402
from tests.wire import fixture_bytes, multipart, rdio_trunk_recorder  # noqa: E402
from tr_vault.cache import AudioCache  # noqa: E402
from tr_vault.journal import connect, migrate  # noqa: E402

AUDIO = fixture_bytes("call-9131-1764001234.m4a")
START = 1_764_460_800
RDIO_KEY = "bench-rdio-key"
LINKS = 50_000
SERVER_ENV = {"TR_VAULT_MIN_FREE_MB": "0", "TR_VAULT_FORWARD_PROBE_MAX": "0.5s"}


def fill(data_dir: Path, calls: int, destination: str) -> None:
    """`calls` stored calls (state `done`, local-only) with a pending delivery each; their
    cache files are hard links to a few copies (a stored call without audio would fail)."""
    conn = connect(data_dir / "vault.db")
    migrate(conn)
    cache = AudioCache(data_dir / "audio")
    sha, md5 = hashlib.sha256(AUDIO).hexdigest(), hashlib.md5(AUDIO).hexdigest()
    now = time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime())
    rows = []
    for i in range(calls):
        start = START + i  # a second apart: never rdio-scanner duplicates
        day = time.strftime("%Y-%m-%d", time.gmtime(start))
        name = f"9131-{start}_851012500.m4a"
        key = f"metro/{day}/{name}"
        path = cache.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % LINKS == 0:  # a new copy: ext4 allows 65,000 links to one file
            source = data_dir / f"audio-copy-{i // LINKS}.m4a"
            source.write_bytes(AUDIO)
        os.link(source, path)
        rows.append(
            (
                "rdio-tr", "11", "metro", 9131,
                time.strftime("%Y-%m-%d %H:%M:%S.000", time.gmtime(start)), "{}", name, key,
                "audio/mp4", len(AUDIO), sha, md5, "done", now, 1,
            )
        )  # fmt: skip
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO calls (protocol, system, system_label, talkgroup, start_time, metadata,"
        " audio_name, key, content_type, size, sha256, md5, state, received_at, cached)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute(
        "INSERT INTO deliveries (call_id, destination, next_attempt_at, created_at)"
        " SELECT id, ?, ?, ? FROM calls",
        (destination, now, now),
    )
    conn.execute("COMMIT")
    conn.close()


def forward_file(data_dir: Path, name: str, kind: str, url: str) -> Path:
    path = data_dir.parent / "forward.toml"
    key = f'api_key = "{RDIO_KEY}"\n' if kind == "rdio-scanner" else ""
    path.write_text(
        f'[[destinations]]\nname = "{name}"\nkind = "{kind}"\nurl = "{url}"\n{key}concurrency = 4\n'
    )
    return path


def done_count(db: Path, destination: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        row = conn.execute(
            "SELECT count(*) FROM deliveries WHERE destination = ? AND state = 'done'",
            (destination,),
        ).fetchone()
        return int(row[0])
    finally:
        conn.close()


class Timing:
    """The first request's time and the server's CPU then (read in the receiver's handler)."""

    def __init__(self) -> None:
        self.pid = 0
        self.first: float | None = None
        self.cpu0 = 0.0

    def seen(self) -> None:
        if self.first is None and self.pid:
            self.first = time.perf_counter()
            self.cpu0 = cpu_seconds(self.pid)


class Hook(FakeService):
    """A webhook receiver: 200 `ok` to every POST."""

    def __init__(self, timing: Timing) -> None:
        super().__init__()
        self.timing = timing

    def handle(self, request: Recorded) -> Response:
        self.timing.seen()
        return Response(200, "ok")


class Rdio(FakeRdioScanner):
    """tests/downstream.py's rdio-scanner, timed."""

    def __init__(self, timing: Timing) -> None:
        super().__init__({RDIO_KEY: None})
        self.timing = timing

    def handle(self, request: Recorded) -> Response:
        self.timing.seen()
        return super().handle(request)


async def rate_run(kind: str, calls: int, limit: float) -> list[object]:
    timing = Timing()
    fake: FakeService = Hook(timing) if kind == "webhook" else Rdio(timing)
    name = "bench-" + kind
    with tempfile.TemporaryDirectory(prefix="trv-fwd-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        fill(data, calls, name)
        async with trio.open_nursery() as nursery:
            fake._nursery = nursery
            await fake.come_up()
            path = "/hook" if kind == "webhook" else ""
            toml = forward_file(data, name, kind, fake.url + path)
            server = Server(data, {**SERVER_ENV, "TR_VAULT_FORWARD_FILE": str(toml)})
            # The server forwards from its first moments: the pid must be known by then.
            await trio.to_thread.run_sync(server.start)
            timing.pid = server.pid
            try:
                with trio.fail_after(limit):
                    while (
                        await trio.to_thread.run_sync(done_count, data / "vault.db", name) < calls
                    ):
                        await trio.sleep(0.02)
                end = time.perf_counter()
                cpu1 = cpu_seconds(server.pid)
                rss = proc_status_kb(server.pid, "VmHWM")
            finally:
                await trio.to_thread.run_sync(server.stop)
                await fake.go_down()
            nursery.cancel_scope.cancel()
    assert timing.first is not None
    seconds = end - timing.first
    cpu = cpu1 - timing.cpu0
    return [
        kind,
        calls,
        f"{seconds:.2f}",
        f"{calls / seconds:.0f}",
        f"{cpu:.2f}",
        f"{cpu / calls * 1000:.2f}",
        f"{rss / 1024:.0f}",
    ]


async def memory_run(calls: int, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="trv-fwd-mem-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        t0 = time.perf_counter()
        fill(data, calls, "down-hook")
        filled = time.perf_counter() - t0
        url = f"http://127.0.0.1:{closed_port()}/hook"
        toml = forward_file(data, "down-hook", "webhook", url)
        server = Server(data, {**SERVER_ENV, "TR_VAULT_FORWARD_FILE": str(toml)})
        await trio.to_thread.run_sync(server.start)
        samples: list[int] = []
        posted = 0
        try:
            idle = proc_status_kb(server.pid, "VmRSS")
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                until = time.perf_counter() + seconds
                next_sample = 0.0
                n = 0
                while (now := time.perf_counter()) < until:
                    if now >= next_sample:
                        samples.append(proc_status_kb(server.pid, "VmRSS"))
                        next_sample = now + 0.5
                    parts = rdio_trunk_recorder(
                        AUDIO, date_time=str(START - 10_000 - n), key=API_KEY
                    )
                    body, content_type = multipart(parts)
                    answer = await client.post(
                        "/api/call-upload", content=body, headers={"content-type": content_type}
                    )
                    posted += answer.status_code == 200
                    n += 1
                    await trio.sleep(0.1)
                summary = (await client.get("/api/journal/summary")).json()
            peak = proc_status_kb(server.pid, "VmHWM")
        finally:
            await trio.to_thread.run_sync(server.stop)
    [dest] = summary["forward"]
    return {
        "fill_seconds": filled,
        "idle_kb": idle,
        "samples": samples,
        "peak_kb": peak,
        "posted": posted,
        "pending": dest["deliveries"]["pending"],
        "deliveries": dest["deliveries"],
        "state": dest["state"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    rate = sub.add_parser("rate", help="deliveries/s to local receivers")
    rate.add_argument("--calls", type=int, default=2000)
    rate.add_argument("--kinds", default="webhook,rdio-scanner")
    rate.add_argument("--timeout", type=float, default=600.0)
    memory = sub.add_parser("memory", help="server RSS with a backlog to a refused destination")
    memory.add_argument("--calls", type=int, default=100_000)
    memory.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    print_machine()
    if args.mode == "rate":
        rows = [trio.run(rate_run, k, args.calls, args.timeout) for k in args.kinds.split(",")]
        print_table(
            ["kind", "calls", "seconds", "deliveries/s", "server CPU s", "CPU ms/delivery",
             "peak RSS MiB"],
            rows,
        )  # fmt: skip
        return
    out = trio.run(memory_run, args.calls, args.seconds)
    samples: list[int] = out["samples"]  # type: ignore[assignment]
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]
    print_table(
        ["measure", "value"],
        [
            ["pending deliveries (destination refused)", f"{out['pending']} ({out['state']})"],
            ["deliveries by state at the end", out["deliveries"]],
            ["journal fill (not timed in the run)", f"{out['fill_seconds']:.1f} s"],
            ["calls posted meanwhile (200)", out["posted"]],
            ["RSS at start", f"{int(out['idle_kb']) / 1024:.1f} MiB"],  # type: ignore[call-overload]
            ["RSS, first quarter mean", f"{sum(first) / len(first) / 1024:.1f} MiB"],
            ["RSS, last quarter mean", f"{sum(last) / len(last) / 1024:.1f} MiB"],
            ["largest sampled RSS", f"{max(samples) / 1024:.1f} MiB"],
            ["peak RSS (VmHWM)", f"{int(out['peak_kb']) / 1024:.1f} MiB"],  # type: ignore[call-overload]
        ],
    )
    peak = int(out["peak_kb"]) / 1024  # type: ignore[call-overload]
    print(f"peak RSS {peak:.1f} MiB: {'under' if peak < 150 else 'OVER'} the 150 MB goal")


if __name__ == "__main__":
    main()
