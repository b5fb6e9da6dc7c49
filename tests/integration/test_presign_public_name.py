"""Players that reach the store by another name than tr_vault does (`S3_PRESIGN_ENDPOINT`).

tr_vault talks to SeaweedFS at http://127.0.0.1:PORT, the internal name (a compose service name
in a real deployment). Players reach the same store through a forwarder on 127.0.0.2:OTHER, the
public name (a reverse proxy or CDN in front of the store that passes Host, path and query on
unchanged). SigV4 signs the Host header, the path and the query string, so a presigned URL
plays exactly when the store sees those three as they were signed; the README section "Players
that reach the store by another name" is what these tests measure.

A proxy that changes the request on its way (rewrites Host, strips a path prefix or the query)
is stood in for by sending the store the request such a proxy would send it: the signature
check sees nothing but that request.
"""

from __future__ import annotations

import hashlib
import random
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import trio

from tests.conftest import VaultFactory, s3_settings, wait_until
from tests.forwarder import Forwarder, open_forwarder
from tests.s3_fixtures import S3Bucket
from tests.wire import TR_AUDIO_NAME, fixture_bytes, rdio_trunk_recorder
from tr_vault.app import prune_once
from tr_vault.storage.s3 import S3Store
from tr_vault.storecheck import check_store, passed

TIMEOUT = 30
KEY = f"audio/metro/2025-11-24/{TR_AUDIO_NAME}"
CONTENT_TYPE = "audio/mp4"
DISPOSITION = f'inline; filename="{TR_AUDIO_NAME}"'
DATA = random.Random(7).randbytes(50_000)
M4A = fixture_bytes("call-9131-1764001234.m4a")


@pytest.fixture
async def public(seaweed_s3: S3Bucket) -> AsyncIterator[Forwarder]:
    """The store under its public name: a forwarder on 127.0.0.2 that passes bytes unchanged."""
    store = urlsplit(seaweed_s3.url)
    assert store.hostname is not None and store.port is not None
    async with open_forwarder((store.hostname, store.port), host="127.0.0.2") as forwarder:
        assert forwarder.netloc != store.netloc
        yield forwarder


async def upload(store: S3Store, tmp_path: Path) -> None:
    """`DATA` under `KEY`, through tr_vault's own PUT (Content-MD5, signed SHA-256, metadata)."""
    path = tmp_path / "call.m4a"
    path.write_bytes(DATA)
    with trio.fail_after(TIMEOUT):
        await store.put_file(
            KEY, path, size=len(DATA), md5_hex=hashlib.md5(DATA).hexdigest(),
            sha256_hex=hashlib.sha256(DATA).hexdigest(), content_type=CONTENT_TYPE,
            metadata={}, if_absent=True,
        )  # fmt: skip


def presign(store: S3Store) -> str:
    return store.presign_get(KEY, expires_in=300, content_type=CONTENT_TYPE, filename=TR_AUDIO_NAME)


def with_netloc(url: str, netloc: str) -> str:
    """`url` with its host (and port) replaced; path and query byte for byte as signed."""
    return urlunsplit(urlsplit(url)._replace(netloc=netloc))


def error_code(response: httpx.Response) -> str | None:
    found = re.search(r"<Code>([^<]*)</Code>", response.text)
    return found.group(1) if found else None


async def player_get(url: str, via: Forwarder, **headers: str) -> httpx.Response:
    """GET `url` as a player would, its name resolving to the forwarder (as DNS would send it to
    the proxy): the connection goes to `via`, plain HTTP (TLS would end at the proxy), and the
    Host header is the URL's own netloc."""
    parts = urlsplit(url)
    headers.setdefault("Host", parts.netloc)
    target = urlunsplit(parts._replace(scheme="http", netloc=via.netloc))
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            return await client.get(target, headers=headers)


async def proxy_sends(
    store: S3Bucket, signed: str, *, host: str, path: str | None = None, **headers: str
) -> httpx.Response:
    """What the store answers a proxy that sends it `signed`'s query with this Host header and
    path (`signed`'s own path unless given): the request goes straight to the store's address."""
    parts = urlsplit(signed)
    target = urlunsplit(
        parts._replace(scheme="http", netloc=urlsplit(store.url).netloc, path=path or parts.path)
    )
    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            return await client.get(target, headers={"Host": host, **headers})


