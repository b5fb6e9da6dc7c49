"""The exceptions tr_vault raises, as one small tree.

    TrVaultError
    ├── ConfigError            a setting is missing or wrong; start-up stops with its message
    ├── JournalError           the journal cannot be opened or migrated
    ├── IntakeError            an upload is refused; carries the HTTP status and the body to send
    └── StorageError           the object store failed
        ├── ObjectNotFound     a clear 404 for a key: the object is not there
        ├── StorageUnavailable cannot decide (network, timeout, 5xx): try again later
        └── StoragePermanent   the store refused for good (403, 400): retrying will not help

Nothing above `storage/` sees an httpx exception: the backends translate.
"""

from __future__ import annotations


class TrVaultError(Exception):
    """Base of every error tr_vault raises on purpose."""


class ConfigError(TrVaultError):
    """A setting is missing or wrong; the message names it and says what to fix."""


class JournalError(TrVaultError):
    """The journal cannot be opened, migrated or written."""


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
    """The object store failed. `code` is the provider's error code when it sent one."""

    transient = True

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class ObjectNotFound(StorageError):
    """The store answered a clear 404 for the key."""

    transient = False


class StorageUnavailable(StorageError):
    """The store could not be reached or answered 5xx/429: nothing is known, retry later."""

    transient = True


class StoragePermanent(StorageError):
    """The store refused the request in a way retrying will not fix (bad credentials, no bucket)."""

    transient = False
