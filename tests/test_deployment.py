"""The deployment files (docker-compose.yml, docker/Dockerfile, .env.example, k8s/), checked without a Docker engine
or a cluster.

tests/data/compose-spec.json is the Compose Specification schema exactly as Docker Compose v2.40.3 embeds it
(compose-go's copy of compose-spec/compose-spec `schema/compose-spec.json`), vendored because tests run offline.
The Kubernetes manifests are checked against the OpenAPI-derived schemas kubernetes-validate ships, in strict mode
(an unknown field is an error, as `kubectl apply --validate=strict` makes it).
"""

import copy
import fnmatch
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import get_args

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic import AliasChoices, SecretStr, ValidationError
from sqlalchemy.engine import make_url

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
K8S_DIR = ROOT / "k8s"
KUSTOMIZATION = K8S_DIR / "kustomization.yaml"
SECRET_EXAMPLE = K8S_DIR / "secret.example.yaml"

# Variables .env.example documents that Settings does not read: build-time ones of docker-compose.yml
# (checked below to be used there) and the `scv` client's base URL (SPEC §7).
CLIENT_VARIABLES = {"SCV_URL"}
SERVER_VARIABLES = {"FORWARDED_ALLOW_IPS"}  # uvicorn's own: the TLS proxy whose forwarded headers the api believes
RAY_SERVICES = {"ray-head", "ray-worker"}
CORE_SERVICES = {"minio", "postgres", "init", "api", "worker"}
ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
HEALTHY = {"condition": "service_healthy"}
LOOPBACK = {"127.0.0.1", "::1", "[::1]"}
# What a user must fill in before `docker compose up` starts: .env.example leaves them empty on purpose.
REQUIRED_SECRETS = {"SCV_API_TOKEN", "MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD"}
# The oldest Kubernetes release the manifests target, and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
LEASE_SECONDS = Settings.model_fields["lease_seconds"].default


def settings_variables(*, secret_only: bool = False) -> set[str]:
    """Every environment name Settings reads (aliases and validation-alias choices); the secret ones only with
    `secret_only`."""
    names = set()
    for field in Settings.model_fields.values():
        if secret_only and SecretStr not in (field.annotation, *get_args(field.annotation)):
            continue
        for alias in (field.alias, field.validation_alias):
            choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
            names.update(choice for choice in choices if isinstance(choice, str))
    return names


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, tuple[str, bool]]:
    """.env.example as {name: (value, active)}; `# NAME=value` lines are variables unset by default."""
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            commented, name, value = match.groups()
            assert name not in entries, f"{name} appears twice in .env.example"
            entries[name] = (value, commented is None)
        else:
            assert not line.strip() or line.startswith("#"), f"not KEY=VALUE, a comment or blank: {line!r}"
    return entries


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
        else:
            logical.append(current.strip())
            current = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


SHELL_SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "<"}


def pip_installs(instructions: list[tuple[str, str]]) -> list[tuple[int, list[str]]]:
    """(instruction index, arguments) of every `pip install` / `python -m pip install` the Dockerfile runs."""
    installs = []
    for index, (kind, args) in enumerate(instructions):
        if kind != "RUN":
            continue
        words = shlex.split(args)
        for start in (i + 1 for i, word in enumerate(words[:-1]) if word == "pip" and words[i + 1] == "install"):
            end = next((i for i in range(start, len(words)) if words[i] in SHELL_SEPARATORS), len(words))
            installs.append((index, words[start + 1:end]))
    return installs


def constraint_files(args: list[str]) -> list[str]:
    """The constraint files (`-c FILE`, `--constraint FILE`, `--constraint=FILE`) of pip install arguments."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("-c", "--constraint") and i + 1 < len(args):
            files.append(args[i + 1])
        elif arg.startswith("--constraint="):
            files.append(arg.partition("=")[2])
    return files


def lock_pins() -> dict[str, str]:
    """{package: version} of requirements.lock."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line):
            pins[match[1].lower()] = match[2]
    return pins


def service_env(service: dict) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.partition("=")[::2] for item in env)


class RequiredVariableUnset(Exception):
    """A `${VAR:?message}` whose variable is unset (or empty): `docker compose` refuses the file with `message`."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` against `env`; a missing required one raises."""
    def one(match: re.Match) -> str:
        name, operator, argument = match.groups()
        current = env.get(name)
        if operator in (":-", ":?") and current == "":
            current = None
        if current is None and operator in (":?", "?"):
            raise RequiredVariableUnset(name, argument)
        if current is None and operator in (":-", "-"):
            return argument
        return current or ""
    return INTERPOLATION.sub(one, value)


def compose_values(node) -> list[str]:
    """Every string value of the compose file, where Compose interpolates (not its comments)."""
    if isinstance(node, dict):
        return [text for value in node.values() for text in compose_values(value)]
    if isinstance(node, list):
        return [text for value in node for text in compose_values(value)]
    return [node] if isinstance(node, str) else []


def compose_refusals(compose: dict, env: dict[str, str]) -> dict[str, str]:
    """{variable: message} of every required variable `env` leaves unset or empty: `docker compose` refuses to
    start (it interpolates the whole file, profiles included, before it starts anything)."""
    refusals = {}
    for value in compose_values(compose):
        for match in INTERPOLATION.finditer(value):
            try:
                interpolate(match[0], env)
            except RequiredVariableUnset as unset:
                refusals[unset.name] = unset.message
    return refusals


