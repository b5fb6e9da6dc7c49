"""The exceptions tr_vault raises, as one small tree.

    TrVaultError
    ├── ConfigError            a setting is missing or wrong; start-up stops with its message
    ├── JournalError           the journal cannot be opened, migrated or written
    ├── ReplicaError           the journal's replica (Litestream) cannot be read or restored
    ├── IntakeError            an upload is refused; carries the HTTP status and the body to send
    └── StorageError           the object store failed
        ├── ObjectNotFound     a clear 404 for a key: the object is not there
        ├── ObjectExists       a PUT that may not replace found an object at its key (412)
        ├── StorageUnavailable about the store: the same request would fail for any call
        │                      (network, timeouts, 5xx, SlowDown, credentials, no bucket, clock
        │                      skew, redirects). The store is marked down; no call is charged.
        └── CallStorageError   about this call: it counts one of the call's attempts
            ├── StoragePermanent   refused for good (EntityTooLarge, InvalidArgument, ...)
            └── VerificationError  what landed is not what was sent (size, SHA-256, BadDigest)

Nothing above `storage/` sees an httpx exception: the backends translate.
"""

from __future__ import annotations


class TrVaultError(Exception):
    """Base of every error tr_vault raises on purpose."""


class ConfigError(TrVaultError):
    """A setting is missing or wrong; the message names it and says what to fix."""


class JournalError(TrVaultError):
    """The journal cannot be opened, migrated or written."""


class ReplicaError(TrVaultError):
    """The journal's replica cannot be read or restored; the message says what Litestream said."""


class IntakeError(TrVaultError):
    """An upload is refused: `status` and `body` are what the client receives.

    The body texts are the ones rdio-scanner and OpenMHz answer with, because the
    recorders and their users' log searches recognise them.
    """

    def __init__(self, status: int, body: str, *, close: bool = False) -> None:
        super().__init__(body.strip())
        self.status = status
        self.body = body
        self.close = close


class StorageError(TrVaultError):
    """The object store failed. `code` is the provider's error code when it sent one.

    `transient`: sending the same request again may succeed.
    """

    transient = True

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class ObjectNotFound(StorageError):
    """The store answered a clear 404 for the key."""

    transient = False


class ObjectExists(StorageError):
    """A PUT that must not replace an object found one at its key (S3: 412 on
    `If-None-Match: *`). HEAD it to learn whether it is ours."""

    transient = False


class StorageUnavailable(StorageError):
    """About the store, not the call: any call would fail the same way right now.

    The message says what is wrong and, where it can, what the operator should do.
    """

    transient = True


class CallStorageError(StorageError):
    """About this call's request: it is charged to the call (an attempt, maybe `failed`)."""


class StoragePermanent(CallStorageError):
    """The store refused this call's request in a way retrying will not fix."""

    transient = False


class VerificationError(CallStorageError):
    """What landed (or what the store received) is not what we sent: upload it again."""

    transient = True
