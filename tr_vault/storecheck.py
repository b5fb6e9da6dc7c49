"""`tr-vault check`: does the S3 configuration work, end to end? For operators and deploy scripts.

The server never refuses to start over S3 (calls wait in the cache while the store is down);
this command is the one that fails loudly. It runs, in order: the bucket (HeadBucket), a PUT
and a HEAD of the probe object the server itself uses, and a GET through a presigned URL (what
players are sent to for pruned calls). Each step prints one line; the exit status is 0 only
when every step that uploads and plays depend on worked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tr_vault.errors import StorageError
from tr_vault.services.store_health import (
    PROBE_BODY,
    PROBE_KEY,
    PROBE_SHA256,
    PROBE_TIMEOUT,
    put_probe,
    write_probe_file,
)
from tr_vault.storage.base import ObjectStore


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str
    required: bool = True  # a failed optional step is a warning


async def check_store(store: ObjectStore, probe_dir: Path) -> list[Step]:
    """Every step's outcome, in order; later steps are skipped once the PUT failed.

    `probe_dir` is a writable directory for the probe object's local copy.
    """
    steps: list[Step] = []
    probe_file = await trio.to_thread.run_sync(write_probe_file, probe_dir / "store-probe")

    try:
        with trio.fail_after(PROBE_TIMEOUT):
            await store.check()
        steps.append(Step("bucket", True, "HeadBucket answered 200"))
    except (StorageError, trio.TooSlowError) as exc:
        status = getattr(exc, "status", None)
        # A key limited to objects (no s3:ListBucket) gets 403 here and still works.
        steps.append(Step("bucket", False, _text(exc), required=status != 403))
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            await put_probe(store, probe_file)
        steps.append(Step("put", True, f"PUT {PROBE_KEY} ({len(PROBE_BODY)} bytes)"))
    except (StorageError, trio.TooSlowError) as exc:
        steps.append(Step("put", False, _text(exc)))
        return steps
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            info = await store.head(PROBE_KEY)
        if info.size != len(PROBE_BODY) or info.sha256 != PROBE_SHA256:
            steps.append(Step("head", False, f"HEAD shows size {info.size}, sha256 {info.sha256}"))
        else:
            steps.append(Step("head", True, "HEAD shows the size and SHA-256 metadata sent"))
    except (StorageError, trio.TooSlowError) as exc:
        detail = _text(exc)
        if getattr(exc, "status", None) == 403:
            detail += " (the key may PUT but not HEAD: grant it s3:GetObject)"
        steps.append(Step("head", False, detail))
    url = store.presign_get(PROBE_KEY, expires_in=300, content_type="text/plain")
    try:
        with trio.fail_after(PROBE_TIMEOUT):
            async with httpx.AsyncClient() as client:
                response = await client.get(url)
        if response.status_code == 200 and response.content == PROBE_BODY:
            steps.append(Step("presign", True, "a presigned GET returned the probe's bytes"))
        else:
            steps.append(
                Step(
                    "presign",
                    False,
                    f"a presigned GET answered HTTP {response.status_code}"
                    " (players could not play pruned calls; check S3_PRESIGN_ENDPOINT)",
                )
            )
    except (httpx.HTTPError, trio.TooSlowError) as exc:
        steps.append(
            Step(
                "presign",
                False,
                f"a presigned GET failed: {_text(exc)} (S3_PRESIGN_ENDPOINT must be reachable)",
            )
        )
    return steps


def passed(steps: list[Step]) -> bool:
    return all(step.ok or not step.required for step in steps)


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
