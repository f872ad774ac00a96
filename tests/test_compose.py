"""docker-compose.yml, the deployment beyond one machine: validated, not run (no container engine
on the project's machines). `docker-compose config` (Debian's docker-compose 1.29, `make install`)
interpolates and checks the file without an engine; these tests read what it renders and check
the promises of the deployment: loopback-only ports, no default credentials, restart policies and
health checks, a scalable worker found by Prometheus through DNS, and commands and settings that
our own CLI accepts (the same subcommands the integration tests run locally).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from stopdrift.cli import build_parser, settings_from_args
from stopdrift_common.settings import ALIASES, ENV_PREFIX, PROJECT_ROOT, Settings

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
MONITORING = PROJECT_ROOT / "monitoring"
PROM_COMPOSE = MONITORING / "prometheus-compose.yml"

# Required secrets: no default, compose refuses to render without them.
SECRETS = ("GRAFANA_ADMIN_PASSWORD", "POSTGRES_PASSWORD")
# Jobs that run once and exit; every other service is long-running.
ONE_SHOT = {"topics", "trainer", "producer"}
# Each service of our image that runs our CLI, and the subcommand it must run.
OUR_SERVICES = {
    "topics": "topics",
    "trainer": "train",
    "worker": "worker",
    "producer": "produce",
    "drift-view": "ui",
}
# Services of our image that run MLflow's own server (`mlflow server`, what `stopdrift mlflow`
# starts): its store URI, which holds the Postgres password, must not be on a command line.
MLFLOW_SERVICES = {"mlflow"}
# Variables our image's services may set that are not stopdrift settings: read by a program
# that our command starts (checked to exist in the installed package below).
THIRD_PARTY_ENV = {
    "mlflow": {
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_SERVER_ALLOWED_HOSTS",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION",
    }
}


# --- running docker-compose ------------------------------------------------------------------


def compose_binary() -> str:
    path = shutil.which("docker-compose")
    if not path:
        pytest.skip(
            "docker-compose not installed (`make install` installs Debian's docker-compose; "
            "or apt-get install docker-compose): cannot render docker-compose.yml"
        )
    return path


def compose_config(
    env_file: Path | None, compose_file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess:
    """`docker-compose config` with a clean environment: only the env file (if any) supplies the
    variables, whatever the caller's shell or the project's own .env holds."""
    cmd = [compose_binary(), "-f", str(compose_file)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]  # replaces the project directory's .env
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str((env_file or compose_file).parent),
    }
    return subprocess.run(
        [*cmd, "config"], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def example_values() -> dict[str, str]:
    """The variables .env.example sets (uncommented lines; secrets are left empty there)."""
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def env_values() -> dict[str, str]:
    """.env.example with its empty secrets filled in, as a user is told to."""
    values = example_values()
    for key in SECRETS:
        assert key in values, f".env.example must list {key}"
        values[key] = values[key] or f"test-{key.lower().replace('_', '-')}-4f1c9e"
    return values


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory, env_values: dict[str, str]) -> dict:
    env_file = write_env(tmp_path_factory.mktemp("compose") / "test.env", env_values)
    done = compose_config(env_file)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    return yaml.safe_load(done.stdout)


@pytest.fixture(scope="module")
def services(rendered: dict) -> dict[str, dict]:
    return rendered["services"]


# --- reading what compose renders (docker-compose 1.x short forms, compose v2 long forms) ----


def port_host_ip(entry: str | dict) -> str | None:
    """The host address of a `ports` entry: "127.0.0.1:3000:3000/tcp" or {host_ip: ...}."""
    if isinstance(entry, dict):
        return entry.get("host_ip")
    parts = str(entry).split("/")[0].split(":")
    return parts[0] if len(parts) == 3 else None


def port_numbers(entry: str | dict) -> tuple[int, int]:
    """(published, target) of a `ports` entry."""
    if isinstance(entry, dict):
        return int(entry["published"]), int(entry["target"])
    host_ip, published, target = str(entry).split("/")[0].split(":")
    return int(published), int(target)


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of each volume of a service."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out.append((v.get("source", ""), v["target"], bool(v.get("read_only"))))
        else:
            source, target, *mode = str(v).split(":")
            out.append((source, target, "ro" in (mode[0].split(",") if mode else [])))
    return out


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def as_list(value: str | list | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(x) for x in value]


def dockerfile_instruction(name: str) -> list[str]:
    """The arguments of the Dockerfile's instruction `name` (line continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        line.split(None, 1)[1]
        for line in text.splitlines()
        if line.strip().upper().startswith(name + " ")
    ]


