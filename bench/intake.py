"""Intake throughput: M call uploads, as trunk-recorder's rdio plugin sends them, C at a time.

The server is the real one (`python -m tr_vault serve`) in a child process of its own, on
127.0.0.1 with a port the OS picks and a temp data dir; the load generator runs here, so its
CPU is not the server's. Each request is built with `tests/wire.py`'s byte-exact replica of
the plugin's multipart body (audio first, the key 7th of 16 parts), the fixture m4a with an
8-byte counter appended (so no upload is a duplicate) and its own `audioName`/`dateTime`, as
a new connection per call, like the plugin's fresh curl handle. Every answer must be
`200 Call imported successfully.` and the journal must hold one row per request.

Modes:
  local            no S3: rows are `done` at once (the cache is the archive)
  tiered-s3-down   S3_BUCKET set, S3_ENDPOINT a closed 127.0.0.1 port: rows stay `pending`
                   while 4 upload workers keep failing and backing off beside the intake
  tiered-moto      S3 on moto (ThreadedMotoServer in a third process): uploads run during the
                   intake; then waits (bounded) for the queue to drain, and reports moto's CPU

Example: .venv/bin/python bench/intake.py --mode all --requests 2000 --concurrency 8
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio
from benchlib import (
    FIXTURES,
    MOTO_ACCESS_KEY,
    MOTO_SECRET_KEY,
    MotoProcess,
    clean_env,
    closed_port,
    cpu_seconds,
    cpu_split,
    ensure_repo_on_path,
    machine_busy_seconds,
    percentile,
    print_machine,
    print_table,
    proc_status_kb,
    self_cpu_seconds,
)

MODES = ("local", "tiered-s3-down", "tiered-moto")
ROUTE = "/api/call-upload"
API_KEY = "bench-key"
OK_BODY = b"Call imported successfully."
BASE_TS = 1764001234
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")


# -- requests -----------------------------------------------------------------------------------


def build_requests(count: int, audio: bytes, host: str) -> list[bytes]:
    """`count` whole HTTP/1.1 requests (head + multipart body), each with unique audio."""
    ensure_repo_on_path()
    from tests.wire import multipart, rdio_trunk_recorder

    out = []
    for i in range(count):
        ts = BASE_TS + i
        name = f"9131-{ts}_851012500.0-call_{i}.m4a"
        parts = rdio_trunk_recorder(
            audio + i.to_bytes(8, "big"), key=API_KEY, date_time=str(ts), audio_name=name
        )
        body, content_type = multipart(parts)
        head = (
            f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n"
            f"Content-Length: {len(body)}\r\nContent-Type: {content_type}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


class BadAnswer(Exception):
    pass


class Connection:
    """HTTP/1.1 to the server: a new TCP connection per request, or one kept alive."""

    def __init__(self, port: int, *, keep_alive: bool) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self._stream: trio.SocketStream | None = None
        self._buf = b""

    async def request(self, request: bytes) -> tuple[int, bytes]:
        """Send one whole request; (status, body) of its answer."""
        if self._stream is None:
            self._stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            self._buf = b""
        try:
            await self._stream.send_all(request)
            head = await self._read_until(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length, close = 0, not self.keep_alive
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await self._read_exactly(length)
        except BaseException:
            await self.aclose()
            raise
        if close:
            await self.aclose()
        return status, body

    async def _fill(self) -> None:
        assert self._stream is not None
        chunk = await self._stream.receive_some(65536)
        if not chunk:
            raise BadAnswer("the server closed the connection before answering in full")
        self._buf += chunk

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            await self._fill()
        out, _, self._buf = self._buf.partition(marker)
        return out

    async def _read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._fill()
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.aclose()


@dataclass
class LoadResult:
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def run_load(
    port: int,
    requests: list[bytes],
    concurrency: int,
    per_request_s: float,
    *,
    keep_alive: bool = False,
) -> LoadResult:
    """`concurrency` clients send `requests` in turn; each request is timed (connect included)."""
    result = LoadResult()
    pending = iter(requests)

    async def client() -> None:
        conn = Connection(port, keep_alive=keep_alive)
        try:
            for request in pending:
                t0 = time.perf_counter()
                try:
                    with trio.fail_after(per_request_s):
                        status, body = await conn.request(request)
                except (OSError, BadAnswer, trio.TooSlowError) as exc:
                    result.errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                if status != 200 or body.strip() != OK_BODY:
                    result.errors.append(f"HTTP {status}: {body[:80]!r}")
                    continue
                result.latencies.append(time.perf_counter() - t0)
        finally:
            await conn.aclose()

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    result.wall = time.perf_counter() - t0
    return result


# -- the server ---------------------------------------------------------------------------------


@dataclass
class Server:
    """`python -m tr_vault serve` in a child process; stopped with SIGTERM."""

    data_dir: Path
    env: dict[str, str]
    start_timeout: float = 60.0
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "server.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = clean_env(
            TR_VAULT_DATA_DIR=str(self.data_dir),
            TR_VAULT_LISTEN="127.0.0.1:0",
            TR_VAULT_API_KEYS=API_KEY,
            TR_VAULT_SHUTDOWN_GRACE="5s",
        )
        env.update(self.env)  # the mode's settings and --server-env win
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.data_dir.parent,  # no stray .env is read
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(2))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"tr_vault did not start:\n{tail}")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tr_vault", "serve"]

    def stop(self) -> None:
        """SIGTERM to our child (by its pid), then SIGKILL if it does not go within 30 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def log_count(self, needle: str) -> int:
        return self.log_path.read_text(errors="replace").count(needle)


