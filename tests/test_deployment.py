"""The deployment files (docker-compose.yml, docker/Dockerfile, .env.example), checked without a Docker engine.

tests/data/compose-spec.json is the Compose Specification schema exactly as Docker Compose v2.40.3 embeds it
(compose-go's copy of compose-spec/compose-spec `schema/compose-spec.json`), vendored because tests run offline.
"""

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import AliasChoices

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

# Variables .env.example documents that Settings does not read: build-time ones of docker-compose.yml
# (checked below to be used there) and the `scv` client's base URL (SPEC §7).
CLIENT_VARIABLES = {"SCV_URL"}
RAY_SERVICES = {"ray-head", "ray-worker"}
ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def settings_variables() -> set[str]:
    """Every environment name Settings reads: aliases and validation-alias choices."""
    names = set()
    for field in Settings.model_fields.values():
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


def service_env(service: dict) -> dict:
    env = service.get("environment") or {}
    return env if isinstance(env, dict) else dict(item.partition("=")[::2] for item in env)


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
    assert set(minio["ports"]) == {"9002:9000", "9003:9001"}
    volume = minio["volumes"][0].split(":")
    assert volume[1] == "/data" and volume[0] in compose["volumes"]
    assert minio["healthcheck"]["test"][0] == "CMD" and "ready" in minio["healthcheck"]["test"]


def test_credentials_come_from_env_and_are_required(compose):
    services = compose["services"]
    for name in ("minio", "api", "init"):
        env = service_env(services[name])
        for var in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
            assert env[var].startswith("${" + var + ":?"), f"{name}.{var} must be interpolated and required"


def test_init_seeds_the_datasets_once_after_minio_is_healthy(compose):
    init, api = compose["services"]["init"], compose["services"]["api"]
    assert init["command"][:3] == ["scv", "datasets", "seed"]
    assert init["restart"] == "no"
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init["image"] == api["image"] and init["build"] == api["build"], "init runs the api's image"


def test_api_builds_from_the_dockerfile_and_starts_after_minio_and_init(compose):
    api = compose["services"]["api"]
    assert (ROOT / api["build"]["context"] / api["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert api["command"] == ["scv", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "8000:8000" in api["ports"]
    assert api["depends_on"] == {"minio": {"condition": "service_healthy"},
                                 "init": {"condition": "service_completed_successfully"}}
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert service_env(api)["MINIO_ENDPOINT"] == "minio:9000"


def test_api_and_init_share_the_data_volume_at_scv_data_dir(compose):
    for name in ("api", "init"):
        service = compose["services"][name]
        data_dir = service_env(service)["SCV_DATA_DIR"]
        volume, target = service["volumes"][0].split(":")[:2]
        assert target == data_dir and volume in compose["volumes"], name
    assert compose["services"]["api"]["volumes"] == compose["services"]["init"]["volumes"]


def test_service_environment_uses_only_variables_the_settings_know(compose):
    known = settings_variables()
    for name in ("api", "init"):
        unknown = set(service_env(compose["services"][name])) - known
        assert not unknown, f"{name} passes variables app.settings.Settings ignores: {sorted(unknown)}"


def test_every_setting_reaches_the_api(compose):
    # MINIO_CA_CERT alone is left out: the compose MinIO speaks plain HTTP (MINIO_SECURE is pinned false).
    missing = settings_variables() - set(service_env(compose["services"]["api"])) - {"MINIO_CA_CERT"}
    assert not missing, f"add to the api's environment in docker-compose.yml: {sorted(missing)}"
    assert service_env(compose["services"]["api"])["MINIO_SECURE"] == "false"


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
    runs = [args for kind, args in dockerfile_instructions() if kind == "RUN"]
    torch_run = next(i for i, run in enumerate(runs) if "download.pytorch.org/whl/cpu" in run)
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs[torch_run]
    project_runs = [i for i, run in enumerate(runs) if "pyproject.toml" in run or re.search(r"pip install \S*\.", run)]
    assert project_runs and min(project_runs) > torch_run
    pins = {dep for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
            if dep.startswith(("torch==", "torchvision=="))}
    assert pins and pins <= set(shlex.split(runs[torch_run])), "Dockerfile torch pins differ from pyproject.toml"


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
    unknown = set(env_example) - settings_variables() - compose_variables - CLIENT_VARIABLES
    assert not unknown, f".env.example names variables nothing reads: {sorted(unknown)}"


def test_env_example_holds_placeholders_not_secrets(env_example):
    for name, (value, _) in env_example.items():
        if re.search(r"PASSWORD|SECRET|TOKEN", name) or name == "MINIO_ROOT_USER":
            assert value.startswith("change-me"), f"{name} must be a change-me placeholder"


@pytest.mark.parametrize("uncomment", [False, True], ids=["as-shipped", "all-set"])
def test_env_example_values_are_valid_settings(env_example, tmp_path, monkeypatch, uncomment):
    for name in settings_variables():
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, (value, active) in env_example.items()
                                if active or uncomment))
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
def example_env_file(env_example, tmp_path) -> Path:
    path = tmp_path / "compose.env"
    path.write_text("".join(f"{name}={value}\n" for name, (value, active) in env_example.items() if active))
    return path


def test_docker_compose_accepts_the_file_with_the_example_env(example_env_file):
    for profile in ([], ["--profile", "ray"]):
        result = _docker_compose(*profile, "config", "-q", env_file=example_env_file)
        assert result.returncode == 0, result.stderr


def test_docker_compose_starts_only_the_core_services_without_the_ray_profile(example_env_file):
    plain = _docker_compose("config", "--services", env_file=example_env_file)
    with_ray = _docker_compose("--profile", "ray", "config", "--services", env_file=example_env_file)
    assert set(plain.stdout.split()) == {"minio", "init", "api"}
    assert set(with_ray.stdout.split()) == {"minio", "init", "api"} | RAY_SERVICES


def test_docker_compose_resolves_api_environment_from_the_env_file(example_env_file, env_example):
    result = _docker_compose("config", "--format", "json", env_file=example_env_file)
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)["services"]["api"]["environment"]
    assert env["MINIO_ENDPOINT"] == "minio:9000" and env["SCV_DATA_DIR"] == "/data"
    assert env["MINIO_ROOT_USER"] == env_example["MINIO_ROOT_USER"][0]
    assert env["SCV_API_TOKEN"] is None, "a variable unset in .env stays unset in the container"


def test_docker_compose_refuses_to_start_without_minio_credentials(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _docker_compose("config", "-q", env_file=empty)
    # Compose names whichever of the two it meets first.
    assert result.returncode != 0
    assert re.search(r"MINIO_ROOT_(USER|PASSWORD) in \.env", result.stderr), result.stderr
