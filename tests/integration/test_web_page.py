"""The web page over HTTP: what `/` and its files are served with, the page's own CSP (media
from the presigned S3 origin), and the playback links that let an `<audio>` play with a key.
What the page does in a browser: test_web_page_browser.py."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import Vault, VaultFactory, make_settings, s3_settings, wait_until
from tests.s3_fixtures import MotoS3
from tests.wire import fixture_bytes, openmhz, rdio_trunk_recorder
from tr_vault.app import prune_once
from tr_vault.storage.s3 import S3Store
from tr_vault.web import playback
from tr_vault.web.page import page_csp, playback_origins

M4A = fixture_bytes("call-9131-1764001234.m4a")
M4A_2 = fixture_bytes("call-2201-1764001301.m4a")
API_CSP = "default-src 'none'; sandbox"
READ_KEYS = "listen-metro-5c1e:11|metro,listen-all-93ab"


async def get(vault: Vault, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await vault.client.get(vault.url + path, headers={**headers, **kw.pop("headers", {})})


async def mint(vault: Vault, call_id: int, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await vault.client.post(f"{vault.url}/api/calls/{call_id}/playback", headers=headers)


def directives(csp: str) -> dict[str, str]:
    return dict(d.strip().partition(" ")[::2] for d in csp.split(";"))


# -- the page and its files ------------------------------------------------------------------


async def test_the_page_is_served_with_its_own_policy_and_the_api_keeps_its_own(
    vault: Vault,
) -> None:
    page = await get(vault, "/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    csp = directives(page.headers["content-security-policy"])
    assert csp == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self' data:",
        "media-src": "'self'",  # local-only: nothing redirects elsewhere
        "connect-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'self'",
        "frame-ancestors": "'none'",
        "require-trusted-types-for": "'script'",
        "trusted-types": "'none'",
    }
    # No inline script or style for the policy to allow: only the page's own files.
    html = page.text
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/app.js" defer>']
    assert " style=" not in html
    assert "<style" not in html
    assert re.findall(r"(?:src|href)=\"(?:https?:)?//", html) == []  # nothing from elsewhere

    # A revalidation carries the page's policy too: a browser updates the stored page with
    # the 304's headers, and the API's `sandbox` would then break it.
    again = await get(vault, "/", headers={"If-None-Match": page.headers["etag"]})
    assert again.status_code == 304
    assert again.headers["content-security-policy"] == page.headers["content-security-policy"]

    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = await get(vault, f"/static/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"] == f"{kind}; charset=utf-8"
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.headers["content-security-policy"] == API_CSP
    assert (await get(vault, "/static/page.py")).status_code == 404
    assert (await get(vault, "/static/index.html")).status_code == 404

    # Every API answer keeps the API's policy, not the page's.
    for path in ("/api/calls", "/api/journal/summary", "/api/calls/1", "/metrics", "/healthz"):
        response = await get(vault, path)
        assert response.headers["content-security-policy"] == API_CSP, path


async def test_media_src_allows_the_presigned_origin_and_a_pruned_call_plays_from_it(
    make_vault: VaultFactory, moto_s3: MotoS3
) -> None:
    vault = await make_vault(**s3_settings(moto_s3, s3_cache_retention=3600))
    csp = directives((await get(vault, "/")).headers["content-security-policy"])
    assert csp["media-src"] == f"'self' {moto_s3.url}"
    assert csp["connect-src"] == "'self'"  # media only: the page fetches nothing from S3

    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    await wait_until(lambda: [c["state"] for c in vault.calls()] == ["done"])
    conn = vault.db()
    conn.execute("UPDATE calls SET uploaded_at = '2020-01-01 00:00:00.000'")
    conn.commit()
    conn.close()
    assert (await prune_once(vault.settings, dry_run=False)).count("delete") == 1
    [call] = vault.calls()
    link = (await mint(vault, call["id"], None)).json()
    assert link == {"url": f"/api/calls/{call['id']}/audio", "expires_in": None}  # open reads
    redirect = await get(vault, link["url"])
    assert redirect.status_code == 307
    location = redirect.headers["location"]
    assert location.startswith(f"{moto_s3.url}/")  # the origin media-src allows


def test_playback_origins_are_where_presigned_urls_point() -> None:
    """The CSP's origin agrees with the URLs S3Store.presign_get signs, for every addressing."""
    cases: list[dict[str, Any]] = [
        {"s3_bucket": "calls", "s3_region": "eu-west-1"},  # AWS, virtual-hosted
        {"s3_bucket": "calls.example.org", "s3_region": "eu-west-1"},  # dotted: path-style
        {"s3_bucket": "calls", "s3_endpoint": "http://seaweedfs:8333"},
        {
            "s3_bucket": "calls",
            "s3_endpoint": "http://seaweedfs:8333",
            "s3_presign_endpoint": "https://S3.Example.org",
        },
        {"s3_bucket": "calls", "s3_endpoint": "https://r2.example.net:8443/"},
    ]
    expected = [
        "https://calls.s3.eu-west-1.amazonaws.com",
        "https://s3.eu-west-1.amazonaws.com",
        "http://seaweedfs:8333",
        "https://s3.example.org",
        "https://r2.example.net:8443",
    ]
    for values, origin in zip(cases, expected, strict=True):
        settings = make_settings(
            Path("/nonexistent"), s3_access_key="a", s3_secret_key="b", **values
        )
        assert playback_origins(settings) == [origin], values
        store = S3Store.from_settings(settings)
        signed = urlsplit(store.presign_get("x/y.m4a", expires_in=60))
        assert f"{signed.scheme}://{signed.netloc}".lower() == origin, values
        assert f"media-src 'self' {origin};" in page_csp(settings)
    local = make_settings(Path("/nonexistent"))
    assert playback_origins(local) == []
    # Text a source list cannot take is left out rather than passed on.
    odd = make_settings(Path("/nonexistent"), s3_bucket="calls", s3_endpoint="http://[::1]:9000")
    assert playback_origins(odd) == []


