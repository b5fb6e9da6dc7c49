"""One server per data directory: `serve` holds an exclusive lock for as long as it runs.

Two servers on one directory would delete each other's in-flight temp files at start-up and
take each other's claims. `flock` is released by the kernel when the process dies, however it
dies, so a crash never leaves a stale lock behind. Read-only commands never take it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from tr_vault.errors import ConfigError

LOCK_NAME = "tr-vault.lock"


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[Path]:
    """Lock `data_dir` for this process, or raise `ConfigError` naming the holder."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"{path} is locked by another tr-vault serve (pid {holder}): one server per "
                "data directory. Stop it, or give this one its own TR_VAULT_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
