"""The relay's queue: the `deliveries` table (migration 0007) and its state transitions.

Each function is one transaction run through `Journal.call`. A delivery is claimed on a lease
(the destination's timeout plus a margin); an expired claim is taken over with an event, and
the old claim can no longer mark the row. Every attempt writes an event on the call, so the
call's history says what each destination answered, and when.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tr_vault.call import CallRow
from tr_vault.forward.base import Destination
from tr_vault.forward.config import wanted
from tr_vault.journal import add_deliveries, add_event, get_call, transaction
from tr_vault.timefmt import from_db, to_db

STATES = ("pending", "done", "failed", "skipped")
SKIP_BATCH = 200  # deliveries given up per claim at most (the rest on the next one)
BACKFILL_BATCH = 1000


@dataclass(frozen=True)
class DeliveryJob:
    """A claimed delivery and the call it carries."""

    id: int
    destination: str
    attempts: int
    created_at: str
    call: CallRow


@dataclass(frozen=True)
class DeliveryClaim:
    job: DeliveryJob | None
    next_due_in: float | None  # seconds until one falls due; None when none is pending


def _detail(destination: str, answer: str, **more: Any) -> str:
    return json.dumps({"destination": destination, "answer": answer, **more})


_FREE = "(claimed_by IS NULL OR coalesce(claim_expires_at, '') <= ?)"


def claim_delivery(
    conn: sqlite3.Connection,
    destination: str,
    worker: str,
    now: float,
    lease: float,
    *,
    give_up_after: float | None = None,
    exclude: Sequence[int] = (),
) -> DeliveryClaim:
    """Claim the due pending delivery of the oldest call for `destination`.

    Deliveries pending longer than `give_up_after` end `skipped` first (event
    `forward_skipped`). `exclude` leaves out deliveries (the one a probe must not re-send).
    """
    at = to_db(now)
    with transaction(conn):
        if give_up_after is not None:
            _give_up(conn, destination, now, give_up_after)
        skip = ""
        if exclude:
            skip = f" AND id NOT IN ({','.join('?' * len(exclude))})"
        row = conn.execute(
            "SELECT id, call_id, attempts, created_at, claimed_by FROM deliveries"
            f" WHERE destination = ? AND state = 'pending' AND next_attempt_at <= ? AND {_FREE}"
            f"{skip} ORDER BY call_id LIMIT 1",
            (destination, at, at, *exclude),
        ).fetchone()
        if row is None:
            return DeliveryClaim(None, _next_due_in(conn, destination, now))
        if row["claimed_by"] is not None:
            add_event(
                conn,
                row["call_id"],
                at,
                "forward_requeued",
                _detail(destination, f"claim of {row['claimed_by']} expired; taken over"),
            )
        conn.execute(
            "UPDATE deliveries SET claimed_by = ?, claim_expires_at = ? WHERE id = ?",
            (worker, to_db(now + lease), row["id"]),
        )
        call = get_call(conn, row["call_id"])
        assert call is not None  # deliveries reference calls
        job = DeliveryJob(row["id"], destination, row["attempts"], row["created_at"], call)
        return DeliveryClaim(job, 0.0)


def _give_up(conn: sqlite3.Connection, destination: str, now: float, after: float) -> None:
    at = to_db(now)
    rows = conn.execute(
        "SELECT id, call_id, created_at FROM deliveries WHERE destination = ?"
        f" AND state = 'pending' AND created_at <= ? AND {_FREE} ORDER BY call_id LIMIT ?",
        (destination, to_db(now - after), at, SKIP_BATCH),
    ).fetchall()
    for row in rows:
        conn.execute(
            "UPDATE deliveries SET state = 'skipped', claimed_by = NULL, claim_expires_at = NULL,"
            " next_attempt_at = NULL, last_answer = ? WHERE id = ?",
            (f"given up: pending since {row['created_at']} (give_up_after)", row["id"]),
        )
        add_event(
            conn,
            row["call_id"],
            at,
            "forward_skipped",
            _detail(destination, f"pending longer than give_up_after ({after:g} s)"),
        )


def _next_due_in(conn: sqlite3.Connection, destination: str, now: float) -> float | None:
    row = conn.execute(
        "SELECT min(CASE WHEN claimed_by IS NULL THEN next_attempt_at ELSE claim_expires_at END)"
        " FROM deliveries WHERE destination = ? AND state = 'pending'",
        (destination,),
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return max(0.0, from_db(row[0]) - now)


def delivery_done(
    conn: sqlite3.Connection,
    delivery_id: int,
    worker: str,
    now: float,
    answer: str,
    *,
    outcome: str,
) -> bool:
    """The destination has the call (delivered, or it already had it); False when the claim
    was lost meanwhile (nothing written)."""
    at = to_db(now)
    with transaction(conn):
        row = _claimed(conn, delivery_id, worker, at)
        if row is None:
            return False
        conn.execute(
            "UPDATE deliveries SET state = 'done', attempts = attempts + 1, delivered_at = ?,"
            " last_answer = ?, next_attempt_at = NULL, claimed_by = NULL, claim_expires_at = NULL"
            " WHERE id = ?",
            (at, answer, delivery_id),
        )
        add_event(
            conn,
            row["call_id"],
            at,
            "forward_ok",
            _detail(row["destination"], answer, outcome=outcome, attempt=row["attempts"] + 1),
        )
    return True


def _claimed(
    conn: sqlite3.Connection, delivery_id: int, worker: str, at: str
) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT call_id, destination, attempts FROM deliveries WHERE id = ? AND state = 'pending'"
        " AND claimed_by = ? AND claim_expires_at > ?",
        (delivery_id, worker, at),
    ).fetchone()
    return row


def delivery_failed(
    conn: sqlite3.Connection,
    delivery_id: int,
    worker: str,
    now: float,
    answer: str,
    *,
    permanent: bool,
    max_attempts: int,
    retry_in: float,
) -> str:
    """An attempt charged to the call: `failed` when permanent or its attempts are spent,
    else pending again after `retry_in`. Returns the new state."""
    at = to_db(now)
    with transaction(conn):
        row = _claimed(conn, delivery_id, worker, at)
        if row is None:
            return "pending"
        attempts = row["attempts"] + 1
        give_up = permanent or attempts >= max_attempts
        state = "failed" if give_up else "pending"
        conn.execute(
            "UPDATE deliveries SET state = ?, attempts = ?, last_answer = ?, next_attempt_at = ?,"
            " claimed_by = NULL, claim_expires_at = NULL WHERE id = ?",
            (state, attempts, answer, None if give_up else to_db(now + retry_in), delivery_id),
        )
        name = row["destination"]
        add_event(
            conn,
            row["call_id"],
            at,
            "forward_error",
            _detail(name, answer, attempt=attempts, charged=True),
        )
        if give_up:
            why = "refused for good" if permanent else f"{attempts} attempts"
            add_event(conn, row["call_id"], at, "forward_failed", _detail(name, f"{why}: {answer}"))
    return state


def delivery_deferred(
    conn: sqlite3.Connection,
    delivery_id: int,
    worker: str,
    now: float,
    answer: str,
    *,
    retry_in: float = 0.0,
    why: str,
) -> bool:
    """An attempt not charged to the call (the destination is down or misconfigured, the audio
    could not be read): the claim is given back, the attempts stay as they were."""
    at = to_db(now)
    with transaction(conn):
        row = _claimed(conn, delivery_id, worker, at)
        if row is None:
            return False
        conn.execute(
            "UPDATE deliveries SET last_answer = ?, next_attempt_at = ?, claimed_by = NULL,"
            " claim_expires_at = NULL WHERE id = ?",
            (answer, to_db(now + retry_in), delivery_id),
        )
        add_event(
            conn,
            row["call_id"],
            at,
            "forward_error",
            _detail(row["destination"], answer, charged=False, why=why),
        )
    return True


def release_delivery(conn: sqlite3.Connection, delivery_id: int, worker: str) -> None:
    """Give a claim back untouched (shutdown cancelled the attempt)."""
    with transaction(conn):
        conn.execute(
            "UPDATE deliveries SET claimed_by = NULL, claim_expires_at = NULL"
            " WHERE id = ? AND claimed_by = ?",
            (delivery_id, worker),
        )


def release_stale_claims(conn: sqlite3.Connection, run_id: str, now: float) -> int:
    """At start-up: claims of a run that is gone (a crash) are given back at once, with an
    event, instead of waiting out their leases. No attempt is charged: the destination may
    well have the call (a duplicate is harmless to every kind)."""
    at = to_db(now)
    with transaction(conn):
        rows = conn.execute(
            "SELECT id, call_id, destination, claimed_by FROM deliveries WHERE state = 'pending'"
            " AND claimed_by IS NOT NULL AND claimed_by NOT LIKE ? || ':%'",
            (run_id,),
        ).fetchall()
        for row in rows:
            conn.execute(
                "UPDATE deliveries SET claimed_by = NULL, claim_expires_at = NULL,"
                " next_attempt_at = ? WHERE id = ?",
                (at, row["id"]),
            )
            add_event(
                conn,
                row["call_id"],
                at,
                "forward_requeued",
                _detail(row["destination"], f"interrupted: {row['claimed_by']} stopped mid-send"),
            )
    return len(rows)


def backfill(
    conn: sqlite3.Connection, destination: Destination, since: float | None, now: float
) -> int:
    """Pending deliveries to `destination` for the stored calls (received since `since`) that
    its filters want; calls that have one already are left alone, so a re-run adds nothing."""
    at = to_db(now)
    added = 0
    last = 0
    while True:
        rows = conn.execute(
            "SELECT id, system, system_label, talkgroup FROM calls WHERE id > ?"
            " AND duplicate_of IS NULL AND state != 'lost' AND received_at >= ?"
            " ORDER BY id LIMIT ?",
            (last, to_db(since) if since is not None else "", BACKFILL_BATCH),
        ).fetchall()
        if not rows:
            return added
        last = rows[-1]["id"]
        with transaction(conn):
            for row in rows:
                if wanted(destination, _Filterable(**dict(row))):
                    added += add_deliveries(conn, row["id"], [destination.name], at)


@dataclass(frozen=True)
class _Filterable:
    """What `wanted` reads of a call."""

    id: int
    system: str
    system_label: str | None
    talkgroup: int


def retry_deliveries(
    conn: sqlite3.Connection, destination: str, now: float, *, failed: bool
) -> int:
    """An operator's retry: pending deliveries due now, a misconfigured destination re-probed
    at once; with `failed`, failed and skipped ones pending again with fresh attempts."""
    at = to_db(now)
    with transaction(conn):
        moved = 0
        if failed:
            rows = conn.execute(
                "SELECT id, call_id FROM deliveries WHERE destination = ?"
                " AND state IN ('failed', 'skipped')",
                (destination,),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?,"
                    " created_at = ? WHERE id = ?",
                    (at, at, row["id"]),
                )
                add_event(
                    conn,
                    row["call_id"],
                    at,
                    "forward_requeued",
                    _detail(destination, "retry requested by operator"),
                )
            moved = len(rows)
        cur = conn.execute(
            "UPDATE deliveries SET next_attempt_at = ? WHERE destination = ? AND state = 'pending'"
            " AND next_attempt_at > ?",
            (at, destination, at),
        )
        conn.execute(
            "UPDATE destination_health SET probe_requested_at = ? WHERE name = ?",
            (at, destination),
        )
        return moved + max(0, cur.rowcount)


def set_destination_health(
    conn: sqlite3.Connection,
    name: str,
    state: str,
    since: float,
    checked_at: float | None,
    error: str | None,
) -> None:
    """Record a destination's state (on each change) for status, the summary and metrics."""
    with transaction(conn):
        conn.execute(
            "INSERT INTO destination_health (name, state, since, checked_at, last_error)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET state = excluded.state,"
            " since = excluded.since, checked_at = excluded.checked_at,"
            " last_error = excluded.last_error",
            (name, state, to_db(since), to_db(checked_at) if checked_at else None, error),
        )