def published_ports(service: dict) -> list[dict]:
    """A service's published ports as Compose's long syntax: host_ip (None: every interface), published, target."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append({"host_ip": port.get("host_ip"), "published": str(port.get("published")),
                          "target": str(port["target"])})
            continue
        # [[HOST_IP:]PUBLISHED:]TARGET[/PROTOCOL]; an IPv6 host address is bracketed.
        parts = str(port).split("/")[0].rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else None
        published = parts[-2] if len(parts) >= 2 else None
        ports.append({"host_ip": host_ip, "published": published, "target": parts[-1]})
    return ports


def seconds(duration: str | int) -> float:
    """A Compose duration such as `45s` or `1m30s`, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def example_env(env_example) -> dict[str, str]:
    """The variables a `.env` copied from .env.example sets, as shipped."""
    return {name: value for name, (value, active) in env_example.items() if active}


def filled_in(env: dict[str, str]) -> dict[str, str]:
    """`env` with every empty value filled in as .env.example asks (`openssl rand -hex 24`-like: URL-safe)."""
    return {name: value or secrets.token_hex(24) for name, value in env.items()}


@pytest.fixture(scope="module")
def user_env(example_env) -> dict[str, str]:
    """The variables of a `.env` copied from .env.example once its user has filled in the empty secrets."""
    return filled_in(example_env)


# --- docker-compose.yml ------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification(compose):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_minio_exposes_api_on_9002_and_console_on_9003_with_a_volume_and_healthcheck(compose):
    minio = compose["services"]["minio"]
    image, _, tag = minio["image"].rpartition(":")
    assert image.endswith("minio/minio") and tag.startswith("RELEASE."), "pin MinIO to a release tag"
    assert minio["command"][:2] == ["server", "/data"]
    assert "--console-address" in minio["command"]
    assert minio["command"][minio["command"].index("--console-address") + 1] == ":9001"
    assert {(port["published"], port["target"]) for port in published_ports(minio)} == {("9002", "9000"),
                                                                                         ("9003", "9001")}
    volume = minio["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]
    assert minio["healthcheck"]["test"][0] == "CMD" and "ready" in minio["healthcheck"]["test"]


def test_compose_requires_an_api_token_and_says_how_to_make_one(compose):
    token = service_env(compose["services"]["api"])["SCV_API_TOKEN"]
    assert token.startswith("${SCV_API_TOKEN:?"), "the api must not start without a token"
    for name in ("init", "worker"):
        assert service_env(compose["services"][name])["SCV_API_TOKEN"] == token, name
    message = compose_refusals(compose, {})["SCV_API_TOKEN"]
    assert "openssl rand" in message and "16" in message, f"say how to make a token: {message!r}"


def test_compose_refuses_the_example_env_until_the_token_and_passwords_are_filled_in(compose, example_env,
                                                                                       user_env):
    # `cp .env.example .env && docker compose up` must not start an open service or one with known passwords.
    refused = compose_refusals(compose, example_env)
    assert REQUIRED_SECRETS <= set(refused), f"compose accepts .env.example as shipped: refuses only {refused}"
    for name in REQUIRED_SECRETS:
        assert example_env[name] == "", f"{name}: .env.example must leave it empty"
        assert "openssl rand" in refused[name], f"{name}: say how to make one: {refused[name]!r}"
    assert compose_refusals(compose, user_env) == {}, "filled in, the example env must be enough"


def test_compose_publishes_the_api_and_minio_on_loopback_only(compose):
    services = compose["services"]
    assert [(port["published"], port["target"]) for port in published_ports(services["api"])] == [("8000", "8000")]
    assert {port["target"] for port in published_ports(services["minio"])} == {"9000", "9001"}
    for name, service in services.items():
        for port in published_ports(service):
            assert port["host_ip"] in LOOPBACK, f"{name} publishes {port} beyond this host"


def test_credentials_come_from_env_and_are_required(compose):
    services = compose["services"]
    required = {"minio": ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"), "postgres": ("POSTGRES_USER", "POSTGRES_PASSWORD")}
    for name in ("init", "api", "worker"):
        required[name] = required["minio"]
    for name, variables in required.items():
        env = service_env(services[name])
        for var in variables:
            assert env[var].startswith("${" + var + ":?"), f"{name}.{var} must be interpolated and required"


def test_postgres_keeps_the_catalog_on_a_volume_and_reports_health_with_pg_isready(compose):
    postgres = compose["services"]["postgres"]
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres" and re.match(r"1[56](\b|\.)", tag), "the official image, major version pinned"
    volume, target = postgres["volumes"][0].split(":")[:2]
    assert volume in compose["volumes"] and target == "/var/lib/postgresql/data"
    check = postgres["healthcheck"]["test"]
    assert check[0] in {"CMD", "CMD-SHELL"} and "pg_isready" in " ".join(check[1:])
    assert "disable" not in postgres["healthcheck"]
    assert "ports" not in postgres, "the catalog needs no host port: the services reach it on the project network"


@pytest.mark.parametrize("postgres_db", ["scv-catalog", None], ids=["POSTGRES_DB-set", "POSTGRES_DB-unset"])
def test_every_scv_service_reaches_the_compose_postgres_with_its_credentials(compose, user_env, postgres_db):
    env = {name: value for name, value in user_env.items() if name != "POSTGRES_DB"}
    if postgres_db:
        env["POSTGRES_DB"] = postgres_db
    postgres = {name: interpolate(value, env) for name, value in service_env(compose["services"]["postgres"]).items()}
    for name in ("init", "api", "worker", *sorted(RAY_SERVICES)):
        url = make_url(interpolate(service_env(compose["services"][name])["SCV_DATABASE_URL"], env))
        assert url.drivername == "postgresql+psycopg" and (url.host, url.port) == ("postgres", 5432), name
        assert (url.username, url.password, url.database) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]), name