def journal_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        out = {
            f"calls_{state}": n
            for state, n in conn.execute("SELECT state, count(*) FROM calls GROUP BY state")
        }
        out["calls"] = sum(out.values())
        out["upload_errors"] = conn.execute(
            "SELECT count(*) FROM events WHERE kind = 'upload_error'"
        ).fetchone()[0]
        return out
    finally:
        conn.close()


# -- one mode -----------------------------------------------------------------------------------


@dataclass
class ModeResult:
    mode: str
    requests: int
    concurrency: int
    load: LoadResult = field(default_factory=LoadResult)
    server_cpu: float = 0.0  # user + system, during the measured requests
    server_sys: float = 0.0  # of which system (kernel: fsync, sockets, thread hand-offs)
    client_cpu: float = 0.0
    moto_cpu: float | None = None
    other_cpu: float = 0.0  # the rest of the machine's busy CPU meanwhile (a shared machine)
    idle_rss_kb: int = 0
    peak_rss_kb: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    pending_after_intake: int | None = None
    round: int = 1
    drain_s: float | None = None
    drain_moto_cpu: float | None = None
    drain_server_cpu: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return len(self.load.latencies) / self.load.wall if self.load.wall else 0.0


@contextlib.contextmanager
def maybe_moto(mode: str) -> Iterator[MotoProcess | None]:
    if mode != "tiered-moto":
        yield None
        return
    with MotoProcess() as moto:
        yield moto


def run_mode(mode: str, args: argparse.Namespace, audio: bytes, root: Path) -> ModeResult:
    data_dir = root / mode / "data"
    data_dir.mkdir(parents=True)
    with maybe_moto(mode) as moto:
        env: dict[str, str] = {"TR_VAULT_LOG_LEVEL": args.log_level}
        for item in args.server_env:
            name, _, value = item.partition("=")
            env[name] = value
        if mode != "local":
            env |= {
                "S3_BUCKET": moto.bucket if moto else "tr-vault-bench",
                "S3_ENDPOINT": moto.url if moto else f"http://127.0.0.1:{closed_port()}",
                "S3_ACCESS_KEY": MOTO_ACCESS_KEY,
                "S3_SECRET_KEY": MOTO_SECRET_KEY,
            }
        server = Server(data_dir, env)
        server.start()
        try:
            host = f"127.0.0.1:{server.port}"
            total = args.warmup + args.requests
            requests = build_requests(total, audio, host)
            idle_rss = proc_status_kb(server.pid, "VmRSS")

            result = ModeResult(mode, args.requests, args.concurrency, idle_rss_kb=idle_rss)

            async def load() -> LoadResult:
                with trio.fail_after(args.max_seconds):
                    warm = await run_load(
                        server.port,
                        requests[: args.warmup],
                        args.concurrency,
                        args.timeout,
                        keep_alive=args.keep_alive,
                    )
                    (su0, ss0), c0 = cpu_split(server.pid), self_cpu_seconds()
                    m0 = cpu_seconds(moto.pid) if moto else 0.0
                    b0 = machine_busy_seconds()
                    result.load = await run_load(
                        server.port,
                        requests[args.warmup :],
                        args.concurrency,
                        args.timeout,
                        keep_alive=args.keep_alive,
                    )
                    (su1, ss1), c1 = cpu_split(server.pid), self_cpu_seconds()
                    result.server_cpu, result.server_sys = su1 - su0 + ss1 - ss0, ss1 - ss0
                    result.client_cpu = c1 - c0
                    if moto is not None:
                        result.moto_cpu = cpu_seconds(moto.pid) - m0
                    ours = result.server_cpu + result.client_cpu + (result.moto_cpu or 0.0)
                    result.other_cpu = max(0.0, machine_busy_seconds() - b0 - ours)
                    return warm

            warm = trio.run(load)
            if warm.errors:
                result.notes.append(f"{len(warm.errors)} warm-up errors, first: {warm.errors[0]}")
            if mode != "local":
                result.pending_after_intake = journal_counts(data_dir / "vault.db").get(
                    "calls_pending", 0
                )
            if moto is not None:
                drain(result, server, moto, data_dir / "vault.db", args.drain_timeout)
            result.peak_rss_kb = proc_status_kb(server.pid, "VmHWM")
            result.counts = journal_counts(data_dir / "vault.db")
            if result.counts["calls"] != total:
                result.notes.append(f"journal holds {result.counts['calls']} calls, sent {total}")
        finally:
            server.stop()
    return result


