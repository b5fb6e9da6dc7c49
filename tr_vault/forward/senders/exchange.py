"""One HTTP exchange with a destination, under the destination's deadline.

What every sender shares: the request runs inside a trio cancel scope of `within` seconds (the
whole exchange, body upload included, not only each read), the network's trouble becomes a
`TRANSIENT` answer instead of an exception, and only the first few KB of the answer are read
(the services answer with a line of text; a misbehaving proxy must not fill our memory).
An exception raised by the request body (the audio's `chunks()`, e.g. a `StorageError` when S3
fails mid-stream) is not the destination's fault and propagates unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
import trio

from tr_vault.forward.base import Answer, Outcome

__all__ = ["MAX_ANSWER_BYTES", "Reply", "cut", "exchange"]

MAX_ANSWER_BYTES = 4096
_DETAIL_CHARS = 300


@dataclass(frozen=True)
class Reply:
    """What the service answered: its status and the start of its body, as text."""

    status: int
    text: str

    def detail(self, what: str) -> str:
        return f"{what}: HTTP {self.status} {cut(self.text)!r}"

    def answer(self, outcome: Outcome, what: str) -> Answer:
        return Answer(outcome, self.detail(what), self.status)


def cut(text: str, limit: int = _DETAIL_CHARS) -> str:
    """A service's answer shortened for the journal's `last answer` and the logs."""
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


async def exchange(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    what: str,
    within: float,
    headers: Mapping[str, str],
    content: bytes | AsyncIterator[bytes],
) -> Reply | Answer:
    """Send one request; its `Reply`, or a `TRANSIENT` `Answer` saying what went wrong.

    `what` names the step for the detail ("rdio-scanner call-upload", "Broadcastify PUT").
    """
    try:
        with trio.move_on_after(within) as scope:
            async with client.stream(method, url, headers=dict(headers), content=content) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_ANSWER_BYTES:
                        break
                text = bytes(body[:MAX_ANSWER_BYTES]).decode("utf-8", errors="replace")
                return Reply(resp.status_code, text)
    except httpx.TimeoutException as exc:
        return Answer(Outcome.TRANSIENT, f"{what}: timed out ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        return Answer(Outcome.TRANSIENT, f"{what}: {type(exc).__name__}: {cut(str(exc))}")
    except OSError as exc:  # a socket error httpx did not wrap
        return Answer(Outcome.TRANSIENT, f"{what}: {type(exc).__name__}: {cut(str(exc))}")
    assert scope.cancelled_caught
    return Answer(Outcome.TRANSIENT, f"{what}: no complete answer within {within:g} s")