def image_entrypoint() -> list[str]:
    (entrypoint,) = dockerfile_instruction("ENTRYPOINT")[-1:]
    return json.loads(entrypoint)


def image_env() -> dict[str, str]:
    env = {}
    for args in dockerfile_instruction("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def argv(service: dict) -> list[str]:
    """What the container runs: the entrypoint (the service's or the image's) plus command."""
    entrypoint = as_list(service.get("entrypoint")) or image_entrypoint()
    return entrypoint + as_list(service.get("command"))


def healthcheck_enabled(service: dict) -> bool:
    check = service.get("healthcheck") or {}
    test = as_list(check.get("test"))
    return bool(test) and test[0] != "NONE" and not check.get("disable")


def ours(services: dict[str, dict]) -> dict[str, dict]:
    return {n: s for n, s in services.items() if "build" in s}


# --- the tests ---------------------------------------------------------------------------------


def test_renders_and_has_every_part(services: dict[str, dict]):
    assert set(services) == {
        *OUR_SERVICES,
        *MLFLOW_SERVICES,
        "kafka",
        "postgres",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    built = {*OUR_SERVICES, *MLFLOW_SERVICES}
    assert set(ours(services)) == built, "services built from our Dockerfile"
    for name in built:
        build = services[name]["build"]
        context = build if isinstance(build, str) else build["context"]
        assert Path(context).resolve() == PROJECT_ROOT.resolve(), name
    assert services["kafka"]["image"] == "apache/kafka:3.9.0"
    assert services["postgres"]["image"] == "postgres:16.6-bookworm"
    assert services["grafana"]["image"] == "grafana/grafana:11.3.0"
    assert services["prometheus"]["image"].startswith("prom/prometheus")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager")


def test_every_published_port_is_loopback_only(services: dict[str, dict]):
    published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
    assert published, "some ports are published (Grafana, Prometheus, ...)"
    for name, ports in published.items():
        for entry in ports:
            assert port_host_ip(entry) == "127.0.0.1", f"{name} publishes {entry!r} beyond loopback"


def test_worker_can_scale(services: dict[str, dict]):
    """`docker compose up --scale worker=N`: nothing may be unique per container."""
    worker = services["worker"]
    assert not worker.get("ports"), "replicas would collide on a published port"
    assert "container_name" not in worker and "hostname" not in worker
    assert not any("container_name" in s for s in services.values())
    # Every replica writes reports and drift snapshots where the drift view reads them.
    runs_dir = environment(worker)["STOPDRIFT_RUNS_DIR"]
    shared = {(src, dst) for src, dst, _ in mounts(worker)}
    assert ("runs", runs_dir) in shared
    assert ("runs", environment(services["drift-view"])["STOPDRIFT_RUNS_DIR"]) in {
        (src, dst) for src, dst, _ in mounts(services["drift-view"])
    }


def test_restart_policies_and_health_checks(services: dict[str, dict]):
    for name, service in services.items():
        restart = str(service.get("restart", "no"))
        if name in ONE_SHOT:
            assert restart == "no" or restart.startswith("on-failure"), (name, restart)
            continue
        assert restart == "unless-stopped", f"{name}: restart {restart!r}"
        assert healthcheck_enabled(service), f"{name} has no health check"


def test_start_order(services: dict[str, dict]):
    def conditions(name: str) -> dict[str, str]:
        deps = services[name].get("depends_on") or {}
        if isinstance(deps, list):
            return dict.fromkeys(deps, "service_started")
        return {k: v.get("condition", "service_started") for k, v in deps.items()}

    assert conditions("topics") == {"kafka": "service_healthy"}
    assert conditions("mlflow") == {"postgres": "service_healthy"}
    assert conditions("trainer") == {"mlflow": "service_healthy"}
    assert conditions("worker") == {
        "kafka": "service_healthy",
        "topics": "service_completed_successfully",
        "mlflow": "service_healthy",
    }
    assert conditions("producer")["topics"] == "service_completed_successfully"
    for name in services:
        for dep, condition in conditions(name).items():
            if condition == "service_healthy":
                assert healthcheck_enabled(services[dep]), f"{name} waits for {dep}'s health"
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for {dep} to exit"


def test_no_default_credentials(services: dict[str, dict], env_values: dict[str, str]):
    grafana = environment(services["grafana"])
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"].lower() == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] not in ("", "admin")
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == env_values["GRAFANA_ADMIN_PASSWORD"]
    assert environment(services["postgres"])["POSTGRES_PASSWORD"] == env_values["POSTGRES_PASSWORD"]
    parsed = urlparse(environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"])
    assert parsed.hostname == "postgres"
    assert parsed.password == env_values["POSTGRES_PASSWORD"]
    raw = COMPOSE_FILE.read_text()
    for key in SECRETS:
        assert re.search(r"\$\{" + key + r":\?[^}]*\.env", raw), f"{key} must be required"


def test_no_secret_on_a_command_line(services: dict[str, dict], env_values: dict[str, str]):
    """What a container runs is in every host user's `ps`: secrets go through the environment."""
    for name, service in services.items():
        check = as_list((service.get("healthcheck") or {}).get("test"))
        shown = " ".join(
            [*as_list(service.get("entrypoint")), *as_list(service.get("command")), *check]
        )
        for key in SECRETS:
            assert env_values[key] not in shown, f"{name} shows {key} on its command line"


def test_compose_refuses_to_render_without_the_env_file(tmp_path: Path):
    # A checkout with no .env at all (the compose file's directory is the project directory).
    copy = tmp_path / "checkout"
    copy.mkdir()
    shutil.copy(COMPOSE_FILE, copy / "docker-compose.yml")
    done = compose_config(None, copy / "docker-compose.yml")
    assert done.returncode != 0
    assert any(key in done.stderr for key in SECRETS), done.stderr
    # .env.example copied as it is (empty secrets) is refused too.
    done = compose_config(write_env(tmp_path / "as-is.env", example_values()))
    assert done.returncode != 0 and any(key in done.stderr for key in SECRETS), done.stderr
    # Each secret on its own is required, and the error names it.
    for missing in SECRETS:
        values = {k: "x1" for k in SECRETS if k != missing}
        done = compose_config(write_env(tmp_path / f"no-{missing}.env", values))
        assert done.returncode != 0
        assert missing in done.stderr and ".env" in done.stderr, done.stderr


def test_env_example_documents_every_variable():
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"
    for key in SECRETS:
        assert example_values()[key] == "", f".env.example must not ship a value for {key}"


def test_our_commands_parse_and_their_settings_exist(
    services: dict[str, dict], monkeypatch: pytest.MonkeyPatch
):
    """Each service of our image runs a subcommand our CLI accepts, with settings (image ENV +
    service environment) that exist and validate."""
    settings_names = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    for name, subcommand in OUR_SERVICES.items():
        service = services[name]
        cmd = argv(service)
        assert cmd[0] == "stopdrift", f"{name} runs {cmd}"
        try:
            args = build_parser().parse_args(cmd[1:])
        except SystemExit:
            pytest.fail(f"{name}: `{shlex.join(cmd)}` is refused by our CLI")
        assert args.command == subcommand, name

        env = {**image_env(), **environment(service)}
        for key in env:
            if key.startswith(ENV_PREFIX):
                assert key in settings_names, f"{name}: {key} is not a setting"
            elif key in ALIASES.values() or key.startswith(("PYTHON", "PIP_")):
                pass
            else:
                assert key in THIRD_PARTY_ENV.get(name, set()), f"{name}: unknown variable {key}"

        for key in list(os.environ):
            if key.startswith(ENV_PREFIX) or key in ALIASES.values():
                monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = settings_from_args(args)  # raises on an invalid value
        assert str(settings.runs_dir) == env["STOPDRIFT_RUNS_DIR"]
        if name != "drift-view":
            assert settings.bootstrap == "kafka:9092", name
            assert settings.mlflow_tracking_uri == "http://mlflow:5001", name
        monkeypatch.undo()


def test_worker_settings(services: dict[str, dict], monkeypatch: pytest.MonkeyPatch):
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX) or key in ALIASES.values():
            monkeypatch.delenv(key)
    for key, value in {**image_env(), **environment(services["worker"])}.items():
        monkeypatch.setenv(key, value)
    settings = settings_from_args(build_parser().parse_args(argv(services["worker"])[1:]))
    assert settings.worker_web_host == "0.0.0.0", "Prometheus scrapes it from another container"
    assert settings.metrics_port == 8000
    # The topics job creates the partials topic of the same group, with the same partitions.
    topics = environment(services["topics"])
    assert topics["STOPDRIFT_WORKER_ID"] == settings.worker_id
    cmd = as_list(services["topics"]["command"])
    assert int(cmd[cmd.index("--partitions") + 1]) == settings.partitions


def test_kafka_listeners(services: dict[str, dict]):
    env = environment(services["kafka"])
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "kafka:9092"
    for entry in services["kafka"].get("ports", []):
        published, target = port_numbers(entry)
        # the published port belongs to a listener advertised as 127.0.0.1:<published>
        (name,) = [n for n, address in listeners.items() if address.endswith(f":{target}")]
        assert advertised[name] == f"127.0.0.1:{published}"
    assert ("kafka-data", env["KAFKA_LOG_DIRS"]) in {
        (s, t) for s, t, _ in mounts(services["kafka"])
    }
    assert services["postgres"]["volumes"], "postgres keeps its data in a named volume"
    assert mounts(services["postgres"])[0][:2] == ("postgres-data", "/var/lib/postgresql/data")


def test_mlflow_runs_its_own_server_with_options_it_has(services: dict[str, dict]):
    """The service runs `mlflow server` from the image, with options and variables the
    installed MLflow's command reads (parsed by that command itself)."""
    from mlflow.cli import server

    cmd = argv(services["mlflow"])
    assert cmd[:2] == ["mlflow", "server"], cmd
    server.make_context("server", cmd[2:])  # raises on an unknown option or a bad value
    variables = {p.envvar for p in server.params if p.envvar}
    assert "MLFLOW_BACKEND_STORE_URI" in variables
    env = environment(services["mlflow"])
    assert "MLFLOW_BACKEND_STORE_URI" in env
    assert set(env) <= THIRD_PARTY_ENV["mlflow"], "variables the installed mlflow reads"


def test_mlflow_serves_the_others(services: dict[str, dict]):
    cmd = as_list(services["mlflow"]["command"])
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    artifacts = cmd[cmd.index("--artifacts-destination") + 1]
    assert ("mlflow-artifacts", artifacts) in {(s, t) for s, t, _ in mounts(services["mlflow"])}
    port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else 5001
    # MLflow 3 refuses a Host header it does not allow (fnmatch patterns, comma-separated).
    allowed = environment(services["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for host in (f"mlflow:{port}", f"127.0.0.1:{port}", f"localhost:{port}"):
        assert any(fnmatch.fnmatch(host, a) if "*" in a else host == a for a in allowed), (
            f"MLflow would refuse Host: {host}"
        )
    for name in ("trainer", "worker"):
        assert environment(services[name])["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"


def test_mlflow_store_driver_is_in_the_image(services: dict[str, dict]):
    """SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3: the URI names the driver that the
    image installs from the lock (psycopg2-binary)."""
    scheme = urlparse(environment(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"]).scheme
    assert scheme == "postgresql+psycopg2"
    assert re.search(r"^psycopg2-binary==", (PROJECT_ROOT / "requirements.lock").read_text(), re.M)
    assert "pip install --require-hashes --no-deps -r requirements.lock" in dockerfile_instruction(
        "RUN"
    )


def test_dockerfile_and_dockerignore():
    assert image_entrypoint() == ["stopdrift"]
    (user,) = dockerfile_instruction("USER")
    assert user.strip() not in ("root", "0"), "the image runs as a non-root user"
    assert any(
        re.match(r"pip install --no-deps --no-build-isolation \.(\s|$)", r)
        for r in dockerfile_instruction("RUN")
    ), "the project installs without resolving anything the lock does not pin"
    ignored = {
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".venv", "runs", ".git", ".pytest_cache", ".ruff_cache"} <= ignored
    assert "**/__pycache__" in ignored
    assert "data" not in ignored and "README.md" not in ignored  # the tables; the package readme


def test_every_image_names_an_exact_version(services: dict[str, dict]):
    """A tag like ``postgres:16`` or ``python:3.11-slim`` moves with every upstream release."""
    (base,) = dockerfile_instruction("FROM")
    assert base == f"python:{platform.python_version()}-slim-bookworm", (
        "the image's Python is the one the tests ran on"
    )
    for name, service in services.items():
        image = service.get("image", "")
        if image != "stopdrift:local":
            assert re.search(r":v?\d+(\.\d+){1,2}(-[\w.]+)?$", image), f"{name}: {image}"


def test_third_party_variables_exist_in_the_installed_packages():
    spec = importlib.util.find_spec("mlflow")  # located, not imported (that takes seconds)
    assert spec and spec.submodule_search_locations
    package = Path(spec.submodule_search_locations[0])
    # Its environment variables, and those its CLI's options read (`envvar=`).
    source = (package / "environment_variables.py").read_text()
    source += (package / "cli" / "__init__.py").read_text()
    for name in THIRD_PARTY_ENV["mlflow"]:
        assert f'"{name}"' in source, f"the installed mlflow does not read {name}"


def test_alertmanager_config_is_the_deployers_choice(
    tmp_path: Path, services: dict[str, dict], env_values: dict[str, str]
):
    """The demo's config by default (critical alerts to "oncall", which has no endpoint); a
    deployment names its own with ALERTMANAGER_CONFIG (see alertmanager-oncall.example.yml)."""
    target = "/etc/alertmanager/alertmanager.yml"
    (source,) = [s for s, t, _ in mounts(services["alertmanager"]) if t == target]
    assert Path(source).resolve() == (MONITORING / "alertmanager.yml").resolve()
    mine = tmp_path / "oncall.yml"
    env_file = write_env(tmp_path / "oncall.env", {**env_values, "ALERTMANAGER_CONFIG": str(mine)})
    done = compose_config(env_file)
    assert done.returncode == 0, done.stderr
    rendered = yaml.safe_load(done.stdout)["services"]["alertmanager"]
    assert (str(mine), target) in {(s, t) for s, t, _ in mounts(rendered)}


def test_grafana_provisioning(services: dict[str, dict]):
    grafana = services["grafana"]
    env = environment(grafana)
    for key, service, port in (
        ("STOPDRIFT_PROMETHEUS_URL", "prometheus", 9090),
        ("STOPDRIFT_ALERTMANAGER_URL", "alertmanager", 9093),
    ):
        url = urlparse(env[key])
        assert (url.hostname, url.port) == (service, port), key
        assert (
            "${" + key + "}"
            in (MONITORING / "grafana/provisioning/datasources/stopdrift.yml").read_text()
        )
    bound = {t: (Path(s), ro) for s, t, ro in mounts(grafana)}
    assert bound["/etc/grafana/provisioning"] == (MONITORING / "grafana/provisioning", True)
    assert bound["/var/lib/grafana/dashboards"] == (MONITORING / "grafana/dashboards", True)
    am = {t: (Path(s), ro) for s, t, ro in mounts(services["alertmanager"])}
    assert am["/etc/alertmanager/alertmanager.yml"] == (MONITORING / "alertmanager.yml", True)


def test_prometheus_finds_every_worker_by_dns(services: dict[str, dict]):
    prometheus = services["prometheus"]
    config_arg = next(a for a in as_list(prometheus.get("command")) if "--config.file=" in a)
    config_path = PurePosixPath(config_arg.split("=", 1)[1])
    bound = {PurePosixPath(t): (Path(s), ro) for s, t, ro in mounts(prometheus)}
    assert bound[config_path] == (PROM_COMPOSE, True)

    compose_cfg = yaml.safe_load(PROM_COMPOSE.read_text())
    local_cfg = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert compose_cfg["rule_files"] == local_cfg["rule_files"]
    for rule in compose_cfg["rule_files"]:
        # Inside the container the rule file resolves (relative to the config) to a read-only
        # mount of the same file in the repository.
        target = config_path.parent / rule
        mount = next(m for m in bound if target == m or m in target.parents)
        source, read_only = bound[mount]
        assert read_only and (source / target.relative_to(mount)).resolve() == (
            (MONITORING / rule).resolve()
        ), rule

    (job,) = [j for j in compose_cfg["scrape_configs"] if j["job_name"] == "stopdrift-worker"]
    assert "static_configs" not in job
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd.get("type", "SRV") == "A"
    assert sd["port"] == int(environment(services["worker"])["STOPDRIFT_METRICS_PORT"])
    assert compose_cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]


def test_compose_prometheus_config_passes_promtool():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (`make install`: Debian prometheus)")
    done = subprocess.run(
        [promtool, "check", "config", PROM_COMPOSE.name],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr
