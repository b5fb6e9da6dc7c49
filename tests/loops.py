"""Building blocks for tests of the background loops: a journal, a cache and calls in them."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import trio

from tr_vault.cache import AudioCache
from tr_vault.call import CallMeta
from tr_vault.intake.store import Accepted, Intake
from tr_vault.journal import Journal
from tr_vault.services.store_health import StoreHealth, probe_store, write_probe_file
from tr_vault.storage.base import ObjectStore

BASE_WALL = 1_764_000_000.0


def virtual_wall_clock() -> float:
    """Wall time that moves with trio's (mock) clock."""
    return BASE_WALL + trio.current_time()


@dataclass
class Bench:
    journal: Journal
    cache: AudioCache
    intake: Intake

    async def add_call(self, data: bytes, n: int, *, system: str = "metro") -> Accepted:
        temp = self.cache.new_temp()
        temp.write(data)
        meta = CallMeta(
            protocol="rdio",
            system=system,
            system_label=system,
            talkgroup=9131,
            start_time=1764001234 + n,
            audio_name=f"9131-{1764001234 + n}.m4a",
            content_type="audio/mp4",
        )
        return await self.intake.store(meta, temp)

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Read from the journal through a connection of the test's own."""
        conn = sqlite3.connect(self.journal.path)
        try:
            return list(conn.execute(sql, params))
        finally:
            conn.close()

    def execute(self, sql: str, *params: object) -> int:
        """Change the journal (committed, so the code under test sees it); rows changed."""
        conn = sqlite3.connect(self.journal.path)
        try:
            with conn:
                changed = conn.execute(sql, params).rowcount
            assert changed > 0, f"set-up changed nothing: {sql}"
            return changed
        finally:
            conn.close()

    def health(self, store: ObjectStore, *, max_interval: float = 60.0) -> StoreHealth:
        """The store's health, probed as the server probes it (a PUT and a HEAD)."""
        probe_file = write_probe_file(self.journal.path.parent / "store-probe")
        return StoreHealth(
            lambda: probe_store(store, probe_file, seconds=10.0),
            max_interval=max_interval,
            clock=virtual_wall_clock,
            rng=random.Random(3),
        )


async def open_bench(tmp_path: Path, *, state: str = "pending") -> Bench:
    journal = await Journal.open(tmp_path / "vault.db", clock=virtual_wall_clock)
    cache = AudioCache(tmp_path / "audio")
    cache.prepare()
    return Bench(journal, cache, Intake(journal, cache, initial_state=state))


async def wait_state(bench: Bench, call_id: int, state: str) -> None:
    """Wait (virtual time) until the call reaches `state`.

    The row is read by the test's own blocking sqlite3 call, not a journal thread hop: while
    every task waits on a thread, the mock clock would jump straight to the farthest deadline
    (this bound), and on a loaded machine a hop can outlast the autojump threshold.
    """
    with trio.fail_after(3600):
        while bench.rows("SELECT state FROM calls WHERE id = ?", call_id) != [(state,)]:
            await trio.sleep(1)
