"""A non-editable install works: build a wheel, install it in a fresh venv, serve one upload.

The editable install the test suite runs from sees the whole work tree, so it cannot notice a
file the package forgets to ship (the migrations once were: every upload then answered 503
"no such table: calls"). This test builds and installs the wheel the way a container does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.wire import fixture_bytes, multipart, rdio_trunk_recorder

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 90.0  # seconds for the whole test: building, installing, serving
STOP_TIMEOUT = 15.0  # seconds the server has to exit after SIGTERM before it is killed
SUCCESS = "Call imported successfully.\n"


class Deadline:
    """One absolute time limit shared by every step, so no step can hang the suite."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        remaining = self._end - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"test_install: over its {TIMEOUT:.0f} s limit")
        return remaining


def _run(
    args: Sequence[str | Path],
    deadline: Deadline,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Run a command to completion; its output is in the failure message."""
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=deadline.left(),
        check=False,
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _checkout_copy(dest: Path, deadline: Deadline) -> Path:
    """The checkout's tracked and untracked-not-ignored files: no build litter in the tree."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = _run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        deadline,
        cwd=REPO,
    )
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not part of it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would point Python back at the work tree."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    env.update(PYTHONDONTWRITEBYTECODE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


def _source_packages() -> set[str]:
    """Every tr_vault package of the work tree (directories with an `__init__.py`)."""
    found = {"tr_vault.migrations"}
    for init in (REPO / "tr_vault").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(REPO).parts))
    return found


def test_pyproject_lists_every_tr_vault_package() -> None:
    """`packages` is an explicit list (see pyproject.toml): a new subpackage must be added."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _source_packages()
    assert config["package-dir"] == {"tr_vault.migrations": "migrations"}


def test_a_wheel_installed_in_a_fresh_venv_serves_an_upload(tmp_path: Path) -> None:
    deadline = Deadline(TIMEOUT)
    source = _checkout_copy(tmp_path / "src", deadline)
    wheels = tmp_path / "wheels"
    _run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--no-index", "-w", wheels, source),
        ],
        deadline,
        env=_child_env(),
    )
    [wheel] = wheels.glob("tr_vault-*.whl")

    # A fresh venv without pip (quicker); the dev venv's pip installs into it.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], deadline)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            deadline,
            env=_child_env(),
        ).strip()
    )
    _run(
        [
            *(sys.executable, "-m", "pip", "--python", python, "install", "-q"),
            *("--no-deps", "--no-index", wheel),
        ],
        deadline,
        env=_child_env(),
    )
    # The dependencies come from the dev venv: a plain path line appends its site-packages
    # after the fresh one and, unlike site.addsitedir, runs none of its .pth files, so the
    # dev venv's editable finder (which maps tr_vault to the work tree) stays out.
    (purelib / "zz_dev_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    run_dir = tmp_path / "run"  # an empty cwd: no .env, no tr_vault/ or migrations/ beside it
    run_dir.mkdir()
    data_dir = tmp_path / "data"
    port = _free_port()
    env = _child_env(
        TR_VAULT_DATA_DIR=str(data_dir),
        TR_VAULT_LISTEN=f"127.0.0.1:{port}",
        TR_VAULT_API_KEYS="tr-key",
        TR_VAULT_SHUTDOWN_GRACE="5",  # below STOP_TIMEOUT (the default is 30 s)
    )

    code = "import tr_vault.journal as j; print(j.__file__); print(j.packaged_migrations())"
    where = _run(
        [python, "-c", code],
        deadline,
        cwd=run_dir,
        env=env,
    ).splitlines()
    assert [Path(p).is_relative_to(purelib) for p in where] == [True, True], where
    installed = {
        ".".join(init.parent.relative_to(purelib).parts)
        for init in (purelib / "tr_vault").rglob("__init__.py")
    }
    assert installed == _source_packages()
    migrations = sorted(p.name for p in (REPO / "migrations").glob("*.sql"))
    assert migrations
    assert sorted(p.name for p in (purelib / "tr_vault" / "migrations").glob("*.sql")) == (
        migrations
    )

    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [venv / "bin" / "tr-vault", "serve"],
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def server_log() -> str:
        return log_path.read_text(errors="replace")

    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=10) as client:
            while True:
                assert server.poll() is None, (
                    f"tr-vault exited {server.returncode}:\n{server_log()}"
                )
                try:
                    if client.get(f"{base}/healthz", timeout=deadline.left()).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.05)

            audio = fixture_bytes("call-9131-1764001234.m4a")
            body, content_type = multipart(rdio_trunk_recorder(audio))
            response = client.post(
                f"{base}/api/call-upload",
                content=body,
                headers={"Content-Type": content_type},
                timeout=deadline.left(),
            )
            # The web page ships as package data (tr_vault/web/static), not only in the tree.
            page = client.get(f"{base}/", timeout=deadline.left())
            script = client.get(f"{base}/static/app.js", timeout=deadline.left())
        assert (response.status_code, response.text) == (200, SUCCESS), server_log()
        assert (page.status_code, page.headers["content-type"]) == (
            200,
            "text/html; charset=utf-8",
        ), server_log()
        assert '<script src="/static/app.js"' in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert script.status_code == 200, server_log()
        assert "/api/calls" in script.text
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
        try:  # not `deadline.left()`: it fails once over, and the server must still go
            server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode == 0, server_log()

    conn = sqlite3.connect(f"file:{data_dir / 'vault.db'}?mode=ro", uri=True)
    try:
        calls = conn.execute("SELECT system, talkgroup, size FROM calls").fetchall()
        applied = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY 1")]
    finally:
        conn.close()
    assert calls == [("11", 9131, len(audio))]
    assert applied == migrations