# -- playback links ---------------------------------------------------------------------------


async def _metro_and_county(vault: Vault) -> tuple[int, int]:
    assert (await vault.post("/api/call-upload", rdio_trunk_recorder(M4A))).status_code == 200
    county = openmhz(M4A_2, api_key="tr-key", filename="2201-1764001301_851012500.0-call_9.m4a")
    assert (await vault.post("/county/upload", county)).status_code == 200
    ids = {c["system"]: c["id"] for c in vault.calls()}
    return ids["11"], ids["county"]


async def test_a_playback_link_opens_one_call_for_minutes_and_never_holds_the_key(
    make_vault: VaultFactory,
) -> None:
    vault = await make_vault(read_keys=READ_KEYS)
    metro, county = await _metro_and_county(vault)

    # Minting needs a read key, in the header; a scoped key only for its own systems.
    assert (await mint(vault, metro, None)).status_code == 401
    assert (await mint(vault, metro, "nope")).status_code == 401
    assert (await mint(vault, county, "listen-metro-5c1e")).status_code == 404
    answer = await mint(vault, metro, "listen-metro-5c1e")
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    link = answer.json()
    assert link["expires_in"] == playback.TOKEN_TTL
    url = link["url"]
    assert url.startswith(f"/api/calls/{metro}/audio?token=")
    assert "listen-metro" not in url

    played = await get(vault, url)
    assert (played.status_code, played.content) == (200, M4A)
    ranged = await get(vault, url, headers={"Range": "bytes=0-99"})
    assert (ranged.status_code, ranged.content) == (206, M4A[:100])

    # The token opens that call's audio and nothing else.
    token = url.partition("?token=")[2]
    for path in (
        f"/api/calls/{county}/audio?token={token}",
        f"/api/calls/{metro}?token={token}",
        f"/api/calls?token={token}",
        f"/api/journal/summary?token={token}",
    ):
        response = await get(vault, path)
        assert response.status_code == 401, path
    refused = await vault.client.post(f"{vault.url}/api/calls/{metro}/playback?token={token}")
    assert refused.status_code == 401  # a token cannot mint a longer-lived one
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    bad = await get(vault, f"/api/calls/{metro}/audio?token={tampered}")
    assert bad.status_code == 401
    assert bad.json()["error"].startswith("token: expired or not valid for this call")

    # An expired token (made as the server would have, minutes ago) is refused.
    old = playback.mint("listen-metro-5c1e", metro, time.time() - playback.TOKEN_TTL - 5)
    assert (await get(vault, f"/api/calls/{metro}/audio?token={old}")).status_code == 401

    # A key taken out of TR_VAULT_READ_KEYS takes its links with it.
    vault.settings = vault.settings.model_copy(update={"read_keys": "listen-all-93ab"})
    await vault.restart()
    assert (await get(vault, url)).status_code == 401
    fresh = (await mint(vault, county, "listen-all-93ab")).json()["url"]
    assert (await get(vault, fresh)).status_code == 200


async def test_a_token_follows_its_key_scope_as_it_is_now(make_vault: VaultFactory) -> None:
    """A key narrowed after minting: its earlier link to a call now outside it is a 404."""
    vault = await make_vault(read_keys="k-9f2d")
    metro, _ = await _metro_and_county(vault)
    url = (await mint(vault, metro, "k-9f2d")).json()["url"]
    vault.settings = vault.settings.model_copy(update={"read_keys": "k-9f2d:county"})
    await vault.restart()
    response = await get(vault, url)
    assert response.status_code == 404
    assert response.json() == {"error": f"no call {metro}"}


@pytest.mark.parametrize("reads", ["open", "upload keys"])
async def test_without_read_keys_links_follow_the_read_rules(
    make_vault: VaultFactory, reads: str
) -> None:
    if reads == "open":  # private, no read keys: reads are open, the link is the plain route
        vault = await make_vault()
        metro, _ = await _metro_and_county(vault)
        link = (await mint(vault, metro, None)).json()
        assert link["url"] == f"/api/calls/{metro}/audio"
        assert (await get(vault, link["url"])).status_code == 200
        return
    # Public and no read keys: the upload keys read, and sign the links.
    vault = await make_vault(public=True)
    metro, county = await _metro_and_county(vault)
    assert (await mint(vault, metro, None)).status_code == 401
    url = (await mint(vault, metro, "omhz-key")).json()["url"]  # scope metro|11
    assert "token=" in url
    assert (await get(vault, url)).status_code == 200
    assert (await mint(vault, county, "omhz-key")).status_code == 404
