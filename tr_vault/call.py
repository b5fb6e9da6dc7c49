"""A call as tr_vault knows it: what intake validated, and what the journal stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CallMeta:
    """A validated upload's metadata, the same shape whichever protocol brought it."""

    protocol: str
    system: str
    system_label: str | None
    talkgroup: int
    start_time: float  # Unix seconds, UTC
    audio_name: str
    content_type: str
    talkgroup_label: str | None = None
    talkgroup_tag: str | None = None
    talkgroup_group: str | None = None
    source: int | None = None
    frequency: int | None = None
    stop_time: float | None = None
    duration: float | None = None
    emergency: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what was odd but not refused (e.g. unparsable JSON fields)

    @property
    def key_system(self) -> str:
        """The name the storage key files the call under: the short name when known."""
        return self.system_label or self.system


@dataclass(frozen=True)
class StoredAudio:
    """The audio of an upload, durable in the cache under `key`."""

    key: str
    size: int
    sha256: str
    md5: str


@dataclass(frozen=True)
class CallRow:
    """One row of the journal's `calls` table."""

    id: int
    protocol: str
    system: str
    system_label: str | None
    talkgroup: int
    talkgroup_label: str | None
    talkgroup_tag: str | None
    talkgroup_group: str | None
    source: int | None
    frequency: int | None
    start_time: str
    stop_time: str | None
    duration: float | None
    emergency: int
    audio_name: str
    metadata: str
    key: str
    content_type: str
    size: int
    sha256: str
    md5: str
    state: str
    attempts: int
    next_attempt_at: str | None
    claimed_by: str | None
    claimed_at: str | None
    last_error: str | None
    received_at: str
    uploaded_at: str | None
    etag: str | None
    verified_at: str | None
    cached: int
    pruned_at: str | None
    claim_expires_at: str | None
    # Stored before migration 0003 as a call of its own, yet the same call (audio SHA-256,
    # talkgroup, start second) as that earlier row; None for every call stored since.
    duplicate_of: int | None
    # Where the verified object went (0004): its bucket and full key (prefix included); None
    # before the first verified upload, and on rows uploaded before 0004.
    bucket: str | None = None
    object_key: str | None = None
    # 0005: the site that received the call (None: this node, stored before 0005); how a row
    # rebuilt from the bucket was made (`metadata` or `key`, None for calls received here);
    # the last time `verify` found the object intact.
    site: str | None = None
    rebuilt: str | None = None
    checked_at: str | None = None


@dataclass(frozen=True)
class EventRow:
    id: int
    call_id: int
    at: str
    kind: str
    detail: str | None


@dataclass(frozen=True)
class UploadJob:
    """A pending call a worker has claimed: what it needs to upload and verify it."""

    id: int
    key: str
    size: int
    sha256: str
    md5: str
    content_type: str
    attempts: int
    # What the object's metadata records (see `tr_vault.objectmeta`).
    protocol: str = ""
    system: str = ""
    system_label: str | None = None
    talkgroup: int = 0
    talkgroup_label: str | None = None
    start_time: str = ""
    duration: float | None = None
    audio_name: str = ""
    # Where an earlier verified upload put the object (after `missing_in_s3`); None otherwise.
    bucket: str | None = None
    object_key: str | None = None
