"""What an upload meets before a byte of its body is read: the declared length, browsers,
the Host, fair slots per client, and backpressure while it waits."""

from __future__ import annotations

import httpx
import trio

from tests.conftest import Vault, VaultFactory
from tests.wire import Part, fixture_bytes, multipart, rdio_trunk_recorder

M4A = fixture_bytes("call-9131-1764001234.m4a")
SUCCESS = "Call imported successfully.\n"


def host_port(vault: Vault) -> tuple[str, int]:
    host, port = vault.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def read_answer(stream: trio.SocketStream) -> bytes:
    """One whole answer (head and Content-Length bytes of body), or what came before EOF."""
    data = b""
    with trio.fail_after(10):
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                if len(body) >= length:
                    return data
            chunk = await stream.receive_some(65536)
            if not chunk:
                return data
            data += chunk


async def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(max_upload_mb=1)
    host, port = host_port(vault)
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(
            b"POST /api/call-upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        answer = await read_answer(stream)  # no body sent at all: the answer comes anyway
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"the limit is 1 MB (TR_VAULT_MAX_UPLOAD_MB)" in answer
    assert b"connection: close" in answer.lower()
    assert vault.incoming() == []


async def test_a_browser_cannot_upload(vault: Vault) -> None:
    # A cross-site "simple" multipart POST from any web page carries an Origin header.
    response = await vault.post(
        "/api/call-upload", rdio_trunk_recorder(M4A), Origin="https://evil.example"
    )
    assert response.status_code == 403
    assert "Origin header" in response.text and "recorders never send" in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert vault.calls() == []
    assert vault.incoming() == []


async def test_a_keyless_loopback_server_answers_only_to_loopback_names(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(api_keys="")
    body, content_type = multipart(rdio_trunk_recorder(M4A))
    rebound = await vault.client.post(
        vault.url + "/api/call-upload",
        content=body,
        headers={"Content-Type": content_type, "Host": "attacker.example:8080"},
    )
    assert rebound.status_code == 403
    assert "TR_VAULT_ALLOWED_HOSTS" in rebound.text
    reads = await vault.client.get(vault.url + "/api/calls", headers={"Host": "attacker.example"})
    assert reads.status_code == 403
    for name in ("localhost:8080", "127.0.0.1", "[::1]:8080"):
        ok = await vault.client.get(vault.url + "/healthz", headers={"Host": name})
        assert ok.status_code == 200, name
    assert vault.calls() == []


async def test_allowed_hosts_can_name_the_hosts(make_vault: VaultFactory) -> None:
    vault = await make_vault(allowed_hosts="vault.example.org")
    allowed = await vault.client.get(
        vault.url + "/healthz", headers={"Host": "vault.example.org:8080"}
    )
    assert allowed.status_code == 200
    other = await vault.client.get(vault.url + "/healthz", headers={"Host": "127.0.0.1"})
    assert other.status_code == 403


async def connect_from(local_address: str, vault: Vault) -> trio.SocketStream:
    """A TCP connection to the server from a chosen loopback address (another "client")."""
    host, port = host_port(vault)
    sock = trio.socket.socket()
    await sock.bind((local_address, 0))
    await sock.connect((host, port))
    return trio.SocketStream(sock)


async def trickle_upload(
    vault: Vault, local_address: str, *, started: trio.Event, forwarded_for: str = ""
) -> None:
    """An upload that sends the start of its audio part, then nothing more for a while."""
    body, content_type = multipart(rdio_trunk_recorder(M4A))
    stream = await connect_from(local_address, vault)
    forwarded = f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else ""
    async with stream:
        await stream.send_all(
            f"POST /api/call-upload HTTP/1.1\r\nHost: 127.0.0.1\r\n{forwarded}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:1000]
        )
        started.set()
        await trio.sleep_forever()


async def test_one_address_cannot_hold_every_slot(make_vault: VaultFactory) -> None:
    vault = await make_vault(max_inflight_uploads=4, inflight_wait=0.5, idle_timeout=30)
    async with trio.open_nursery() as nursery:
        for _ in range(2):  # the per-client cap: half of the four slots
            started = trio.Event()
            nursery.start_soon(lambda s=started: trickle_upload(vault, "127.0.0.1", started=s))
            await started.wait()
        with trio.fail_after(20):  # both hold a slot: their audio is being written
            while len(vault.incoming()) < 2:
                await trio.sleep(0.05)
        # A third upload from the same address waits for its own share, then gets 503 ...
        same = await vault.post("/api/call-upload", rdio_trunk_recorder(M4A, audio_name="b.m4a"))
        assert same.status_code == 503
        assert same.headers["retry-after"] == "30"
        # ... while a recorder at another address gets a slot at once.
        other_transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=other_transport, timeout=30) as other:
            body, content_type = multipart(rdio_trunk_recorder(M4A))
            response = await other.post(
                vault.url + "/api/call-upload",
                content=body,
                headers={"Content-Type": content_type},
            )
        assert (response.status_code, response.text) == (200, SUCCESS)
        nursery.cancel_scope.cancel()
    assert len(vault.calls()) == 1


async def test_a_body_waiting_for_a_slot_is_not_read_into_memory(
    make_vault: VaultFactory,
) -> None:
    # Every slot is held by a trickling sender; a second sender tries to stream 256 MiB.
    # The server must not read it: TCP pushes back once socket buffers and a few chunks
    # are full, so only a few MiB get through while it waits.
    vault = await make_vault(
        max_inflight_uploads=1, inflight_wait=30, idle_timeout=60, max_upload_mb=512
    )
    sent = 0
    async with trio.open_nursery() as nursery:
        started = trio.Event()
        nursery.start_soon(lambda: trickle_upload(vault, "127.0.0.1", started=started))
        await started.wait()
        with trio.fail_after(20):
            while not vault.incoming():
                await trio.sleep(0.05)
        stream = await connect_from("127.0.0.2", vault)
        async with stream:
            await stream.send_all(
                b"POST /api/call-upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=x\r\n"
                b"Content-Length: 268435456\r\n\r\n"
            )
            chunk = b"\0" * 65536
            with trio.move_on_after(3):
                while sent < 268435456:
                    await stream.send_all(chunk)
                    sent += len(chunk)
        nursery.cancel_scope.cancel()
    assert sent < 48 * 1024 * 1024, f"the server took {sent / 2**20:.0f} MiB while waiting"


async def test_behind_a_trusted_proxy_the_cap_is_per_forwarded_client(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(
        max_inflight_uploads=4, inflight_wait=0.5, idle_timeout=30, trusted_proxies="127.0.0.1"
    )
    async with trio.open_nursery() as nursery:
        for _ in range(2):  # one recorder behind the proxy holds its whole share
            started = trio.Event()
            nursery.start_soon(
                lambda s=started: trickle_upload(
                    vault, "127.0.0.1", started=s, forwarded_for="203.0.113.7"
                )
            )
            await started.wait()
        with trio.fail_after(20):
            while len(vault.incoming()) < 2:
                await trio.sleep(0.05)
        same = await vault.post(
            "/api/call-upload", rdio_trunk_recorder(M4A), **{"X-Forwarded-For": "203.0.113.7"}
        )
        assert same.status_code == 503
        # A client cannot choose its address: what it writes left of the proxy is ignored.
        other = await vault.post(
            "/api/call-upload",
            rdio_trunk_recorder(M4A),
            **{"X-Forwarded-For": "203.0.113.7, 198.51.100.2"},
        )
        assert (other.status_code, other.text) == (200, SUCCESS)
        nursery.cancel_scope.cancel()


async def test_a_body_of_too_many_parts_is_refused_not_a_500(vault: Vault) -> None:
    # Found by the fuzzer: werkzeug's decoder raises its own RequestEntityTooLarge past 200
    # parts, which escaped as a 500.
    parts = rdio_trunk_recorder(M4A) + [Part(f"x{n}", "1") for n in range(250)]
    response = await vault.post("/api/call-upload", parts)
    assert response.status_code == 413
    assert "more than 200 parts" in response.text
    assert vault.calls() == [] and vault.incoming() == []


async def test_a_boundary_that_is_not_ascii_is_a_400_not_a_500(vault: Vault) -> None:
    # Found by the fuzzer: RFC 2231 lets `boundary*=UTF-8''%E2%82%AC` decode to "€", which
    # could not be encoded for the parser.
    body, _ = multipart(rdio_trunk_recorder(M4A))
    for content_type in (
        "multipart/form-data; boundary*=UTF-8''%E2%82%AC",
        "multipart/form-data; boundary=" + "b" * 71,
    ):
        response = await vault.client.post(
            vault.url + "/api/call-upload", content=body, headers={"Content-Type": content_type}
        )
        assert (response.status_code, response.text) == (400, "Invalid content-type\n")
    assert vault.calls() == [] and vault.incoming() == []