def drain(result: ModeResult, server: Server, moto: MotoProcess, db: Path, limit: float) -> None:
    """Wait until no call is pending (at most `limit` s): how long S3 takes to catch up."""
    s0, m0, t0 = cpu_seconds(server.pid), cpu_seconds(moto.pid), time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if journal_counts(db).get("calls_pending", 0) == 0:
            break
        time.sleep(0.1)
    else:
        result.notes.append(f"uploads did not drain within {limit:g} s")
    result.drain_s = time.perf_counter() - t0
    result.drain_server_cpu = cpu_seconds(server.pid) - s0
    result.drain_moto_cpu = cpu_seconds(moto.pid) - m0


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Intake throughput of tr_vault: the server runs in its own process on"
        " 127.0.0.1 (temp data dir, removed at the end); this process sends M rdio-scanner"
        " uploads (trunk-recorder's plugin, byte for byte) with C concurrent clients and"
        " reports req/s, latency percentiles, server CPU and peak RSS (VmHWM).",
    )
    p.add_argument(
        "--mode",
        choices=(*MODES, "all"),
        default="local",
        help="local | tiered-s3-down | tiered-moto | all (default local)",
    )
    p.add_argument("--requests", type=int, default=2000, help="measured uploads (default 2000)")
    p.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument(
        "--warmup", type=int, default=50, help="uploads sent first and not measured (default 50)"
    )
    p.add_argument(
        "--fixture",
        type=Path,
        default=FIXTURES / "call-9131-1764001234.m4a",
        help="audio file sent (default the shared m4a fixture)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every mode this many times, interleaved (default 1); with more than one,"
        " a median (min-max) table follows",
    )
    p.add_argument(
        "--keep-alive",
        action="store_true",
        help="each client keeps one connection for all its requests (as SDRTrunk's Java"
        " HttpClient does) instead of a new connection per call (trunk-recorder's curl)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="per request, s (default 60)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="bound on the whole load of one mode, s (default 600)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="tiered-moto: wait at most this long for uploads to finish (default 120)",
    )
    p.add_argument(
        "--log-level", default="INFO", help="server TR_VAULT_LOG_LEVEL (default INFO, as deployed)"
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server, e.g. TR_VAULT_UPLOAD_WORKERS=1 (repeatable)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    args = p.parse_args(argv)
    for item in args.server_env:
        if "=" not in item or not item.split("=", 1)[0]:
            p.error(f"--server-env {item!r}: expected NAME=VALUE")
    if not 1 <= args.requests <= 100_000:
        p.error("--requests must be between 1 and 100000")
    if not 1 <= args.concurrency <= 256:
        p.error("--concurrency must be between 1 and 256")
    if not 1 <= args.rounds <= 10:
        p.error("--rounds must be between 1 and 10")
    if args.warmup < 0 or args.warmup > 10_000:
        p.error("--warmup must be between 0 and 10000")
    return args


def result_row(r: ModeResult) -> tuple[object, ...]:
    lat = sorted(r.load.latencies)
    ok = len(lat)
    return (
        r.mode,
        r.round,
        ok,
        len(r.load.errors),
        f"{r.rps:.0f}",
        f"{percentile(lat, 50) * 1000:.1f}",
        f"{percentile(lat, 99) * 1000:.1f}",
        f"{lat[-1] * 1000:.1f}" if lat else "-",
        f"{r.server_cpu / ok * 1000:.1f} ({r.server_sys / ok * 1000:.1f})" if ok else "-",
        f"{r.server_cpu / r.load.wall:.2f}",
        f"{r.client_cpu / r.load.wall:.2f}",
        "-" if r.moto_cpu is None else f"{r.moto_cpu / r.load.wall:.2f}",
        f"{r.other_cpu / r.load.wall:.2f}",
        f"{r.idle_rss_kb / 1024:.0f}",
        f"{r.peak_rss_kb / 1024:.0f}",
    )


def summary_row(mode: str, rs: list[ModeResult]) -> tuple[object, ...]:
    """Median (min-max) over the rounds of one mode."""

    def spread(values: list[float], fmt: str) -> str:
        med = statistics.median(values)
        if len(values) == 1:
            return format(med, fmt)
        return f"{med:{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    def pct(r: ModeResult, q: float) -> float:
        return percentile(sorted(r.load.latencies), q) * 1000

    ok = [r for r in rs if r.load.latencies]
    return (
        mode,
        len(rs),
        spread([r.rps for r in ok], ".0f"),
        spread([pct(r, 50) for r in ok], ".1f"),
        spread([pct(r, 99) for r in ok], ".1f"),
        spread([r.server_cpu / len(r.load.latencies) * 1000 for r in ok], ".1f"),
        f"{max(r.peak_rss_kb for r in rs) / 1024:.0f}",
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_machine()
    audio = args.fixture.read_bytes()
    modes = MODES if args.mode == "all" else (args.mode,)
    root = Path(tempfile.mkdtemp(prefix="trv-intake-bench-"))
    results: list[ModeResult] = []
    try:
        for n in range(1, args.rounds + 1):
            for mode in modes:  # rounds interleave the modes, so drift hits them alike
                print(f"round {n}: {mode} ...", file=sys.stderr)
                result = run_mode(mode, args, audio, root / f"round{n}")
                result.round = n
                results.append(result)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    print(
        f"\nIntake: {args.requests} uploads (+{args.warmup} warm-up) of {len(audio) + 8} B audio"
        f" to {ROUTE} as trunk-recorder's rdio plugin sends them, {args.concurrency} clients,"
        + (" connections kept alive" if args.keep_alive else " a new connection per call")
    )
    print_table(
        [
            "mode",
            "round",
            "ok",
            "errors",
            "req/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server CPU ms/req (sys)",
            "server cores",
            "client cores",
            "moto cores",
            "other cores",
            "idle RSS MiB",
            "peak RSS MiB",
        ],
        [result_row(r) for r in results],
    )
    if args.rounds > 1:
        print("\nMedian (min-max) over the rounds")
        print_table(
            ["mode", "rounds", "req/s", "p50 ms", "p99 ms", "server CPU ms/req", "peak RSS MiB"],
            [summary_row(m, [r for r in results if r.mode == m]) for m in modes],
        )
    for r in results:
        tag = f"{r.mode} (round {r.round})"
        states = ", ".join(f"{k}={v}" for k, v in sorted(r.counts.items()))
        print(f"\n{tag}: journal {states}")
        if r.pending_after_intake is not None:
            print(f"{tag}: {r.pending_after_intake} calls pending when the intake ended")
        if r.drain_s is not None and r.pending_after_intake:
            print(
                f"{tag}: queue drained {r.drain_s:.1f} s after the intake ended"
                f" ({r.pending_after_intake / r.drain_s:.0f} uploads/s with no intake;"
                f" server CPU {r.drain_server_cpu:.1f} s, moto CPU {r.drain_moto_cpu:.1f} s)"
            )
        if r.moto_cpu is not None:
            total = r.server_cpu + r.client_cpu + r.moto_cpu
            print(
                f"{tag}: during the intake moto used {r.moto_cpu:.1f} s CPU"
                f" = {r.moto_cpu / total:.0%} of the CPU of server + client + moto"
            )
        for note in r.notes:
            print(f"{tag}: NOTE {note}")
        for err in r.load.errors[:5]:
            print(f"{tag}: error {err}")


if __name__ == "__main__":
    main()
