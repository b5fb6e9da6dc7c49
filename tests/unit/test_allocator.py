"""The server caps glibc's malloc arenas (allocator.py), unless the operator chose a number."""

from __future__ import annotations

import subprocess
import sys


def run_limit(env: dict[str, str]) -> str:
    code = "from tr_vault.allocator import limit_arenas; print(limit_arenas())"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_arenas_are_capped_on_glibc() -> None:
    assert run_limit({"PATH": "/usr/bin:/bin"}) == "True"


def test_an_operators_malloc_arena_max_wins() -> None:
    assert run_limit({"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "4"}) == "False"
