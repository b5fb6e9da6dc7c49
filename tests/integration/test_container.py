"""The container image, without a container engine: what can be run of it is run.

- Its build stage copies a few paths and runs `pip wheel` there. Here the same paths are
  copied and the same command is run (offline: `--no-build-isolation --no-index` added, since
  the image build fetches setuptools from PyPI), and the wheel must be byte-for-byte the one
  built from the whole checkout, which tests/integration/test_install.py installs into a fresh
  venv and serves an upload from. So the image installs a wheel that works.
- Its HEALTHCHECK command is run as written against a live server: healthy while /readyz says
  200, unhealthy on a 503 or no answer, on the port TR_VAULT_LISTEN names and with a Host that
  TR_VAULT_ALLOWED_HOSTS lets in.

Not tested here: the base image, `useradd`, and the dependencies pip resolves from PyPI.
"""

from __future__ import annotations

import http.server
import os
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests import deploy_files as df
from tests.conftest import VaultFactory

BUILD_TIMEOUT = 120.0


def _run(args: list[str], cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"


def _containerfile_wheel_command(wheel_dir: Path) -> list[str]:
    """The build stage's `RUN python -m pip wheel ...`, made to run here, offline."""
    build, _ = df.containerfile()
    [run] = build.all("RUN")
    args = shlex.split(run)
    assert args[:4] == ["python", "-m", "pip", "wheel"], run
    assert args[-1] == "." and args[args.index("--wheel-dir") + 1] == "/wheels", run
    args[0] = sys.executable
    args[args.index("--wheel-dir") + 1] = str(wheel_dir)
    return [*args[:-1], "--no-build-isolation", "--no-index", "."]


def _only_wheel(directory: Path) -> Path:
    [wheel] = directory.glob("tr_vault-*.whl")
    return wheel


def _contents(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_image_builds_the_wheel_the_install_test_installs(tmp_path: Path) -> None:
    if not (df.REPO / ".git").exists():
        pytest.skip("not a git checkout")
    build, _ = df.containerfile()
    # The build context as the image sees it: only what the Containerfile copies.
    context = tmp_path / "context"
    for source in df.copy_sources(build):
        origin = df.REPO / source.rstrip("/")
        if origin.is_dir():
            shutil.copytree(
                origin, context / origin.name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            context.mkdir(exist_ok=True)
            shutil.copy2(origin, context / origin.name)
    image_wheels = tmp_path / "image-wheels"
    _run(_containerfile_wheel_command(image_wheels), context)

    # The checkout as test_install.py builds it: tracked and untracked-not-ignored files.
    checkout = tmp_path / "checkout"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=df.REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (df.REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(df.REPO / name, checkout / name)
    checkout_wheels = tmp_path / "checkout-wheels"
    _run(_containerfile_wheel_command(checkout_wheels), checkout)

    image, full = _contents(_only_wheel(image_wheels)), _contents(_only_wheel(checkout_wheels))
    assert sorted(image) == sorted(full)
    differ = [name for name in image if image[name] != full[name]]
    assert differ == []
    assert any(name.startswith("tr_vault/migrations/") for name in image)


# -- HEALTHCHECK --------------------------------------------------------------------------------


def _healthcheck_argv() -> list[str]:
    _, run = df.containerfile()
    _, command = df.healthcheck(run)
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


async def _healthcheck(port: int, **env: str) -> int:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with trio.fail_after(30):
        done = await trio.run_process(
            _healthcheck_argv(),
            env=base | {"TR_VAULT_LISTEN": f"0.0.0.0:{port}"} | env,
            check=False,
            capture_stderr=True,
        )
    return done.returncode


async def test_the_healthcheck_is_healthy_while_readyz_answers_200(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault()
    port = int(vault.url.rpartition(":")[2])
    assert await _healthcheck(port) == 0
    await vault.stop()
    assert await _healthcheck(port) == 1  # nothing listening


async def test_the_healthcheck_sends_a_host_the_server_allows(make_vault: VaultFactory) -> None:
    allowed = "vault.example.org,other.example.org"
    vault = await make_vault(allowed_hosts=allowed)
    port = int(vault.url.rpartition(":")[2])
    assert (await vault.client.get(vault.url + "/readyz")).status_code == 403  # Host 127.0.0.1
    assert await _healthcheck(port, TR_VAULT_ALLOWED_HOSTS=allowed) == 0
    assert await _healthcheck(port, TR_VAULT_ALLOWED_HOSTS="*") == 1  # localhost: not listed


@pytest.fixture
def not_ready_server() -> Iterator[int]:
    """A server whose /readyz answers 503, as tr_vault's does when a check fails."""

    class NotReady(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"ready": false}'
            self.send_response(503 if self.path == "/readyz" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


async def test_the_healthcheck_is_unhealthy_on_a_503(not_ready_server: int) -> None:
    assert await _healthcheck(not_ready_server) == 1