# -- the public name plays ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        pytest.param("{public}", id="another-address"),
        # A DNS name (resolved to the forwarder) and a proxy on a non-default port.
        pytest.param("http://media.example.test:8443", id="name-and-port"),
        # TLS ends at the proxy, which reaches the store over plain HTTP: the scheme is not
        # part of a SigV4 signature, the Host (here without a port) is.
        pytest.param("https://media.example.test", id="https-name"),
    ],
)
async def test_a_url_signed_for_the_public_name_plays_there(
    seaweed_s3: S3Bucket, public: Forwarder, tmp_path: Path, endpoint: str
) -> None:
    endpoint = endpoint.format(public=public.url)
    async with seaweed_s3.store(presign_endpoint=endpoint) as store:
        await upload(store, tmp_path)
        url = presign(store)
    assert url.startswith(f"{endpoint}/{seaweed_s3.bucket}/{KEY}?")

    whole = await player_get(url, public)
    assert whole.status_code == 200, whole.text
    assert whole.content == DATA
    assert whole.headers["content-type"] == CONTENT_TYPE
    assert whole.headers["content-disposition"] == DISPOSITION

    part = await player_get(url, public, Range="bytes=1000-1999")
    assert part.status_code == 206, part.text
    assert part.content == DATA[1000:2000]
    assert part.headers["content-range"] == f"bytes 1000-1999/{len(DATA)}"
    assert part.headers["content-type"] == CONTENT_TYPE
    assert public.connections >= 2  # both came through the public name


async def test_the_signature_binds_the_host(
    seaweed_s3: S3Bucket, public: Forwarder, tmp_path: Path
) -> None:
    internal = urlsplit(seaweed_s3.url).netloc
    async with seaweed_s3.store(presign_endpoint=public.url) as for_players:
        await upload(for_players, tmp_path)
        signed_public = presign(for_players)
    async with seaweed_s3.store() as for_us:
        signed_internal = presign(for_us)
    assert urlsplit(signed_internal).netloc == internal

    async with httpx.AsyncClient(trust_env=False) as client:
        with trio.fail_after(TIMEOUT):
            # Each URL plays under the name it was signed for ...
            assert (await client.get(signed_public)).content == DATA
            assert (await client.get(signed_internal)).content == DATA
            # ... and under no other: the same bytes reach the same store either way.
            moved = await client.get(with_netloc(signed_public, internal))
            assert (moved.status_code, error_code(moved)) == (403, "SignatureDoesNotMatch")
            moved = await client.get(with_netloc(signed_internal, public.netloc))
            assert (moved.status_code, error_code(moved)) == (403, "SignatureDoesNotMatch")


# -- what a proxy in front of the store may and may not change ------------------------------------


async def test_a_proxy_must_pass_the_host_header_as_the_player_sent_it(
    seaweed_s3: S3Bucket, public: Forwarder, tmp_path: Path
) -> None:
    async with seaweed_s3.store(presign_endpoint=public.url) as store:
        await upload(store, tmp_path)
        url = presign(store)
    # Host as the player sent it (nginx `proxy_set_header Host $http_host`): plays.
    kept = await proxy_sends(seaweed_s3, url, host=public.netloc)
    assert (kept.status_code, kept.content) == (200, DATA)
    # Host rewritten to the upstream's own name (nginx's default, `$proxy_host`): refused.
    rewritten = await proxy_sends(seaweed_s3, url, host=urlsplit(seaweed_s3.url).netloc)
    assert (rewritten.status_code, error_code(rewritten)) == (403, "SignatureDoesNotMatch")
    # Host without its port (nginx `$host`) on a public name with a port: refused.
    portless = await proxy_sends(seaweed_s3, url, host=public.host)
    assert (portless.status_code, error_code(portless)) == (403, "SignatureDoesNotMatch")


async def test_a_proxy_or_cdn_that_drops_the_query_is_refused(
    seaweed_s3: S3Bucket, public: Forwarder, tmp_path: Path
) -> None:
    async with seaweed_s3.store(presign_endpoint=public.url) as store:
        await upload(store, tmp_path)
        url = presign(store)
    bare = await player_get(urlunsplit(urlsplit(url)._replace(query="")), public)
    # Without the query the request is anonymous, and the bucket is not public.
    assert (bare.status_code, error_code(bare)) == (403, "AccessDenied")