def ensure_destinations(conn: sqlite3.Connection, names: Sequence[str], now: float) -> None:
    """A health row for each configured destination (state `unknown` until the first send),
    so status lists it before any call went its way; existing rows are kept."""
    with transaction(conn):
        conn.executemany(
            "INSERT INTO destination_health (name, state, since) VALUES (?, 'unknown', ?)"
            " ON CONFLICT (name) DO NOTHING",
            [(name, to_db(now)) for name in names],
        )


def probe_requested_at(conn: sqlite3.Connection, name: str) -> float | None:
    """When `tr-vault forward retry` last asked for a re-probe of `name`."""
    row = conn.execute(
        "SELECT probe_requested_at FROM destination_health WHERE name = ?", (name,)
    ).fetchone()
    return from_db(row[0]) if row is not None and row[0] else None


def forward_summary(
    conn: sqlite3.Connection, now: float, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Per destination (configured, or found in the journal): counts by state, lag (age of
    the oldest pending delivery, seconds), state, since and the last error."""
    counts: dict[str, dict[str, int]] = {}
    for row in conn.execute(
        "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"
    ):
        counts.setdefault(row[0], dict.fromkeys(STATES, 0))[row[1]] = row[2]
    health = {
        row["name"]: dict(row)
        for row in conn.execute(
            "SELECT name, state, since, checked_at, last_error FROM destination_health"
        )
    }
    every = list(names) if names is not None else sorted(set(counts) | set(health))
    out = []
    for name in every:
        oldest = conn.execute(
            "SELECT created_at FROM deliveries WHERE destination = ? AND state = 'pending'"
            " ORDER BY call_id LIMIT 1",
            (name,),
        ).fetchone()
        h = health.get(name, {})
        out.append(
            {
                "name": name,
                "state": h.get("state", "unknown"),
                "since": h.get("since"),
                "checked_at": h.get("checked_at"),
                "last_error": h.get("last_error"),
                "deliveries": counts.get(name, dict.fromkeys(STATES, 0)),
                "lag_seconds": max(0.0, now - from_db(oldest[0])) if oldest else 0.0,
            }
        )
    return out


def calls_waiting(conn: sqlite3.Connection, call_ids: Sequence[int]) -> set[int]:
    """Which of `call_ids` still have a pending delivery (the pruner's question)."""
    if not call_ids:
        return set()
    marks = ",".join("?" * len(call_ids))
    return {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT call_id FROM deliveries WHERE state = 'pending'"
            f" AND call_id IN ({marks})",
            list(call_ids),
        )
    }
