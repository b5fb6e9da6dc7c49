"""deploy/tr-vault.service's sandbox allows what tr_vault does, traced rather than assumed.

`tr-vault serve` runs under strace (tiered, uploading to moto) through what a server does in
a day: start (lock, journal, migrations), receive a call (stream to the cache, fsync, xattr,
link, commit), upload it (PUT + HEAD), play it back, a duplicate, shut down on SIGTERM. Then:

- every system call it made is in the unit's `SystemCallFilter` (expanded by
  `systemd-analyze syscall-filter`), so none would fail with EPERM under the unit;
- every socket family it opened is in `RestrictAddressFamilies`;
- it wrote nothing outside its data directory and /tmp (`ProtectSystem=strict`,
  `ReadWritePaths`, `PrivateTmp`), and looked at nothing under /home or /root (`ProtectHome`).

Only the paths exercised here are covered: not Litestream (TR_VAULT_JOURNAL_REPLICA), the
pruner's deletes, or an S3-only mode eviction. Skipped without strace or systemd-analyze.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests import deploy_files as df
from tests.conftest import wait_until
from tests.helpers import SUCCESS, free_port, post_call, scalar, serve_process
from tests.s3_fixtures import MotoS3
from tests.wire import fixture_bytes, rdio_trunk_recorder

pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None or shutil.which("systemd-analyze") is None,
    reason="needs strace and systemd-analyze",
)

M4A = fixture_bytes("call-9131-1764001234.m4a")
CALL = re.compile(r"^\d+\s+([a-z_][a-z0-9_]*)\((.*)$")
WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND")
# A path argument: `"path"` after `AT_FDCWD, ` or (strace -y) `3</abs/dir>, `, or alone.
PATH_ARG = re.compile(r'(?:(?:AT_FDCWD|\d+<(?P<dir>[^>]*)>), )?"(?P<path>[^"]*)"')
HOME = re.compile(r'["<](/(?:home|root)(?:/[^">]*)?)(?=["<>])')
# This machine's interpreter and checkout may live under /root or /home (pyenv); a deployment's
# must not, or ProtectHome hides them (the unit says so). Paths in them do not count, nor what
# the interpreter's start-up probes before it imports tr_vault.
INSTALL = tuple(Path(p) for p in {sys.base_prefix, sys.prefix, str(df.REPO)})
TR_VAULT_IMPORTED = re.compile(r"tr_vault/__init__\.py")


def syscall_set(spec: str) -> set[str]:
    """The system calls a `SystemCallFilter=` value allows, groups expanded."""
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in listing.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if raw.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif current is not None:
            current.append(line)

    def expand(item: str) -> set[str]:
        if not item.startswith("@"):
            return {item}
        return set().union(*(expand(member) for member in groups[item]))

    return set().union(*(expand(item) for item in spec.split()))


def paths(args: str, cwd: Path) -> list[Path]:
    """The paths a traced call names, absolute (relative ones against `cwd` or their dirfd)."""
    found = []
    for match in PATH_ARG.finditer(args):
        path = Path(match["path"])
        found.append(path if path.is_absolute() else Path(match["dir"] or cwd) / path)
    return found


async def test_the_units_sandbox_allows_every_call_serve_makes(
    tmp_path: Path, moto_s3: MotoS3
) -> None:
    service = df.unit_values(df.unit(), "Service")
    allowed_calls = syscall_set(service["SystemCallFilter"])
    allowed_families = set(service["RestrictAddressFamilies"].split())

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    env = {
        "HOME": str(data_dir),  # the service user's home is its data directory
        "PYTHONDONTWRITEBYTECODE": "1",  # the installed venv's bytecode is already written
        "TR_VAULT_DATA_DIR": str(data_dir),
        "TR_VAULT_LISTEN": f"127.0.0.1:{port}",
        "TR_VAULT_API_KEYS": "tr-key",
        "TR_VAULT_SHUTDOWN_GRACE": "5",
        "S3_BUCKET": moto_s3.bucket,
        "S3_ENDPOINT": moto_s3.url,
        "S3_REGION": moto_s3.region,
        "S3_ACCESS_KEY": moto_s3.access_key,
        "S3_SECRET_KEY": moto_s3.secret_key,
        "S3_CONDITIONAL_PUT": "true",
    }
    trace = tmp_path / "strace.txt"
    argv = [
        *("strace", "-f", "-y", "-qq", "-s", "512", "-o", str(trace)),
        *(sys.executable, "-m", "tr_vault", "serve"),
    ]
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    async with serve_process(env, cwd=data_dir, stderr=log, argv=argv) as process:
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
            for _ in range(2):  # the second is a duplicate
                response = await post_call(client, url, rdio_trunk_recorder(M4A))
                assert (response.status_code, response.text) == (200, SUCCESS)
            db = data_dir / "vault.db"
            await wait_until(lambda: scalar(db, "SELECT state FROM calls") == "done", within=60)
            headers = {"Authorization": "Bearer tr-key"}
            assert (await client.get(f"{url}/api/calls/1/audio", headers=headers)).content == M4A
            assert (await client.get(f"{url}/readyz")).status_code == 200
            assert (await client.get(f"{url}/metrics", headers=headers)).status_code == 200
        # SIGTERM to tr_vault itself, as systemd sends it (strace would not pass its own on).
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGTERM)
        with trio.fail_after(30):
            await process.wait()
    assert process.returncode == 0, log.read_text()
    assert "received SIGTERM: shutting down" in log.read_text()

    used: set[str] = set()
    families: set[str] = set()
    written: set[Path] = set()
    looked_at_home: set[str] = set()
    started = False
    for line in trace.read_text(errors="replace").splitlines():
        started = started or bool(TR_VAULT_IMPORTED.search(line))
        match = CALL.match(line)
        if match is None:
            continue  # `<... resumed>`, signals, exits
        name, args = match[1], match[2]
        used.add(name)
        if name in ("socket", "socketpair"):
            families.add(args.split(",", 1)[0])
        for home in HOME.findall(args) if started else ():
            path = Path(home)  # in an install directory, or on the way to one (realpath)
            if not any(path.is_relative_to(p) or p.is_relative_to(path) for p in INSTALL):
                looked_at_home.add(home)
        if _writes(name, args):
            written |= {p for p in paths(args, data_dir) if not _writable(p, data_dir)}

    # The trace saw what the unit must allow: the lock, fsyncs, the xattr, the link, sockets.
    for needed in ("flock", "fsync", "setxattr fsetxattr", "link linkat", "connect", "accept4"):
        assert set(needed.split()) & used, f"{needed}: not traced"
    assert sorted(used - allowed_calls) == [], "system calls outside SystemCallFilter"
    assert sorted(families - allowed_families) == [], "socket families outside the unit's"
    assert sorted(map(str, written)) == [], "writes outside ReadWritePaths and /tmp"
    assert sorted(looked_at_home) == [], "paths under ProtectHome"


def _writes(name: str, args: str) -> bool:
    if name in ("open", "openat", "creat"):
        return name == "creat" or bool(WRITE_FLAGS.search(args))
    return name in (
        "mkdir",
        "mkdirat",
        "unlink",
        "unlinkat",
        "rmdir",
        "rename",
        "renameat",
        "renameat2",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "setxattr",
        "lsetxattr",
        "truncate",
        "chmod",
        "fchmodat",
        "utimensat",
    )


def _writable(path: Path, data_dir: Path) -> bool:
    """Writable under the unit: the data directory, the private /tmp, /dev (null, ...)."""
    return any(path.is_relative_to(p) for p in (data_dir, "/tmp", "/dev", "/proc/self"))
