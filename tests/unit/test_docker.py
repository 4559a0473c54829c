"""docker/ without Docker (these machines have the client only, no daemon, no compose plugin):
the compose file's structure and references, the Dockerfile's sources, base image and user,
the secrets it mounts, the serving requirements against the lock, and what the compose
environment gives recloop's settings and Airflow's configuration."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.utils import canonicalize_name

from recloop.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SECRETS_PREFIX = "/run/secrets/"
# `airflow celery worker` started through recloop.airflow_preload (its tasks are forked from it).
PRELOADED_WORKER = ["python", "-m", "recloop.airflow_preload", "celery", "worker"]

# The Compose Specification's keys (compose-spec/schema/compose-spec.json). No package in the
# lock ships that schema, so a misspelt key is caught by these lists instead.
TOP_LEVEL_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets"}
TOP_LEVEL_KEYS |= {"configs", "models"}
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus",
    "cpuset", "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules",
    "devices", "dns", "dns_opt", "dns_search", "domainname", "entrypoint", "env_file",
    "environment", "expose", "extends", "external_links", "extra_hosts", "gpus", "group_add",
    "healthcheck", "hostname", "image", "init", "ipc", "isolation", "label_file", "labels",
    "links", "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness",
    "memswap_limit", "models", "network_mode", "networks", "oom_kill_disable", "oom_score_adj",
    "pid", "pids_limit", "platform", "ports", "post_start", "pre_stop", "privileged",
    "profiles", "provider", "pull_policy", "read_only", "restart", "runtime", "scale",
    "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
    "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "use_api_socket", "user",
    "userns_mode", "uts", "volumes", "volumes_from", "working_dir",
}  # fmt: skip
BUILD_KEYS = {
    "context", "dockerfile", "dockerfile_inline", "entitlements", "args", "ssh", "labels",
    "cache_from", "cache_to", "no_cache", "additional_contexts", "network", "pull", "target",
    "shm_size", "extra_hosts", "isolation", "privileged", "secrets", "tags", "ulimits",
    "platforms",
}  # fmt: skip
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval"}
HEALTHCHECK_KEYS |= {"disable"}
DEPLOY_KEYS = {"mode", "endpoint_mode", "replicas", "labels", "rollback_config"}
DEPLOY_KEYS |= {"update_config", "resources", "restart_policy", "placement"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
RESTART = {"no", "always", "on-failure", "unless-stopped"}

REQUIRED_SERVICES = {
    "postgres", "redis", "airflow-init", "airflow-api-server", "airflow-scheduler",
    "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "training-worker",
    "mlflow", "serving",
}  # fmt: skip
# Airflow and dbt must stay out of the serving image (and what they drag in with them).
NOT_SERVING = re.compile(r"^(apache-airflow.*|dbt-.*|astronomer-cosmos|great-expectations)$")


# -- helpers ---------------------------------------------------------------------------------

VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def _interpolate(value: Any) -> Any:
    """Compose's interpolation as `up` does it with no .env: defaults, and $$ for $."""
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match[0] == "$$":
            return "$"
        if match[2] is None:
            raise AssertionError(f"{match[0]} has no default: `up` without a .env breaks")
        return match[2]

    return VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()))


def _services(compose: dict) -> Iterator[tuple[str, dict]]:
    yield from compose["services"].items()


def _environment(service: dict) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _names(entries: list) -> list[str]:
    """Short and long syntax alike (secrets: [name] or [{source: name, ...}])."""
    return [entry if isinstance(entry, str) else entry["source"] for entry in entries or []]


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else list(command)


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Instruction:
    stage: str
    keyword: str
    arguments: str


