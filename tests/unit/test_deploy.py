"""deploy/ agrees with the code: the env example names every setting with its default, the
Containerfile, compose.yaml and the systemd unit use real settings, ports, paths and a stop
timeout longer than the upload grace period.

What needs a running server (the healthcheck, the compose topology, the syscalls the unit
allows) is in tests/integration/test_container.py, test_compose.py and test_systemd.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests import deploy_files as df
from tr_vault.config import Settings, load_settings, split_listen
from tr_vault.durations import parse_duration
from tr_vault.errors import ConfigError

SHUTDOWN_GRACE = Settings.model_fields["shutdown_grace"].default
# `#NAME=value` lines show the default, except these examples (and why):
NOT_DEFAULTS = {
    "TR_VAULT_DB": "the default is derived: $TR_VAULT_DATA_DIR/vault.db",
    "S3_VERIFY_ETAG": "the default is derived: true unless S3_SSE=aws:kms",
}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no developer's .env is read


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


# -- the env example ----------------------------------------------------------------------------


def test_env_example_names_every_setting_once() -> None:
    lines = df.env_example()
    counts = Counter(line.name for line in lines)
    assert [n for n, c in counts.items() if c > 1] == []
    names = set(counts)
    expected = set(df.setting_names())
    assert sorted(expected - names) == [], "settings missing from deploy/tr-vault.env.example"
    assert sorted(names - expected) == [], "names in the env example that Settings does not read"


def test_env_example_shows_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `#NAME=value` line, set alone, gives the setting its default value."""
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    fields = df.setting_names()
    for line in df.env_example():
        if not line.commented or line.name in NOT_DEFAULTS:
            continue
        with monkeypatch.context() as m:
            m.setenv(line.name, line.value)
            shown = Settings(_env_file=None)  # type: ignore[call-arg]
        field = fields[line.name]
        assert getattr(shown, field) == getattr(defaults, field), (
            f"line {line.line}: {line.name}={line.value} is not the default"
            f" ({getattr(defaults, field)!r})"
        )


def test_env_example_as_written_starts_and_every_shown_value_parses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lines = df.env_example()
    active = {line.name: line.value for line in lines if not line.commented}
    settings = settings_from(active, monkeypatch)
    assert settings.data_dir == Path("/var/lib/tr-vault")
    assert settings.keys and not settings.private  # 0.0.0.0 with a key: allowed
    every = {line.name: line.value for line in lines}
    settings_from(every, monkeypatch)  # uncommenting any line gives a valid setting


def test_env_example_data_dir_is_the_units_state_directory() -> None:
    active = {line.name: line.value for line in df.env_example() if not line.commented}
    service = df.unit_values(df.unit(), "Service")
    assert active["TR_VAULT_DATA_DIR"] == f"/var/lib/{service['StateDirectory']}"


# -- the systemd unit ---------------------------------------------------------------------------


def _seconds(value: str) -> float:
    return float(value) if value.isdigit() else parse_duration(value)


def test_unit_runs_serve_as_a_dedicated_user_in_its_state_directory() -> None:
    sections = df.unit()
    service = df.unit_values(sections, "Service")
    assert service["User"] not in ("", "root", "0") and service["Group"] == service["User"]
    program, verb = service["ExecStart"].split()
    assert (Path(program).name, verb) == ("tr-vault", "serve")
    data_dir = f"/var/lib/{service['StateDirectory']}"
    assert service["WorkingDirectory"] == data_dir
    assert f"TR_VAULT_DATA_DIR={data_dir}" in service["Environment"].split()
    assert data_dir in service["ReadWritePaths"].split()
    assert df.unit_values(sections, "Install")["WantedBy"] == "multi-user.target"


def test_unit_stop_timeout_outlasts_the_upload_grace_period() -> None:
    service = df.unit_values(df.unit(), "Service")
    assert _seconds(service["TimeoutStopSec"]) >= SHUTDOWN_GRACE + 30
    # SIGTERM to tr_vault alone: it stops its Litestream child itself, after the journal.
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert "2" in service["RestartPreventExitStatus"].split()  # a bad setting: no restart loop


