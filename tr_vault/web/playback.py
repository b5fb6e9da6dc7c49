"""Playback tokens: a link to one call's audio that works for a few minutes, without the key.

An `<audio src>` cannot send an `Authorization` header, and a read key in a URL would end up
in browser history, proxy logs and screenshots for as long as the key lives. So a reader who
holds a key asks for a link (`POST /api/calls/{id}/playback`, the key in the header) and gets
`/api/calls/{id}/audio?token=EXPIRES.MAC`, where

    MAC = base64url(HMAC-SHA256(read key, "tr-vault playback v1|{id}|{EXPIRES}"))

The token names one call and an expiry (Unix seconds, at most `TOKEN_TTL` ahead); it is
signed with the key that asked for it, so there is no server secret to keep or share between
nodes, and removing a key from `TR_VAULT_READ_KEYS` revokes its tokens at once. The audio
route checks the MAC against every read key (in constant time) and then the call against the
matching key's scope as it is now. A token cannot mint another token and opens no other route.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from tr_vault.auth import ApiKeys, Scope

TOKEN_TTL = 300  # seconds: long enough to start and seek a call, short as a leaked link goes
_DOMAIN = "tr-vault playback v1"
_MAC_CHARS = 43  # base64url of 32 bytes, unpadded
_MAX_TOKEN = 64
CLOCK_SLACK = 60  # seconds another node's clock may be ahead of ours


def _mac(key: str, call_id: int, expires: int) -> str:
    message = f"{_DOMAIN}|{call_id}|{expires}".encode()
    digest = hmac.new(key.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def mint(key: str, call_id: int, now: float, ttl: int = TOKEN_TTL) -> str:
    """A token for `call_id`'s audio, valid until `now + ttl`, signed with `key`."""
    expires = int(now) + ttl
    return f"{expires}.{_mac(key, call_id, expires)}"


def token_scope(keys: ApiKeys, token: str, call_id: int, now: float) -> Scope | None:
    """The scope of the key that signed `token` for `call_id`, or None: malformed, expired,
    for another call, or signed by a key that is no longer configured."""
    if len(token) > _MAX_TOKEN or not token.isascii():
        return None
    expires_text, _, mac = token.partition(".")
    if not expires_text.isdigit() or len(mac) != _MAC_CHARS or len(expires_text) > 12:
        return None
    expires = int(expires_text)
    if not now <= expires <= now + TOKEN_TTL + CLOCK_SLACK:  # expired, or not one of ours
        return None
    given = mac.encode()
    return keys.scope_matching(
        lambda key: hmac.compare_digest(given, _mac(key, call_id, expires).encode())
    )