def _dockerfile(path: Path) -> list[Instruction]:
    """The instructions, continuation lines joined and comments dropped, with their stage."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, f"{path.name}: ends inside a continued line"
    instructions, stage = [], ""
    for text in logical:
        keyword, _, arguments = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stage = words[2] if len(words) == 3 and words[1].upper() == "AS" else words[0]
        instructions.append(Instruction(stage, keyword, arguments.strip()))
    return instructions


def _copy_sources(instruction: Instruction) -> list[str]:
    """Sources of a COPY/ADD from the build context ([] for COPY --from=another stage)."""
    arguments = instruction.arguments
    words = json.loads(arguments) if arguments.startswith("[") else shlex.split(arguments)
    flags = [word for word in words if word.startswith("--")]
    if any(flag.startswith("--from=") for flag in flags):
        return []
    paths = [word for word in words if not word.startswith("--")]
    return paths[:-1]


def _builds(compose: dict) -> list[tuple[str, Path, Path, str | None]]:
    """(service, context, Dockerfile, target) of every service compose builds."""
    builds = []
    for name, service in _services(compose):
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (COMPOSE.parent / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        builds.append((name, context, dockerfile, build.get("target")))
    return builds


def _dockerignore(dockerfile: Path, context: Path) -> list[str]:
    # BuildKit prefers <Dockerfile>.dockerignore beside the Dockerfile to the context's own.
    beside = dockerfile.with_name(dockerfile.name + ".dockerignore")
    for path in (beside, context / ".dockerignore"):
        if path.is_file():
            lines = (line.strip() for line in path.read_text().splitlines())
            return [line for line in lines if line and not line.startswith("#")]
    return []


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch(prefix, pattern) or fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


# -- the compose file ------------------------------------------------------------------------


def test_compose_uses_only_compose_specification_keys(compose):
    assert {key for key in compose if not key.startswith("x-")} <= TOP_LEVEL_KEYS
    for name, service in _services(compose):
        assert set(service) <= SERVICE_KEYS, (name, set(service) - SERVICE_KEYS)
        build = service.get("build")
        if isinstance(build, dict):
            assert set(build) <= BUILD_KEYS, (name, set(build) - BUILD_KEYS)
        assert set(service.get("healthcheck", {})) <= HEALTHCHECK_KEYS, name
        assert set(service.get("deploy", {})) <= DEPLOY_KEYS, name
        assert str(service.get("restart", "no")) in RESTART, name
        environment = service.get("environment", {})
        if isinstance(environment, dict):
            for key, value in environment.items():
                assert value is None or isinstance(value, str | int | float | bool), (name, key)


def test_compose_has_every_component_of_the_production_profile(compose):
    assert set(compose["services"]) >= REQUIRED_SERVICES
    assert "healthcheck" in compose["services"]["postgres"]
    assert compose["services"]["airflow-worker"]["deploy"]["replicas"] >= 1
    init = compose["services"]["airflow-init"]
    assert "airflow db migrate" in " ".join(_command(init))
    assert str(init["restart"]) == "no"  # a one-shot job


def test_every_service_has_a_pinned_image_or_a_build(compose):
    for name, service in _services(compose):
        assert "image" in service or "build" in service, name
        if "image" not in service:
            continue
        image = service["image"]
        if "@sha256:" in image:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"


def test_every_build_names_an_existing_dockerfile_and_stage(compose):
    builds = _builds(compose)
    assert builds
    for name, context, dockerfile, target in builds:
        assert context.is_dir(), f"{name}: no build context {context}"
        assert dockerfile.is_file(), f"{name}: no Dockerfile {dockerfile}"
        stages = {i.stage for i in _dockerfile(dockerfile) if i.keyword == "FROM"}
        assert target is None or target in stages, f"{name}: no stage {target} in {stages}"


def test_depends_on_names_services_with_what_the_condition_needs(compose):
    services = compose["services"]
    for name, service in _services(compose):
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {dependency: {"condition": "service_started"} for dependency in depends_on}
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert dependency != name, f"{name} depends on itself"
            condition = spec["condition"]
            assert condition in CONDITIONS, (name, dependency, condition)
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert str(services[dependency].get("restart", "no")) == "no", dependency


def test_secrets_and_volumes_are_declared_and_bind_mounts_exist(compose):
    secrets, volumes = compose.get("secrets", {}), compose.get("volumes", {})
    used_volumes = set()
    for name, service in _services(compose):
        for secret in _names(service.get("secrets")):
            assert secret in secrets, f"{name}: secret {secret} is not declared"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in volumes, f"{name}: volume {source} is not declared"
                used_volumes.add(source)
    assert used_volumes == set(volumes), "declared volumes nobody mounts"
    for name, secret in secrets.items():
        # Files that make_secrets.py writes, under a folder git and the build context ignore.
        assert secret.get("file") == f"./secrets/{name}", name


def test_no_password_or_key_is_written_in_the_compose_file(compose):
    text = COMPOSE.read_text()
    assert not re.search(r"\w+://[^/\s:@]*:[^@\s/]+@", text), "a URL with a password"
    sensitive = re.compile(r"PASSWORD|SECRET|_KEY|TOKEN|API_KEYS$")
    for name, service in _services(compose):
        for key, value in _environment(service).items():
            by_reference = key.endswith(("_FILE", "_CMD")) or value.startswith(SECRETS_PREFIX)
            if sensitive.search(key) and not by_reference and value != SECRETS_PREFIX.rstrip("/"):
                pytest.fail(f"{name}: {key} is set inline; mount it as a secret")
            if key.endswith(("_FILE", "_CMD")) and SECRETS_PREFIX in value:
                secret = value.split(SECRETS_PREFIX, 1)[1].split()[0]
                assert secret in _names(service.get("secrets")), f"{name}: {key} -> {secret}"
        # recloop would take an inline RECLOOP_POSTGRES_URL over the secret of that field
        assert "RECLOOP_POSTGRES_URL" not in _environment(service), name


def test_secret_files_are_ignored_by_git_and_by_the_build_context(compose):
    for _, context, dockerfile, _ in _builds(compose):
        patterns = _dockerignore(dockerfile, context)
        assert _ignored("docker/secrets/postgres_password", patterns)
        assert _ignored(".venv/bin/python", patterns)
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "docker/secrets/postgres_password"],
        cwd=ROOT,
    )
    assert ignored.returncode == 0, "docker/secrets/ is not ignored by git"


def test_urls_in_the_environment_use_the_right_schemes_and_services(compose):
    services = compose["services"]
    schemes = {
        "AIRFLOW__CELERY__BROKER_URL": "redis",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http",
        "RECLOOP_REDIS_URL": "redis",
        "RECLOOP_MLFLOW_TRACKING_URI": "http",
    }
    checked = set()
    for name, service in _services(compose):
        for key, value in _environment(service).items():
            if key not in schemes:
                continue
            url = urlsplit(value)
            assert url.scheme == schemes[key], (name, key, value)
            assert url.hostname in services, f"{name}: {key} points at no service"
            assert url.password is None, (name, key)
            checked.add(key)
    assert checked == set(schemes)
    scheduler = _environment(services["airflow-scheduler"])
    api = urlsplit(scheduler["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert api.path == "/execution/"
    assert "api-server" in _command(services[api.hostname])
    assert any(str(port).endswith(f":{api.port}") for port in services[api.hostname]["ports"])
    mlflow = urlsplit(_environment(services["serving"])["RECLOOP_MLFLOW_TRACKING_URI"])
    assert f"--port {mlflow.port}" in " ".join(_command(services[mlflow.hostname]))


def test_airflow_services_share_the_celery_executor_setup(compose):
    airflow = {
        name: _environment(service)
        for name, service in _services(compose)
        if name.startswith("airflow-") or name == "training-worker"
    }
    assert len(airflow) == 7
    shared = {
        key: value
        for key, value in airflow["airflow-scheduler"].items()
        if key.startswith("AIRFLOW__")
    }
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD",
        "AIRFLOW__CELERY__RESULT_BACKEND_CMD",
        "AIRFLOW__API_AUTH__JWT_SECRET_CMD",  # one secret: workers present the api-server's tokens
        "AIRFLOW__CORE__FERNET_KEY_CMD",
    ):
        assert shared[key].startswith(f"cat {SECRETS_PREFIX}"), key
    for name, environment in airflow.items():
        for key, value in shared.items():
            assert environment.get(key) == value, f"{name}: {key} differs from the scheduler's"
        assert environment["RECLOOP_PROFILE"] == "production", name
    training = compose["services"]["training-worker"]
    command = _command(training) or json.loads(
        next(
            i.arguments
            for i in reversed(_dockerfile(_builds(compose)[0][2]))
            if i.keyword == "CMD" and i.stage == training["build"]["target"]
        )
    )
    assert command[:5] == PRELOADED_WORKER
    assert command[command.index("--queues") + 1] == "training"
    assert _command(compose["services"]["airflow-worker"])[:5] == PRELOADED_WORKER


# -- the Dockerfile --------------------------------------------------------------------------


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored(compose):
    for name, context, dockerfile, _ in _builds(compose):
        patterns = _dockerignore(dockerfile, context)
        copies = [i for i in _dockerfile(dockerfile) if i.keyword in ("COPY", "ADD")]
        sources = [source for instruction in copies for source in _copy_sources(instruction)]
        assert sources, dockerfile
        for source in sources:
            matches = list(context.glob(source.rstrip("/")))
            assert matches, f"{name}: {dockerfile.name} copies {source}, which is not in {context}"
            assert not _ignored(source.rstrip("/"), patterns), f"{source} is .dockerignored"


def test_dockerfile_base_images_are_pinned_and_users_are_not_root(compose):
    for name, _, dockerfile, target in _builds(compose):
        instructions = _dockerfile(dockerfile)
        stages, users = [], {}
        for instruction in instructions:
            if instruction.keyword == "FROM":
                base = instruction.arguments.split()[0]
                if base in stages:
                    users[instruction.stage] = users[base]  # a stage inherits its base's USER
                else:
                    _, _, tag = base.rpartition(":")
                    assert "@sha256:" in base or (tag != "latest" and re.search(r"\d", tag)), base
                    users[instruction.stage] = "root"
                stages.append(instruction.stage)
            if instruction.keyword == "USER":
                users[instruction.stage] = instruction.arguments.split(":")[0]
        final = target or stages[-1]
        assert users[final] not in ("root", "0"), f"{name}: stage {final} runs as root"


def test_dockerfile_installs_the_lock_with_hashes_and_sets_the_dags_folder(compose):
    dockerfile = _builds(compose)[0][2]
    instructions = _dockerfile(dockerfile)
    runs = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert "--require-hashes -r requirements.lock" in runs
    assert "--no-deps" in runs  # the project itself, without re-resolving
    environment = " ".join(i.arguments for i in instructions if i.keyword == "ENV")
    dags = re.search(r"AIRFLOW__CORE__DAGS_FOLDER=(\S+)", environment)[1]
    workdir = next(i.arguments for i in instructions if i.keyword == "WORKDIR")
    copies = [i for i in instructions if i.keyword == "COPY"]
    assert any(
        _copy_sources(i) == ["dags/"] and str(Path(workdir) / i.arguments.split()[-1]) == dags
        for i in copies
    ), f"no COPY of dags/ into {dags}"


def test_bentofile_uses_the_dockerfiles_python_image(compose):
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    _, _, dockerfile, _ = _builds(compose)[0]
    base = _dockerfile(dockerfile)[0].arguments.split()[0]
    assert bentofile["docker"]["base_image"] == base
    assert bentofile["python"]["lock_packages"] is False  # no network resolve at build time


# -- secrets ---------------------------------------------------------------------------------


def test_make_secrets_writes_every_secret_with_the_right_urls(compose, tmp_path):
    make_secrets = _load_script("make_secrets").make_secrets
    paths = make_secrets(tmp_path / "secrets")
    assert set(paths) == set(compose["secrets"])
    values = {name: path.read_text() for name, path in paths.items()}
    for name, value in values.items():
        assert value and value == value.strip(), f"{name}: whitespace would reach Airflow's _CMD"
    assert (tmp_path / "secrets").stat().st_mode & 0o777 == 0o700
    postgres = _environment(compose["services"]["postgres"])
    created = re.findall(r"CREATE DATABASE (\w+)", (DOCKER / "postgres" / "init.sql").read_text())
    databases = {postgres["POSTGRES_DB"], *created}
    expected = {
        "postgres_url": ("postgresql", postgres["POSTGRES_DB"]),
        "airflow_sql_alchemy_conn": ("postgresql+psycopg2", "airflow"),
        "airflow_result_backend": ("db+postgresql", "airflow"),
        "mlflow_backend_store_uri": ("postgresql+psycopg", "mlflow"),
    }
    for name, (scheme, database) in expected.items():
        url = urlsplit(values[name])
        assert url.scheme == scheme, name
        assert url.hostname in compose["services"] and url.port == 5432, name
        assert url.username == postgres["POSTGRES_USER"], name
        assert url.password == values["postgres_password"], name
        assert url.path.lstrip("/") == database and database in databases, name
    from cryptography.fernet import Fernet

    Fernet(values["airflow_fernet_key"].encode())  # raises on a malformed key
    again = make_secrets(tmp_path / "secrets")
    assert {name: path.read_text() for name, path in again.items()} == values  # kept


def _make_secrets(directory: Path) -> dict[str, str]:
    paths = _load_script("make_secrets").make_secrets(directory)
    return {name: path.read_text() for name, path in paths.items()}


def _compose_environment(service: dict, secrets_dir: Path) -> dict[str, str]:
    """The service's environment with /run/secrets/ pointing at ``secrets_dir``."""
    return {
        key: value.replace(SECRETS_PREFIX.rstrip("/"), str(secrets_dir))
        for key, value in _environment(service).items()
    }