async def test_a_path_prefix_on_the_public_name(
    seaweed_s3: S3Bucket, public: Forwarder, tmp_path: Path
) -> None:
    """`S3_PRESIGN_ENDPOINT=https://media.example.org/s3`: the path signed is `/s3/BUCKET/KEY`."""
    async with seaweed_s3.store(presign_endpoint=f"{public.url}/s3") as store:
        await upload(store, tmp_path)
        url = presign(store)
    signed_path = urlsplit(url).path
    assert signed_path == f"/s3/{seaweed_s3.bucket}/{KEY}"
    stripped = signed_path.removeprefix("/s3")

    # Passed on unchanged, the prefix is read as the bucket's name.
    kept = await player_get(url, public)
    assert (kept.status_code, error_code(kept)) == (404, "NoSuchBucket")
    # Stripped by the proxy, the path is no longer the one signed.
    cut = await proxy_sends(seaweed_s3, url, host=public.netloc, path=stripped)
    assert (cut.status_code, error_code(cut)) == (403, "SignatureDoesNotMatch")
    # Stripped, and the store told which prefix was removed: SeaweedFS checks the signature
    # against X-Forwarded-Prefix + path (not a feature of S3 itself: AWS has no such header).
    told = await proxy_sends(
        seaweed_s3, url, host=public.netloc, path=stripped, **{"X-Forwarded-Prefix": "/s3"}
    )
    assert (told.status_code, told.content) == (200, DATA)
    assert told.headers["content-disposition"] == DISPOSITION


async def test_seaweedfs_checks_the_signature_against_x_forwarded_host(
    seaweed_s3: S3Bucket, public: Forwarder, tmp_path: Path
) -> None:
    """A proxy that rewrites Host but says the player's in X-Forwarded-Host still works with
    SeaweedFS (which believes that header for signatures); with AWS S3 it would not."""
    async with seaweed_s3.store(presign_endpoint=public.url) as store:
        await upload(store, tmp_path)
        url = presign(store)
    told = await proxy_sends(
        seaweed_s3,
        url,
        host=urlsplit(seaweed_s3.url).netloc,
        **{"X-Forwarded-Host": public.netloc},
    )
    assert (told.status_code, told.content) == (200, DATA)


# -- the whole path: tr_vault's API and `tr-vault check` ------------------------------------------


async def test_a_pruned_call_plays_through_the_public_name(
    make_vault: VaultFactory, seaweed_s3: S3Bucket, public: Forwarder
) -> None:
    vault = await make_vault(**s3_settings(seaweed_s3, s3_presign_endpoint=public.url))
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"])
    conn = vault.db()
    conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()
    assert (await prune_once(vault.settings, dry_run=False)).count("delete") == 1
    (call,) = vault.calls()
    assert call["cached"] == 0

    with trio.fail_after(TIMEOUT):
        answer = await vault.client.get(f"{vault.url}/api/calls/{call['id']}/audio")
    assert answer.status_code == 307
    location = answer.headers["location"]
    assert location.startswith(f"{public.url}/{seaweed_s3.bucket}/{call['object_key']}?")

    async with httpx.AsyncClient(trust_env=False) as player:
        with trio.fail_after(TIMEOUT):
            played = await player.get(location)
            assert played.status_code == 200, played.text
            assert played.content == M4A
            assert played.headers["content-type"] == CONTENT_TYPE
            assert played.headers["content-disposition"] == DISPOSITION
            seek = await player.get(location, headers={"Range": "bytes=100-"})
            assert (seek.status_code, seek.content) == (206, M4A[100:])
            inside = await player.get(with_netloc(location, urlsplit(seaweed_s3.url).netloc))
            assert (inside.status_code, error_code(inside)) == (403, "SignatureDoesNotMatch")


async def test_check_fetches_the_probe_by_the_public_name(
    seaweed_s3: S3Bucket, public: Forwarder, tmp_path: Path
) -> None:
    """`tr-vault check` GETs a presigned URL from where tr_vault runs: the public name must be
    reachable from there too, or the check says so."""
    async with seaweed_s3.store(presign_endpoint=public.url) as store:
        with trio.fail_after(TIMEOUT):
            steps = await check_store(store, tmp_path)
    assert passed(steps), steps
    assert public.connections == 1  # the presigned GET, and only it, took the public name

    with socket.socket() as taken:  # bound, never listening: connections are refused
        taken.bind((public.host, 0))
        host, port = taken.getsockname()
        unreachable = f"http://{host}:{port}"
        async with seaweed_s3.store(presign_endpoint=unreachable) as store:
            with trio.fail_after(TIMEOUT):
                steps = await check_store(store, tmp_path)
    (presign_step,) = [s for s in steps if s.name == "presign"]
    assert not presign_step.ok and not passed(steps)
    assert "(S3_PRESIGN_ENDPOINT must be reachable)" in presign_step.detail