def test_init_seeds_the_datasets_once_after_minio_and_postgres_are_healthy(compose):
    init, api = compose["services"]["init"], compose["services"]["api"]
    assert init["command"][:3] == ["scv", "datasets", "seed"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {"minio": HEALTHY, "postgres": HEALTHY}
    assert init["image"] == api["image"] and init["build"] == api["build"], "init runs the api's image"


def test_api_builds_from_the_dockerfile_serves_only_and_starts_after_minio_postgres_and_init(compose):
    api = compose["services"]["api"]
    assert (ROOT / api["build"]["context"] / api["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert api["command"] == ["scv", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert api["depends_on"] == {"minio": HEALTHY, "postgres": HEALTHY,
                                 "init": {"condition": "service_completed_successfully"}}
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    env = service_env(api)
    assert env["MINIO_ENDPOINT"] == "minio:9000"
    assert env["SCV_MAX_CONCURRENT_JOBS"] == "0", "the api only queues jobs; the workers train them"
    assert Settings(_env_file=None, SCV_MAX_CONCURRENT_JOBS=env["SCV_MAX_CONCURRENT_JOBS"]).max_concurrent_jobs == 0


def test_worker_runs_the_pool_alone_and_scales(compose):
    worker, api = compose["services"]["worker"], compose["services"]["api"]
    assert worker["command"] == ["scv", "worker"]
    assert worker["image"] == api["image"] and worker["build"] == api["build"], "the worker runs the api's image"
    # `docker compose up --scale worker=N` refuses a fixed container name and collides on a host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["depends_on"] == {"minio": HEALTHY, "postgres": HEALTHY}
    # The image's check probes /healthz, which a worker does not serve: left on, it marks workers unhealthy.
    assert worker["healthcheck"] == {"disable": True}
    # The same settings as the api, except that the worker trains (and serves no HTTP behind a proxy).
    worker_env, api_env = service_env(worker), service_env(api)
    assert worker_env.get("SCV_MAX_CONCURRENT_JOBS") != "0"
    api_only = {"SCV_MAX_CONCURRENT_JOBS", *SERVER_VARIABLES}
    assert {k: v for k, v in worker_env.items() if k not in api_only} == \
        {k: v for k, v in api_env.items() if k not in api_only}
    # SIGTERM hands the jobs back within the lease; Compose's 10 s default would kill it mid-hand-back.
    assert LEASE_SECONDS < seconds(worker["stop_grace_period"]) <= 2 * LEASE_SECONDS
    assert worker["restart"] == "unless-stopped"


def test_api_init_and_workers_share_the_data_volume_at_scv_data_dir(compose):
    for name in ("api", "init", "worker"):
        service = compose["services"][name]
        data_dir = service_env(service)["SCV_DATA_DIR"]
        volume, target = service["volumes"][0].split(":")[:2]
        assert target == data_dir and volume in compose["volumes"], name
        assert service["volumes"] == compose["services"]["api"]["volumes"], name


@pytest.mark.parametrize("name", ["api", "init", "worker"])
def test_service_environment_uses_only_variables_the_settings_know(compose, name):
    unknown = set(service_env(compose["services"][name])) - settings_variables() - (
        SERVER_VARIABLES if name == "api" else set())
    assert not unknown, f"{name} passes variables app.settings.Settings ignores: {sorted(unknown)}"


@pytest.mark.parametrize("name", ["api", "worker"])
def test_every_setting_reaches_the_api_and_the_workers(compose, name):
    # Left out: MINIO_CA_CERT, as the compose MinIO speaks plain HTTP (MINIO_SECURE is pinned false);
    # SCV_ALLOW_NO_TOKEN, as compose requires a token; SCV_ALLOWED_HOSTS, as the api binds 0.0.0.0 in its container
    # (the Host check guards loopback-bound servers) and the token guards it; the client commands' SCV_URL.
    missing = settings_variables() - set(service_env(compose["services"][name])) - {
        "MINIO_CA_CERT", "SCV_ALLOW_NO_TOKEN", "SCV_ALLOWED_HOSTS"} - CLIENT_VARIABLES
    assert not missing, f"add to the {name}'s environment in docker-compose.yml: {sorted(missing)}"
    assert service_env(compose["services"][name])["MINIO_SECURE"] == "false"


def test_ray_services_are_only_in_the_ray_profile_and_built_with_the_ray_extra(compose):
    services = compose["services"]
    assert RAY_SERVICES <= set(services)
    for name, service in services.items():
        if name in RAY_SERVICES:
            assert service["profiles"] == ["ray"], name
            assert service["build"]["dockerfile"] == "docker/Dockerfile"
            assert service["build"]["args"]["EXTRAS"] == "ray"
            assert service["command"][:2] == ["ray", "start"] and "--block" in service["command"]
        else:
            assert "profiles" not in service, f"{name} must start with a plain `docker compose up`"
    assert "--head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    for name in RAY_SERVICES:
        # A job on a Ray node renews its lease in the catalog the api and the workers use.
        assert service_env(services[name])["SCV_DATABASE_URL"] == service_env(services["api"])["SCV_DATABASE_URL"]


# --- docker/Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_runs_as_a_non_root_user_with_a_healthcheck():
    instructions = dockerfile_instructions()
    kinds = [kind for kind, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")
    user = [args for kind, args in instructions if kind == "USER"][-1]
    assert user.split(":")[0] not in {"root", "0"}
    assert kinds.index("USER") < kinds.index("CMD")
    healthcheck = dict(instructions)["HEALTHCHECK"]
    assert "127.0.0.1:8000/healthz" in healthcheck and "urllib" in healthcheck
    assert "8000" in dict(instructions)["EXPOSE"].split()
    assert json.loads(dict(instructions)["CMD"]) == ["scv", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "SCV_DATA_DIR=/data" in dict(instructions)["ENV"].split()


def test_dockerfile_installs_cpu_torch_before_the_project_with_the_project_pins():
    installs = pip_installs(dockerfile_instructions())
    [(torch_run, torch_args)] = [(i, args) for i, args in installs if "https://download.pytorch.org/whl/cpu" in args]
    assert torch_args[torch_args.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    project = [i for i, args in installs if any(arg.startswith(".") for arg in args if not arg.startswith("-"))]
    assert project and min(project) > torch_run
    pins = {dep for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if dep.startswith(("torch==", "torchvision=="))}
    assert pins and pins <= set(torch_args), "Dockerfile torch pins differ from pyproject.toml"


def test_dockerfile_installs_every_package_through_the_lock():
    instructions = dockerfile_instructions()
    installs = pip_installs(instructions)
    # Torch, the dependency layer and the project: a pip call this test cannot read (inside `python -c`, say)
    # would escape the check, so every mention of pip installing must be one of those it parsed.
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert len(installs) >= 3 and len(re.findall(r"\bpip\W{1,6}install\b", runs)) == len(installs)
    lock_copy = next(i for i, (kind, args) in enumerate(instructions)
                     if kind == "COPY" and "requirements.lock" in args.split()[:-1])
    for index, args in installs:
        assert constraint_files(args) == ["requirements.lock"], f"add -c requirements.lock: pip install {args}"
        assert lock_copy < index, "COPY requirements.lock before the first pip install"


def test_the_lock_admits_the_cpu_torch_wheels_the_image_installs():
    # PyTorch's CPU index serves `2.14.1+cpu`; `==2.14.1` ignores the local label, a lock made against a CUDA
    # index (`==2.14.1+cu128`) would not, and the image build would fail.
    pins = lock_pins()
    [(_, torch_args)] = [(i, args) for i, args in pip_installs(dockerfile_instructions())
                         if "https://download.pytorch.org/whl/cpu" in args]
    for name in ("torch", "torchvision"):
        assert f"{name}=={pins[name]}" in torch_args, f"the Dockerfile's {name} pin differs from requirements.lock"
        cpu_build = Version(f"{Version(pins[name]).public}+cpu")
        assert SpecifierSet(f"=={pins[name]}").contains(cpu_build), f"requirements.lock's {name} refuses {cpu_build}"


def test_dockerfile_copies_only_what_exists_and_is_not_dockerignored():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copies = [args.split() for kind, args in dockerfile_instructions() if kind == "COPY"]
    assert copies
    for args in copies:
        for source in [arg for arg in args[:-1] if not arg.startswith("--")]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is dockerignored"
    for secret in (".env", ".git", ".scv"):
        assert secret in ignored


def test_dockerfile_layers_install_dependencies_before_copying_code():
    instructions = dockerfile_instructions()
    first_code_copy = next(i for i, (kind, args) in enumerate(instructions)
                           if kind == "COPY" and args.split()[0] in {"app", "models", "."})
    pyproject_copy = next(i for i, (kind, args) in enumerate(instructions)
                          if kind == "COPY" and args.split()[0] == "pyproject.toml")
    dependency_run = next(i for i, (kind, args) in enumerate(instructions)
                          if kind == "RUN" and "pyproject.toml" in args)
    assert pyproject_copy < dependency_run < first_code_copy


# --- .env.example ------------------------------------------------------------------------------------


def test_env_example_covers_every_setting_and_documents_each_line(env_example):
    missing = settings_variables() - set(env_example)
    assert not missing, f".env.example lacks {sorted(missing)}"
    lines = ENV_EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if ENV_LINE.match(line):
            above = lines[i - 1]
            assert above.startswith("#") and not ENV_LINE.match(above), f"{line!r} needs a one-line comment above"


def test_env_example_names_only_known_variables(env_example):
    compose_variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", COMPOSE_FILE.read_text()))
    unknown = set(env_example) - settings_variables() - compose_variables - CLIENT_VARIABLES - SERVER_VARIABLES
    assert not unknown, f".env.example names variables nothing reads: {sorted(unknown)}"


def test_env_example_leaves_every_secret_empty(env_example):
    # A placeholder (`change-me-...`) passes compose's `:?` checks and becomes a password everyone knows; an empty
    # value makes compose refuse to start until the user fills it in.
    secret = settings_variables(secret_only=True) | {name for name in env_example if "PASSWORD" in name}
    for name, (value, _) in env_example.items():
        if name in secret and "://" not in value:
            assert value == "", f"{name} must be empty in .env.example, not {value!r}"
        if "://" in value and make_url(value).password is not None:
            assert make_url(value).password.startswith("change-me"), f"{name}: the URL's password must be a placeholder"
    assert {name for name, (value, active) in env_example.items() if active and not value} == REQUIRED_SECRETS


@pytest.mark.parametrize("uncomment", [False, True], ids=["filled-in", "all-set"])
def test_env_example_values_are_valid_settings(env_example, tmp_path, monkeypatch, uncomment):
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / ".env"
    env = filled_in({name: value for name, (value, active) in env_example.items() if active or uncomment})
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    settings = Settings(_env_file=env_file)
    assert settings.minio_access_key == (env_example["MINIO_ACCESS_KEY"][0] if uncomment
                                         else env_example["MINIO_ROOT_USER"][0])


# --- docker compose itself, when its CLI plugin is installed (it needs no engine for `config`) ---------


def _docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    if shutil.which("docker") is None:
        pytest.skip("docker CLI not installed")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed")
    clean_env = {k: v for k, v in os.environ.items()
                 if k not in settings_variables() and not k.startswith(("SCV_", "COMPOSE_"))}
    return subprocess.run(["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
                          capture_output=True, text=True, env=clean_env, timeout=60)


@pytest.fixture
def shipped_env_file(example_env, tmp_path) -> Path:
    """A `.env` copied from .env.example and not edited."""
    path = tmp_path / "shipped.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in example_env.items()))
    return path


@pytest.fixture
def example_env_file(user_env, tmp_path) -> Path:
    """A `.env` copied from .env.example with its empty secrets filled in."""
    path = tmp_path / "compose.env"
    path.write_text("".join(f"{name}={value}\n" for name, value in user_env.items()))
    return path


def test_docker_compose_accepts_the_file_with_the_example_env(example_env_file):
    for profile in ([], ["--profile", "ray"]):
        result = _docker_compose(*profile, "config", "-q", env_file=example_env_file)
        assert result.returncode == 0, result.stderr


def test_docker_compose_starts_only_the_core_services_without_the_ray_profile(example_env_file):
    plain = _docker_compose("config", "--services", env_file=example_env_file)
    with_ray = _docker_compose("--profile", "ray", "config", "--services", env_file=example_env_file)
    assert set(plain.stdout.split()) == CORE_SERVICES
    assert set(with_ray.stdout.split()) == CORE_SERVICES | RAY_SERVICES


def test_docker_compose_resolves_api_environment_from_the_env_file(example_env_file, user_env):
    result = _docker_compose("config", "--format", "json", env_file=example_env_file)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    env = services["api"]["environment"]
    assert env["MINIO_ENDPOINT"] == "minio:9000" and env["SCV_DATA_DIR"] == "/data"
    assert env["MINIO_ROOT_USER"] == user_env["MINIO_ROOT_USER"]
    assert env["SCV_API_TOKEN"] == user_env["SCV_API_TOKEN"]
    assert env["MINIO_ACCESS_KEY"] is None, "a variable unset in .env stays unset in the container"
    assert env["SCV_MAX_CONCURRENT_JOBS"] == "0"
    url = make_url(env["SCV_DATABASE_URL"])
    assert (url.host, url.password) == ("postgres", user_env["POSTGRES_PASSWORD"])
    assert services["worker"]["environment"]["SCV_DATABASE_URL"] == env["SCV_DATABASE_URL"]


def test_docker_compose_refuses_to_start_without_minio_credentials(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _docker_compose("config", "-q", env_file=empty)
    # Compose names whichever of the required variables it meets first.
    assert result.returncode != 0
    assert re.search(r"(SCV_API_TOKEN|(MINIO_ROOT|POSTGRES)_(USER|PASSWORD)) in \.env", result.stderr), result.stderr


def test_docker_compose_refuses_the_example_env_until_it_is_filled_in(shipped_env_file):
    for profile in ([], ["--profile", "ray"]):
        result = _docker_compose(*profile, "config", "-q", env_file=shipped_env_file)
        assert result.returncode != 0, "compose accepts .env.example as shipped"
        assert re.search(r"(SCV_API_TOKEN|MINIO_ROOT_PASSWORD|POSTGRES_PASSWORD) in \.env", result.stderr), \
            result.stderr


def test_docker_compose_refuses_to_start_without_a_postgres_password(example_env_file, tmp_path):
    env_file = tmp_path / "no-postgres-password.env"
    env_file.write_text("".join(line + "\n" for line in example_env_file.read_text().splitlines()
                                if not line.startswith("POSTGRES_PASSWORD=")))
    result = _docker_compose("config", "-q", env_file=env_file)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD in .env" in result.stderr, result.stderr


# --- k8s/ --------------------------------------------------------------------------------------------


def k8s_manifests() -> list[Path]:
    """Every file of Kubernetes objects under k8s/ (kustomization.yaml configures kustomize; it is no object)."""
    return sorted(path for path in K8S_DIR.glob("*.yaml") if path != KUSTOMIZATION)


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict]:
    """Every object under k8s/, by (kind, name)."""
    objects = {}
    for path in k8s_manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = doc
    return objects


def ray_pod_templates(raycluster: dict) -> list[dict]:
    spec = raycluster["spec"]
    return [spec["headGroupSpec"]["template"], *(group["template"] for group in spec["workerGroupSpecs"])]


def validate_k8s_object(doc: dict, version: str) -> None:
    """Strict schema validation; a RayCluster (a KubeRay CRD, unknown to the package) through its pod templates."""
    if doc["kind"] != "RayCluster":
        kubernetes_validate.validate(doc, version, strict=True)
        return
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    for group in (spec["headGroupSpec"], *spec["workerGroupSpecs"]):
        params = group.get("rayStartParams", {})
        assert all(isinstance(value, str) for value in params.values()), "KubeRay's rayStartParams maps to strings"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # Each template is a core/v1 PodTemplateSpec: checked as the `template` of a PodTemplate object.
    for template in ray_pod_templates(doc):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray"},
                                      "template": template}, version, strict=True)


def pod_templates(k8s: dict) -> dict[str, dict]:
    """The pod templates of every workload, by `kind/name` (`RayCluster/name[i]` for its groups)."""
    templates = {f"{kind}/{name}": doc["spec"]["template"] for (kind, name), doc in k8s.items()
                 if kind in {"Deployment", "StatefulSet"}}
    for (kind, name), doc in k8s.items():
        if kind == "RayCluster":
            templates.update({f"{kind}/{name}[{i}]": t for i, t in enumerate(ray_pod_templates(doc))})
    return templates


def container_env(k8s: dict, container: dict) -> dict[str, str]:
    """A container's environment as Kubernetes assembles it: envFrom sources in order, then env over them."""
    def source(kind: str, name: str) -> dict[str, str]:
        obj = k8s[kind, name]
        return obj.get("data") or obj.get("stringData") or {}

    env = {}
    for item in container.get("envFrom", []):
        kind, ref = ("ConfigMap", item["configMapRef"]) if "configMapRef" in item else ("Secret", item["secretRef"])
        env.update(source(kind, ref["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            [(ref_kind, ref)] = var["valueFrom"].items()
            kind = {"secretKeyRef": "Secret", "configMapKeyRef": "ConfigMap"}[ref_kind]
            env[var["name"]] = source(kind, ref["name"])[ref["key"]]
    return env


def only_container(template: dict) -> dict:
    [container] = template["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", k8s_manifests(), ids=lambda path: path.name)
def test_k8s_manifests_are_valid_against_the_kubernetes_schemas(path, version):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    for doc in docs:
        try:
            validate_k8s_object(doc, version)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): "
                        f"{'.'.join(map(str, error.path))}: {error.message}")


# Breakages the validation above must catch: a misspelt field, a wrong type, an unknown kind, a KubeRay slip.
def _misspell_probe(k8s):
    doc = copy.deepcopy(k8s["Deployment", "scv-api"])
    container = only_container(doc["spec"]["template"])
    container["readynessProbe"] = container.pop("readinessProbe")
    return doc


def _string_replicas(k8s):
    doc = copy.deepcopy(k8s["StatefulSet", "scv-postgres"])
    doc["spec"]["replicas"] = "one"
    return doc


def _misspelt_kind(k8s):
    return {**copy.deepcopy(k8s["Deployment", "scv-worker"]), "kind": "Deploymnet"}


def _ray_template_typo(k8s):
    doc = copy.deepcopy(k8s["RayCluster", "scv-ray"])
    only_container(doc["spec"]["workerGroupSpecs"][0]["template"])["envFrm"] = []
    return doc


def _ray_numeric_start_param(k8s):
    doc = copy.deepcopy(k8s["RayCluster", "scv-ray"])
    doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    return doc


@pytest.mark.parametrize("break_it, error", [
    (_misspell_probe, kubernetes_validate.ValidationError),
    (_string_replicas, kubernetes_validate.ValidationError),
    (_misspelt_kind, kubernetes_validate.SchemaNotFoundError),
    (_ray_template_typo, kubernetes_validate.ValidationError),
    (_ray_numeric_start_param, AssertionError),
], ids=lambda value: getattr(value, "__name__", "").strip("_"))
def test_k8s_validation_rejects_a_broken_manifest(k8s, break_it, error):
    with pytest.raises(error):
        validate_k8s_object(break_it(k8s), K8S_VERSIONS[-1])


def test_kustomization_applies_every_manifest_but_the_secret_example(k8s):
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    manifests = {path.name for path in k8s_manifests()} - {SECRET_EXAMPLE.name}
    assert sorted(kustomization["resources"]) == sorted(manifests), "list every manifest but the placeholders"
    if shutil.which("kubectl") is None:
        return
    result = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(result.stdout) if doc}
    assert rendered == {key for key in k8s if key[0] != "Secret"}


def test_k8s_api_serves_only_from_two_replicas_with_rolling_updates_and_probes(k8s):
    spec = k8s["Deployment", "scv-api"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "a rollout must never lower serving replicas"
    container = only_container(spec["template"])
    assert container["command"][:2] == ["scv", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {port["name"] for port in container["ports"]}
    assert {container[probe]["httpGet"]["port"] for probe in ("readinessProbe", "livenessProbe")} <= ports
    assert container_env(k8s, container)["SCV_MAX_CONCURRENT_JOBS"] == "0", "the API only queues jobs"


def test_k8s_workers_run_the_pool_and_get_time_to_hand_jobs_back(k8s):
    template = k8s["Deployment", "scv-worker"]["spec"]["template"]
    spec, container = template["spec"], only_container(template)
    assert container["command"] == ["scv", "worker"]
    env = container_env(k8s, container)
    assert env.get("SCV_MAX_CONCURRENT_JOBS") != "0"
    lease = float(env.get("SCV_LEASE_SECONDS", LEASE_SECONDS))
    # Killed before the hand-back ends, its jobs wait a whole lease to be resumed.
    assert lease < spec["terminationGracePeriodSeconds"] <= 2 * lease
    assert "ports" not in container and "livenessProbe" not in container


def test_k8s_postgres_keeps_its_data_on_a_claim_behind_a_service(k8s):
    statefulset = k8s["StatefulSet", "scv-postgres"]
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    [claim] = spec["volumeClaimTemplates"]
    container = only_container(spec["template"])
    assert container["image"].split(":")[0] == "postgres"
    [mount] = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    env = container_env(k8s, container)
    assert env["PGDATA"].startswith(mount["mountPath"] + "/"), "the database must live on the claim"
    assert "pg_isready" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert ("Service", spec["serviceName"]) in k8s


def test_k8s_services_select_a_workload_and_name_its_ports(k8s):
    templates = pod_templates(k8s)
    for (kind, name), service in k8s.items():
        if kind != "Service":
            continue
        selector = service["spec"]["selector"]
        matches = [key for key, template in templates.items()
                   if selector.items() <= template["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {matches}"
        ports = {port["name"] for container in templates[matches[0]]["spec"]["containers"]
                 for port in container.get("ports", [])}
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= ports, name


def test_k8s_config_and_secret_keys_are_settings(k8s):
    keys = set(k8s["ConfigMap", "scv-config"]["data"]) | set(k8s["Secret", "scv-secrets"]["stringData"])
    assert not keys - settings_variables(), f"keys app.settings.Settings ignores: {sorted(keys - settings_variables())}"


def test_k8s_every_scv_pod_reaches_the_catalog_through_the_secret(k8s):
    postgres = container_env(k8s, only_container(k8s["StatefulSet", "scv-postgres"]["spec"]["template"]))
    service = k8s["Service", "scv-postgres"]
    scv_pods = {key: template for key, template in pod_templates(k8s).items() if "postgres" not in key}
    assert {"Deployment/scv-api", "Deployment/scv-worker"} <= set(scv_pods) and len(scv_pods) >= 4
    for key, template in scv_pods.items():
        for container in template["spec"]["containers"]:
            url = make_url(container_env(k8s, container)["SCV_DATABASE_URL"])
            assert url.drivername == "postgresql+psycopg", key
            assert (url.host, url.port) == ("scv-postgres", service["spec"]["ports"][0]["port"]), key
            assert (url.username, url.password, url.database) == (
                postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]), key


@pytest.mark.parametrize("workload", ["scv-api", "scv-worker"])
def test_k8s_pods_environment_is_valid_settings(k8s, workload, tmp_path, monkeypatch):
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    env = container_env(k8s, only_container(k8s["Deployment", workload]["spec"]["template"]))
    # As the operator creates the Secret: random values where the example has placeholders.
    env = {name: secrets.token_hex(24) if value.startswith("change-me") else value for name, value in env.items()}
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    settings = Settings(_env_file=env_file)
    assert settings.catalog_url == env["SCV_DATABASE_URL"] and settings.minio_endpoint == env["MINIO_ENDPOINT"]


def test_k8s_secret_example_token_cannot_start_an_api(k8s):
    # `kubectl apply -f k8s/` would create the example Secret too: its placeholder token is too short to be
    # accepted, so no API starts with a token anyone can read here.
    with pytest.raises(ValidationError, match="SCV_API_TOKEN"):
        Settings(_env_file=None, SCV_API_TOKEN=k8s["Secret", "scv-secrets"]["stringData"]["SCV_API_TOKEN"])


def test_k8s_secret_example_holds_placeholders(k8s):
    for (kind, name), secret in k8s.items():
        if kind == "Secret":
            for key, value in secret["stringData"].items():
                secret_part = make_url(value).password if "://" in value else value
                if re.search(r"PASSWORD|SECRET|TOKEN|KEY|URL", key):
                    assert secret_part.startswith("change-me"), f"{name}.{key} must be a change-me placeholder"


# --- k8s/: the "restricted" Pod Security Standard ------------------------------------------------------------

# Volume types the restricted profile allows (hostPath and the like are refused).
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def pod_containers(template: dict) -> list[dict]:
    """Every container of a pod template: init containers too, which the standard holds to the same rules."""
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


def test_k8s_every_container_meets_the_restricted_pod_security_standard(k8s):
    # What `pod-security.kubernetes.io/enforce: restricted` on the namespace would refuse, checked here so the
    # manifests apply there. runAsNonRoot, runAsUser and seccompProfile may sit on the pod or the container (the
    # container's wins); allowPrivilegeEscalation and capabilities exist on containers only.
    templates = pod_templates(k8s)
    assert {"Deployment/scv-api", "Deployment/scv-worker", "StatefulSet/scv-postgres"} <= set(templates)
    for key, template in templates.items():
        spec = template["spec"]
        assert not any(spec.get(field) for field in ("hostNetwork", "hostPID", "hostIPC")), key
        for volume in spec.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUME_TYPES, f"{key}: volume {volume['name']}"
        pod = spec.get("securityContext", {})
        for container in pod_containers(template):
            where, own = f"{key} container {container['name']}", container.get("securityContext", {})
            context = {**pod, **own}
            assert context.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
            assert context.get("runAsUser") != 0 and context.get("runAsGroup") != 0, f"{where}: runs as root"
            assert context.get("seccompProfile", {}).get("type") in {"RuntimeDefault", "Localhost"}, \
                f"{where}: seccompProfile RuntimeDefault"
            assert own.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation: false"
            assert not own.get("privileged"), f"{where}: privileged"
            capabilities = own.get("capabilities", {})
            assert "ALL" in capabilities.get("drop", []), f"{where}: capabilities drop ALL"
            assert set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{where}: adds capabilities"
            assert not any("hostPort" in port for port in container.get("ports", [])), f"{where}: hostPort"
            # Not part of the standard, but asked of every container that can run so (SPEC §8): all of these can.
            assert own.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"


def test_k8s_read_only_containers_can_write_where_their_process_writes(k8s):
    templates = pod_templates(k8s)
    for key, template in templates.items():
        volumes = {volume["name"]: volume for volume in template["spec"].get("volumes", [])}
        claims = {claim["metadata"]["name"] for (kind, _), doc in k8s.items() if kind == "StatefulSet"
                  for claim in doc["spec"].get("volumeClaimTemplates", [])}
        for container in pod_containers(template):
            where = f"{key} container {container['name']}"
            mounts = {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}
            for mount in mounts.values():
                assert not mount.get("readOnly"), f"{where}: {mount['mountPath']} is mounted read-only"
                assert mount["name"] in volumes or mount["name"] in claims, f"{where}: {mount['name']} is no volume"
            # Python's tempfile, multipart uploads, dataset downloads, Ray's sessions (/tmp/ray), PostgreSQL.
            assert "/tmp" in mounts, f"{where}: mount a volume at /tmp"
            env = container_env(k8s, container)
            if "SCV_DATA_DIR" in env:
                assert env["SCV_DATA_DIR"] in mounts, f"{where}: mount a volume at SCV_DATA_DIR"
            if container["image"].split(":")[0] == "postgres":
                assert "/var/run/postgresql" in mounts, f"{where}: PostgreSQL's socket and lock file directory"
    # A Ray job runs the service's worker, which caches datasets under the service's SCV_DATA_DIR.
    data_dir = k8s["ConfigMap", "scv-config"]["data"]["SCV_DATA_DIR"]
    for key in ray_job_runners(k8s):
        assert data_dir in {mount["mountPath"] for mount in only_container(templates[key])["volumeMounts"]}, key


def ray_job_runners(k8s: dict) -> set[str]:
    """The Ray pod templates (keys of pod_templates) whose nodes run jobs: those with CPUs (every job asks for one)."""
    runners = set()
    for (kind, name), doc in k8s.items():
        if kind == "RayCluster":
            groups = [doc["spec"]["headGroupSpec"], *doc["spec"]["workerGroupSpecs"]]
            runners |= {f"{kind}/{name}[{i}]" for i, group in enumerate(groups)
                        if group.get("rayStartParams", {}).get("num-cpus") != "0"}
    return runners


# --- k8s/: NetworkPolicies -----------------------------------------------------------------------------------

ANYONE = "anyone"  # in admitted(): a source outside these manifests' pods (no `from`, a namespace, an IP block)
MINIO_LABELS = {"app.kubernetes.io/name": "minio"}  # MinIO is not deployed here: network-policies.yaml names it so


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a pod's labels; {} selects all."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        holds = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
                 "Exists": key in labels, "DoesNotExist": key not in labels}[operator]
        if not holds:
            return False
    return True


def admitted(k8s: dict, labels: dict, port: int, named_ports: dict[str, int] | None = None) -> set[str]:
    """Which pods (keys of pod_templates, or ANYONE) the NetworkPolicies let connect to a pod with `labels` on TCP
    `port`: everyone when no policy isolates it, else the union of the rules of the policies that select it."""
    policies = [doc["spec"] for (kind, _), doc in k8s.items() if kind == "NetworkPolicy"]
    policies = [policy for policy in policies
                if "Ingress" in policy.get("policyTypes", ["Ingress"]) and selects(policy["podSelector"], labels)]
    if not policies:
        return {ANYONE}
    sources = set()
    for rule in (rule for policy in policies for rule in policy.get("ingress", [])):
        ports = [(entry.get("protocol", "TCP"), entry.get("port")) for entry in rule.get("ports", [])]
        if ports and not any(protocol == "TCP" and (number is None or number == port or
                                                    (named_ports or {}).get(number) == port)
                             for protocol, number in ports):
            continue
        peers = rule.get("from", [])
        if not peers or any(set(peer) != {"podSelector"} for peer in peers):
            sources.add(ANYONE)
        sources |= {key for key, template in pod_templates(k8s).items()
                    if any(selects(peer.get("podSelector", {}), template["metadata"]["labels"]) for peer in peers)}
    return sources


def pod_target(k8s: dict, key: str) -> tuple[dict, dict[str, int]]:
    """A workload's pod labels and named container ports, as admitted() takes them."""
    template = pod_templates(k8s)[key]
    ports = {port["name"]: port["containerPort"] for container in template["spec"]["containers"]
             for port in container.get("ports", []) if "name" in port}
    return template["metadata"]["labels"], ports


def test_k8s_network_policies_are_applied(k8s):
    policies = {name for kind, name in k8s if kind == "NetworkPolicy"}
    assert {"scv-postgres", "scv-ray-nodes", "scv-ray-job-api", "scv-minio"} <= policies
    assert "network-policies.yaml" in yaml.safe_load(KUSTOMIZATION.read_text())["resources"]


def test_k8s_only_the_api_the_workers_and_ray_jobs_reach_postgres_and_minio(k8s):
    # The pods that use the catalog and the buckets: the API, the workers, and the Ray nodes that run jobs (the
    # head has no CPUs, so no job lands there).
    users = {"Deployment/scv-api", "Deployment/scv-worker"} | ray_job_runners(k8s)
    labels, ports = pod_target(k8s, "StatefulSet/scv-postgres")
    assert admitted(k8s, labels, 5432, ports) == users
    # MinIO lives outside these manifests; its policy holds for MinIO pods labelled as the file says.
    assert admitted(k8s, MINIO_LABELS, 9000) == users
    assert admitted(k8s, MINIO_LABELS, 9001) == set(), "the console is not for the service's pods"


def test_k8s_only_the_dispatching_workers_reach_the_ray_job_api_and_ray_nodes_reach_each_other(k8s):
    templates = pod_templates(k8s)
    ray_pods = {key for key in templates if key.startswith("RayCluster/")}
    head = next(key for key in ray_pods if only_container(templates[key])["name"] == "ray-head")
    # Whoever submits jobs: the service's pods that train (SCV_MAX_CONCURRENT_JOBS > 0) with SCV_EXECUTOR=ray.
    # The API trains nothing, so it is not one of them: the pods that face clients cannot reach the cluster.
    dispatchers = {key for key, template in templates.items() if key.startswith("Deployment/")
                   and container_env(k8s, only_container(template)).get("SCV_EXECUTOR") == "ray"
                   and container_env(k8s, only_container(template)).get("SCV_MAX_CONCURRENT_JOBS", "1") != "0"}
    assert dispatchers == {"Deployment/scv-worker"}
    labels, ports = pod_target(k8s, head)
    assert admitted(k8s, labels, ports["dashboard"], ports) == dispatchers | ray_pods, "the job API (RAY_ADDRESS)"
    assert admitted(k8s, labels, ports["gcs-server"], ports) == ray_pods, "the GCS: Ray nodes only"
    assert admitted(k8s, labels, ports["client"], ports) == ray_pods, "the Ray client port: Ray nodes only"
    for key in ray_pods - {head}:
        labels, ports = pod_target(k8s, key)
        for port in (10002, 52365, 8080):  # a worker process, the dashboard agent, metrics: any port of a node
            assert admitted(k8s, labels, port, ports) == ray_pods, f"{key}: port {port}"
