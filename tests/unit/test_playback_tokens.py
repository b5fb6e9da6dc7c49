"""Playback tokens (tr_vault.web.playback): one call, minutes, signed by the key that asked."""

from __future__ import annotations

import pytest

from tr_vault.auth import EVERY_SYSTEM, ApiKeys, Scope
from tr_vault.web.playback import CLOCK_SLACK, TOKEN_TTL, mint, token_scope

KEYS = ApiKeys.parse("k-metro:11|metro,k-all,k-metro:county")
NOW = 1_764_001_234.5


def test_a_token_carries_the_scope_of_the_key_that_signed_it() -> None:
    token = mint("k-metro", 42, NOW)
    assert token_scope(KEYS, token, 42, NOW) == Scope(frozenset({"11", "metro", "county"}))
    assert token_scope(KEYS, mint("k-all", 42, NOW), 42, NOW) == EVERY_SYSTEM
    assert "k-metro" not in token
    expires, _, mac = token.partition(".")
    assert int(expires) == int(NOW) + TOKEN_TTL
    assert len(mac) == 43


def test_a_token_is_for_one_call_until_it_expires() -> None:
    token = mint("k-metro", 42, NOW)
    assert token_scope(KEYS, token, 43, NOW) is None
    assert token_scope(KEYS, token, 42, NOW + TOKEN_TTL - 1) is not None
    assert token_scope(KEYS, token, 42, NOW + TOKEN_TTL + 1) is None


def test_only_a_configured_key_signs() -> None:
    assert token_scope(KEYS, mint("k-gone", 42, NOW), 42, NOW) is None
    assert token_scope(ApiKeys.parse(""), mint("k-all", 42, NOW), 42, NOW) is None


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc.def",
        f"{int(NOW) + 10}.",
        f"{int(NOW) + 10}." + "A" * 43,
        f"{int(NOW) + 10}." + "é" * 43,
        "9" * 40 + "." + "A" * 43,
        "x" * 1000,
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    assert token_scope(KEYS, token, 42, NOW) is None


def test_an_expiry_beyond_what_we_mint_is_refused() -> None:
    """A token whose expiry is later than any this server (or one a minute ahead) would mint:
    signed with a longer TTL, so not ours to honour."""
    far = mint("k-all", 42, NOW, ttl=TOKEN_TTL + CLOCK_SLACK + 5)
    assert token_scope(KEYS, far, 42, NOW) is None
    ahead = mint("k-all", 42, NOW + CLOCK_SLACK - 5)  # minted by a node whose clock is ahead
    assert token_scope(KEYS, ahead, 42, NOW) == EVERY_SYSTEM