def test_unit_hardening_keeps_what_tr_vault_needs() -> None:
    service = df.unit_values(df.unit(), "Service")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictNamespaces": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
    }.items():
        assert service.get(key) == value, key
    families = set(service["RestrictAddressFamilies"].split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families  # S3, DNS; trio's wake-up socketpair
    assert "MemoryDenyWriteExecute" not in service  # libffi closures need W+X pages


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit_and_rates_it_hardened(tmp_path: Path) -> None:
    text = df.UNIT.read_text()
    venv_bin = Path(sys.executable).parent / "tr-vault"  # the unit's ExecStart must exist
    text = text.replace("/opt/tr-vault/.venv/bin/tr-vault", str(venv_bin))
    text = text.replace("EnvironmentFile=/", "EnvironmentFile=-/")  # absent on this machine
    copy = tmp_path / "tr-vault.service"
    copy.write_text(text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "Unknown key" not in verify.stderr and "Invalid" not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    if found is None:
        pytest.skip(f"systemd-analyze security --offline is not supported: {security.stderr}")
    assert float(found[1]) <= 2.5, security.stdout


# -- the Containerfile --------------------------------------------------------------------------


def test_containerfile_builds_on_slim_python_and_runs_serve_unprivileged() -> None:
    build, run = df.containerfile()
    assert build.base == run.base == "python:3.11-slim"
    assert build.name == "build"
    user = run.one("USER").split(":")[0]
    assert user not in ("root", "0")
    assert df.exec_form(run.one("ENTRYPOINT")) == ["tr-vault"]
    assert df.exec_form(run.one("CMD")) == ["serve"]
    # The wheel the build stage makes is what the run stage installs.
    assert "--wheel-dir /wheels" in build.one("RUN")
    assert run.all("COPY") == ["--from=build /wheels /wheels"]
    assert any("pip install --no-cache-dir /wheels/*.whl" in r for r in run.all("RUN"))


def test_containerfile_port_volume_and_env_are_settings() -> None:
    _, run = df.containerfile()
    env: dict[str, str] = {}
    for args in run.all("ENV"):
        env.update(df.env_instruction(args))
    tr_vault_env = {k: v for k, v in env.items() if not k.startswith("PYTHON")}
    assert set(tr_vault_env) <= df.accepted_names()
    host, port = split_listen(env["TR_VAULT_LISTEN"])
    assert host == "0.0.0.0"
    assert run.one("EXPOSE") == str(port)
    assert df.exec_form(run.one("VOLUME")) == [env["TR_VAULT_DATA_DIR"]]
    assert run.one("WORKDIR") == env["TR_VAULT_DATA_DIR"]


def test_container_env_without_keys_is_refused_with_the_documented_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, run = df.containerfile()
    env: dict[str, str] = {}
    for args in run.all("ENV"):
        env.update(df.env_instruction(args))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "TR_VAULT_API_KEYS" in str(refused.value) and "0.0.0.0" in str(refused.value)
    monkeypatch.setenv("TR_VAULT_API_KEYS", "my-key")
    assert load_settings().keys


def test_containerfile_healthcheck_asks_readyz_with_python() -> None:
    _, run = df.containerfile()
    options, command = df.healthcheck(run)
    assert command[:2] == ["python", "-c"]
    assert "/readyz" in command[2] and "TR_VAULT_LISTEN" in command[2]
    compile(command[2], "<healthcheck>", "exec")
    assert _seconds(options["timeout"]) < _seconds(options["interval"])


def test_dockerignore_lets_in_exactly_what_the_build_stage_copies() -> None:
    build, _ = df.containerfile()
    copied = {source.rstrip("/") for source in df.copy_sources(build)}
    lines = [
        line.strip()
        for line in df.DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line[1:] for line in lines if line.startswith("!")} == copied
    assert all((df.REPO / source).exists() for source in copied)


# -- compose.yaml -------------------------------------------------------------------------------

ENV = {"TR_VAULT_API_KEYS": "compose-key"}


def _services() -> dict[str, Any]:
    services = df.compose()["services"]
    assert isinstance(services, dict)
    return services


def test_compose_runs_tr_vault_seaweedfs_and_a_bucket_job() -> None:
    services = _services()
    assert set(services) == {"tr-vault", "seaweedfs", "create-bucket"}
    tr_vault = services["tr-vault"]
    assert tr_vault["build"]["dockerfile"] == "deploy/Containerfile"
    assert (df.COMPOSE.parent / tr_vault["build"]["context"]).resolve() == df.REPO
    assert "healthcheck" not in tr_vault  # the image's HEALTHCHECK (/readyz) applies
    assert tr_vault["hostname"]  # the site name must survive re-creating the container
    assert tr_vault["restart"] == "unless-stopped"
    assert services["create-bucket"]["restart"] == "no"
    assert services["seaweedfs"]["image"] == services["create-bucket"]["image"]


def test_compose_volume_holds_the_containers_data_dir() -> None:
    data = df.compose()
    _, run = df.containerfile()
    [data_dir] = df.exec_form(run.one("VOLUME"))
    mounts = [m.split(":") for m in data["services"]["tr-vault"]["volumes"]]
    assert [[name, path] for name, path in mounts] == [["tr-vault-data", data_dir]]
    assert set(data["volumes"]) == {"tr-vault-data", "seaweedfs-data"}


def test_compose_waits_for_a_healthy_s3_server() -> None:
    services = _services()
    seaweed = services["seaweedfs"]
    test = seaweed["healthcheck"]["test"]
    assert test[0] == "CMD" and test[-1] == "http://127.0.0.1:8333/healthz"
    for name in ("tr-vault", "create-bucket"):
        assert services[name]["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}


def test_compose_tr_vault_env_names_are_settings_and_s3_is_the_service() -> None:
    services = _services()
    env = df.service_env(services["tr-vault"], ENV)
    assert set(env) <= df.accepted_names()
    endpoint = urlsplit(env["S3_ENDPOINT"])
    assert endpoint.hostname == "seaweedfs"
    command = df.command(services["seaweedfs"], ENV)
    assert "server" in command and "-s3" in command
    assert not any(part.startswith("-s3.port=") for part in command)  # so 8333, the default
    assert endpoint.port == 8333
    assert "-s3.autoCreateBucket=false" in command  # a missing bucket is one, as on S3
    assert env["S3_CONDITIONAL_PUT"] == "true"  # SeaweedFS answers 412 (README's table)
    # SeaweedFS's admin key is the one tr_vault signs with, the bucket the one it uses.
    seaweed_env = df.service_env(services["seaweedfs"], ENV)
    assert seaweed_env["AWS_ACCESS_KEY_ID"] == env["S3_ACCESS_KEY"]
    assert seaweed_env["AWS_SECRET_ACCESS_KEY"] == env["S3_SECRET_KEY"]
    job_env = df.service_env(services["create-bucket"], ENV)
    assert job_env["BUCKET"] == env["S3_BUCKET"]
    assert job_env["WEED_MASTER"] == "seaweedfs:9333"


def test_compose_settings_start_and_need_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _services()
    _, run = df.containerfile()
    image_env: dict[str, str] = {}
    for args in run.all("ENV"):
        image_env.update(df.env_instruction(args))
    env = image_env | df.service_env(services["tr-vault"], ENV)
    settings = settings_from(env, monkeypatch)
    assert settings.s3_bucket == "calls" and settings.keys
    assert settings.storage_mode.value == "tiered"
    with pytest.raises(df.MissingVariable, match="TR_VAULT_API_KEYS"):
        df.service_env(services["tr-vault"], {})


def test_compose_stop_grace_outlasts_the_upload_grace_period() -> None:
    tr_vault = _services()["tr-vault"]
    assert parse_duration(tr_vault["stop_grace_period"]) >= SHUTDOWN_GRACE + 10
    ports = [df.interpolate(p, ENV).split(":") for p in tr_vault["ports"]]
    _, run = df.containerfile()
    assert ports == [["8080", run.one("EXPOSE")]]


def test_interpolation_follows_compose() -> None:
    assert df.interpolate("$${X} ${A:-a} ${B-b} ${C}", {"B": ""}) == "${X} a  "
    assert df.interpolate("${A:-a}", {"A": ""}) == "a"
    assert df.interpolate("${A:?need A}", {"A": "1"}) == "1"
    with pytest.raises(df.MissingVariable):
        df.interpolate("${A:?need A}", {"A": ""})


# -- the README's settings table ----------------------------------------------------------------


def test_readme_settings_table_names_every_setting() -> None:
    readme = (df.REPO / "README.md").read_text()
    table = readme.split("\n## Configuration\n", 1)[1].split("\n### ", 1)[0]
    names: list[str] = []
    for row in table.splitlines():
        if row.startswith("| `"):
            first = row.split("|")[1]
            names += re.findall(r"`([A-Z][A-Z0-9_]+)`", first)
    assert [n for n, c in Counter(names).items() if c > 1] == []
    assert sorted(set(df.setting_names()) - set(names)) == [], "settings missing from README"
    assert sorted(set(names) - set(df.setting_names())) == [], "README rows Settings lacks"