def test_compose_environment_gives_recloop_production_settings(compose, tmp_path, monkeypatch):
    secrets_dir = tmp_path / "secrets"
    values = _make_secrets(secrets_dir)
    recloop_services = [
        name for name, service in _services(compose) if "RECLOOP_PROFILE" in _environment(service)
    ]
    assert {"airflow-worker", "training-worker", "serving"} <= set(recloop_services)
    for name in recloop_services:
        service = compose["services"][name]
        assert "postgres_url" in _names(service.get("secrets")), name
        with monkeypatch.context() as patch:
            for key, value in _compose_environment(service, secrets_dir).items():
                patch.setenv(key, value)
            settings = Settings()
        assert settings.profile == "production", name
        assert settings.postgres_url.get_secret_value() == values["postgres_url"], name
        assert settings.tracking_uri() == "http://mlflow:5000", name
        if name == "serving":
            assert settings.serving.keys() == [values["api_keys"]]
            assert settings.serving.host == "0.0.0.0"


def _run_airflow(code: str, environment: dict[str, str], home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RECLOOP_"))}
    env.update(environment, AIRFLOW_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_compose_environment_gives_airflow_its_secrets(compose, tmp_path):
    secrets_dir = tmp_path / "secrets"
    values = _make_secrets(secrets_dir)
    environment = _compose_environment(compose["services"]["airflow-scheduler"], secrets_dir)
    code = """if True:
        import json
        from airflow.configuration import conf
        keys = [("database", "sql_alchemy_conn"), ("celery", "result_backend"),
                ("celery", "broker_url"), ("api_auth", "jwt_secret"), ("core", "fernet_key"),
                ("api", "secret_key"), ("core", "executor")]
        print(json.dumps({f"{s}.{k}": conf.get(s, k) for s, k in keys}))
    """
    result = _run_airflow(code, environment, tmp_path / "airflow")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads(result.stdout.strip().splitlines()[-1])
    assert config == {
        "database.sql_alchemy_conn": values["airflow_sql_alchemy_conn"],
        "celery.result_backend": values["airflow_result_backend"],
        "celery.broker_url": environment["AIRFLOW__CELERY__BROKER_URL"],
        "api_auth.jwt_secret": values["airflow_jwt_secret"],
        "core.fernet_key": values["airflow_fernet_key"],
        "api.secret_key": values["airflow_api_secret_key"],
        "core.executor": "CeleryExecutor",
    }


# celery 5.7 dropped celery.backends.database.retry, which the celery provider 3.26 imports;
# pyproject.toml holds celery below 5.7 for it.
def test_the_celery_executor_compose_names_loads_with_the_lock(compose, tmp_path):
    environment = {"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    code = """if True:
        from airflow.executors.executor_loader import ExecutorLoader
        print(ExecutorLoader.import_default_executor_cls()[0].__name__)
    """
    result = _run_airflow(code, environment, tmp_path / "airflow")
    last = (result.stderr.strip().splitlines() or [""])[-1]
    if result.returncode != 0 and last.startswith(("ImportError", "ModuleNotFoundError")):
        raise ImportError(last)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "CeleryExecutor"


# -- the serving image's requirements --------------------------------------------------------


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and " " not in version, f"{path.name}: {line!r} is not a bare pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_serving_requirements_are_the_locks_pins_without_airflow_or_dbt():
    script = _load_script("serving_requirements")
    serving = _pins(script.OUTPUT)
    lock = script.lock_pins()
    assert "bentoml" in serving and "torch" in serving
    for name, version in serving.items():
        assert not NOT_SERVING.match(name), f"{name} must not be in the serving image"
        assert lock.get(name) == version, f"{name}=={version}, but the lock has {lock.get(name)}"


def test_serving_requirements_are_generated_from_the_lock_and_cover_serving_imports():
    script = _load_script("serving_requirements")
    needed = script.closure(script.roots(), script.lock_pins())
    assert script.OUTPUT.read_text() == script.render(needed), (
        "docker/serving-requirements.txt is stale: .venv/bin/python docker/serving_requirements.py"
    )
    assert script.unlisted_imports(needed) == {}
    project, imported = script.imported_modules()
    # the walk must see through importlib: the model kinds are loaded by name
    assert {"serving.engine", "training.registry", "training.models.two_tower"} <= project
    assert {"mlflow", "torch", "feast"} <= {name.split(".")[0] for name in imported}
