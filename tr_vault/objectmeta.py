"""What a call object says about itself: user metadata to rebuild its journal row from.

Every call object carries, beside its `sha256`, the call's identity and place (README
"Object metadata"): names are lower-case ASCII; every value is UTF-8, percent-encoded
(`urllib.parse.quote` with `safe=":"`: letters, digits, `-._~:` stay as they are; everything
else, `%` itself included, becomes `%XX`), so headers stay ASCII and a value decodes with
`urllib.parse.unquote`. Free-text values are cut to `MAX_TEXT` encoded characters, so all of
it stays well under the providers' 2 KB limit for user metadata.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from urllib.parse import quote, unquote

MAX_TEXT = 160  # encoded characters per free-text value
MAX_TOTAL = 1536  # bytes of names + values, with sha256 (the providers' limit is 2 KB)

CALL_ID = "call-id"
SITE = "site"
PROTOCOL = "protocol"
SYSTEM = "system"
SYSTEM_LABEL = "system-label"
TALKGROUP = "talkgroup"
TALKGROUP_LABEL = "talkgroup-label"
START_TIME = "start-time"
DURATION = "duration"
AUDIO_NAME = "audio-name"


_UNSAFE_SITE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_site(value: str) -> str:
    """A site name as one safe key segment: `[A-Za-z0-9._-]` (others become `_`), at most 64
    characters, no leading or trailing `.`/`_`, never empty."""
    return _UNSAFE_SITE.sub("_", value.strip())[:64].strip("._") or "site"


def host_site() -> str:
    """The default site: this machine's host name, as a safe segment."""
    return safe_site(socket.gethostname())


def encode(value: str, *, limit: int = MAX_TEXT) -> str:
    """`value` percent-encoded to ASCII, cut (between whole characters) to `limit`."""
    out: list[str] = []
    used = 0
    for char in value:
        piece = quote(char, safe=":")
        if used + len(piece) > limit:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def decode(value: str) -> str:
    return unquote(value, errors="replace")


def call_metadata(
    *,
    call_id: int,
    site: str,
    protocol: str,
    system: str,
    system_label: str | None,
    talkgroup: int,
    talkgroup_label: str | None,
    start_time: str,
    duration: float | None,
    audio_name: str,
) -> dict[str, str]:
    """The metadata of a call object (without `sha256`, which the store sets itself).

    `start_time` is the journal's 'YYYY-MM-DD HH:MM:SS.SSS' (UTC); it is stored as ISO 8601
    with a `Z` ('2025-11-24T16:20:34.000Z').
    """
    meta = {
        CALL_ID: str(call_id),
        SITE: encode(site),
        PROTOCOL: encode(protocol),
        SYSTEM: encode(system),
        TALKGROUP: str(int(talkgroup)),
        START_TIME: encode(start_time.replace(" ", "T") + "Z"),
        AUDIO_NAME: encode(audio_name),
    }
    if system_label:
        meta[SYSTEM_LABEL] = encode(system_label)
    if talkgroup_label:
        meta[TALKGROUP_LABEL] = encode(talkgroup_label)
    if duration is not None:
        meta[DURATION] = f"{duration:.3f}"
    return meta


def metadata_bytes(meta: Mapping[str, str]) -> int:
    """What `meta` costs against the 2 KB limit: names (with `x-amz-meta-`) and values."""
    return sum(len("x-amz-meta-") + len(k) + len(v) for k, v in meta.items())


def decoded(meta: Mapping[str, str]) -> dict[str, str]:
    """The metadata of a HEAD answer with every value decoded."""
    return {name: decode(value) for name, value in meta.items()}
