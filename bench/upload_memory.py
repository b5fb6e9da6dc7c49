"""Server memory under hostile uploads: many slow senders and one that streams far past the limit.

The server is the real one (`python -m tr_vault serve`, local mode) in a child process. At once:
  - S slow senders (default 100), spread over A loopback addresses (127.0.0.2 ...), each
    declaring a 2 MB upload and then trickling a few hundred bytes every half second: some hold
    upload slots (at most TR_VAULT_MAX_INFLIGHT_UPLOADS, at most half of them per address), the
    rest wait for one;
  - one sender streaming 1 GiB with chunked encoding (no Content-Length), as fast as it can,
    past the 64 MB limit: the server must cut it with 413 after the limit, not buffer it;
  - one sender declaring Content-Length: 1 GiB: refused before a byte of its body is read.
The server's RSS is sampled from /proc every 50 ms; the figure that counts is its peak
(VmHWM). Goal: under 150 MB.

Example: .venv/bin/python bench/upload_memory.py --slow 100 --seconds 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio
from benchlib import ensure_repo_on_path, print_machine, print_table, proc_status_kb
from intake import Server

ensure_repo_on_path()

from tests.wire import fixture_bytes, multipart, rdio_trunk_recorder  # noqa: E402

LIMIT_MB = 64
BIG = 1024**3


async def connect(local: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((local, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def slow_sender(local: str, port: int, until: float, stats: dict[str, int]) -> None:
    body, content_type = multipart(rdio_trunk_recorder(fixture_bytes("call-9131-1764001234.wav")))
    declared = 2 * 1024 * 1024
    head = (
        f"POST /api/call-upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    try:
        stream = await connect(local, port)
    except OSError:
        stats["connect_failed"] += 1
        return
    async with stream:
        try:
            await stream.send_all(head + body[:2000])
            stats["slow_started"] += 1
            while trio.current_time() < until:
                await trio.sleep(0.5)
                await stream.send_all(b"\0" * 300)
        except (trio.BrokenResourceError, OSError):
            stats["slow_cut"] += 1


async def chunked_flood(port: int, stats: dict[str, int]) -> None:
    stream = await connect("127.0.0.1", port)
    async with stream:
        part = b'--x\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        await stream.send_all(
            b"POST /api/call-upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + f"{len(part):x}\r\n".encode()
            + part
            + b"\r\n"
        )
        piece = b"\0" * (1024 * 1024)
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        sent = 0
        try:
            while sent < BIG:
                await stream.send_all(frame)
                sent += len(piece)
        except (trio.BrokenResourceError, OSError):
            pass
        stats["flood_sent_mb"] = sent // 2**20
        with trio.move_on_after(5):
            answer = await stream.receive_some(4096)
            stats["flood_status"] = int(answer.split(b" ", 2)[1]) if answer else 0


async def declared_too_large(port: int, stats: dict[str, int]) -> None:
    stream = await connect("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            b"POST /api/call-upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            + f"Content-Length: {BIG}\r\n\r\n".encode()
        )
        with trio.move_on_after(5):
            answer = await stream.receive_some(4096)
            stats["declared_status"] = int(answer.split(b" ", 2)[1]) if answer else 0


async def sample_rss(pid: int, until: float, samples: list[int]) -> None:
    while trio.current_time() < until:
        samples.append(proc_status_kb(pid, "VmRSS"))
        await trio.sleep(0.05)


async def run(server: Server, slow: int, addresses: int, seconds: float) -> dict[str, int]:
    stats = {
        "slow_started": 0,
        "slow_cut": 0,
        "connect_failed": 0,
        "flood_sent_mb": 0,
        "flood_status": 0,
        "declared_status": 0,
    }
    samples: list[int] = []
    until = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss, server.pid, until + 2, samples)
        for n in range(slow):
            local = f"127.0.0.{2 + n % addresses}"
            nursery.start_soon(slow_sender, local, server.port, until, stats)
        nursery.start_soon(chunked_flood, server.port, stats)
        nursery.start_soon(declared_too_large, server.port, stats)
    stats["rss_max_sampled_kb"] = max(samples)
    stats["peak_rss_kb"] = proc_status_kb(server.pid, "VmHWM")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=100, help="slow senders (default 100)")
    parser.add_argument("--addresses", type=int, default=10, help="loopback addresses they use")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long they trickle")
    args = parser.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="trv-mem-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        server = Server(
            data,
            {
                "TR_VAULT_MAX_UPLOAD_MB": str(LIMIT_MB),
                "TR_VAULT_INFLIGHT_WAIT": "60s",
                "TR_VAULT_MIN_FREE_MB": "0",
            },
        )
        server.start()
        try:
            time.sleep(0.5)
            idle_kb = proc_status_kb(server.pid, "VmRSS")
            stats = trio.run(run, server, args.slow, args.addresses, args.seconds)
        finally:
            server.stop()
    print_table(
        ["measure", "value"],
        [
            ["server RSS idle", f"{idle_kb / 1024:.1f} MiB"],
            ["server peak RSS (VmHWM)", f"{stats['peak_rss_kb'] / 1024:.1f} MiB"],
            ["largest sampled RSS", f"{stats['rss_max_sampled_kb'] / 1024:.1f} MiB"],
            ["slow senders started / cut", f"{stats['slow_started']} / {stats['slow_cut']}"],
            ["connects refused", stats["connect_failed"]],
            [
                "chunked flood: MiB sent, answer",
                f"{stats['flood_sent_mb']}, {stats['flood_status']}",
            ],
            ["declared 1 GiB: answer", stats["declared_status"]],
        ],
    )
    verdict = "under" if stats["peak_rss_kb"] < 150 * 1024 else "OVER"
    print(f"peak RSS {stats['peak_rss_kb'] / 1024:.1f} MiB: {verdict} the 150 MB goal")


if __name__ == "__main__":
    main()
