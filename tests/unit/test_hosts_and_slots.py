"""The Host rule and the upload slots, as units."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tr_vault.config import Settings
from tr_vault.web.hosts import host_name
from tr_vault.web.slots import NoSlot, UploadSlots


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("vault.example.org", "vault.example.org"),
        ("", ""),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_a_keyless_loopback_server_allows_loopback_names_only(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert [s.host_allowed(n) for n in ("localhost", "127.0.0.1", "::1")] == [True] * 3
    assert not s.host_allowed("attacker.example")
    assert not s.host_allowed("")


def test_with_keys_or_a_list_the_rule_follows_the_settings(tmp_path: Path) -> None:
    assert settings(tmp_path, api_keys="k").host_allowed("vault.example.org")
    listed = settings(tmp_path, api_keys="k", allowed_hosts="a.example, B.example")
    assert listed.host_allowed("b.example") and not listed.host_allowed("c.example")
    assert settings(tmp_path, allowed_hosts="*").host_allowed("anything.example")


def test_per_client_default_is_half_the_slots_and_at_least_one(tmp_path: Path) -> None:
    assert settings(tmp_path).uploads_per_client == 16
    assert settings(tmp_path, max_inflight_uploads=1).uploads_per_client == 1
    assert settings(tmp_path, max_uploads_per_client=50).uploads_per_client == 32


async def test_one_client_waits_for_its_share_while_another_gets_a_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = UploadSlots(total=4, per_client=2)
    release = trio.Event()
    holding = 0

    async def hold(client: str) -> None:
        nonlocal holding
        async with slots.hold(client, patience=1.0):
            holding += 1
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "a")
        nursery.start_soon(hold, "a")
        await trio.testing.wait_all_tasks_blocked()
        assert (holding, slots.in_use) == (2, 2)
        with pytest.raises(NoSlot):  # a's share is full, although two slots are free
            async with slots.hold("a", patience=1.0):
                pass
        async with slots.hold("b", patience=1.0):
            assert slots.in_use == 3
        release.set()
    assert slots.in_use == 0
    assert slots._clients == {}  # nothing kept per address once it is gone


async def test_a_cancelled_wait_gives_nothing_away(autojump_clock: trio.testing.MockClock) -> None:
    slots = UploadSlots(total=1, per_client=1)
    async with trio.open_nursery() as nursery:
        gate = trio.Event()

        async def holder() -> None:
            async with slots.hold("a", patience=1.0):
                await gate.wait()

        nursery.start_soon(holder)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.5):
            async with slots.hold("b", patience=10.0):
                pytest.fail("no slot was free")
        gate.set()
    async with slots.hold("b", patience=0.1):
        assert slots.in_use == 1
