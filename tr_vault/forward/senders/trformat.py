"""The list fields exactly as trunk-recorder's rdio and OpenMHz plugins print them.

The plugins write these JSON-ish strings by hand (`std::setprecision(2)` positions, a space
inside the source braces, `[]` for a single talkgroup's "patch"); the servers parse them as
JSON, and so might a user's log search. One exception: a unit `tag` (trunk-recorder v5.2+
adds it unescaped, which breaks JSON on a quote) is written JSON-escaped here.
"""

from __future__ import annotations

import json

from tr_vault.forward.callview import TrCall

__all__ = ["frequencies", "patches", "sources"]


def sources(call: TrCall) -> str:
    """`[{ "pos": 0.00, "src": 1402211 }, ...]` (rdio `sources`, OpenMHz `source_list`)."""
    entries = []
    for s in call.sources:
        tag = f', "tag": {json.dumps(s.tag, ensure_ascii=False)}' if s.tag else ""
        entries.append(f'{{ "pos": {s.pos:.2f}, "src": {s.src}{tag} }}')
    return "[" + ", ".join(entries) + "]"


def frequencies(call: TrCall) -> str:
    """rdio's `frequencies`: one entry per transmission, in the plugin's key order."""
    entries = [
        f'{{"freq": {t.freq}, "time": {t.time}, "pos": {t.pos:.2f}, "len": {t.len:.2f},'
        f' "errorCount": {t.error_count}, "spikeCount": {t.spike_count}}}'
        for t in call.freq_list
    ]
    return "[" + ", ".join(entries) + "]"


def patches(call: TrCall) -> str:
    """`[9131,9132]` for a patch of two or more, else `[]` (as the plugins print it)."""
    if len(call.patches) > 1:
        return "[" + ",".join(str(p) for p in call.patches) + "]"
    return "[]"
