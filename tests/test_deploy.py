"""The deployment files: docker-compose.yml, deploy/Dockerfile, deploy/Dockerfile.rocm, .dockerignore.

No Docker daemon is needed: Compose itself validates the file (`docker-compose config -q`, from
Debian's `docker-compose` package, or the `docker compose` v2 plugin), and the rest reads the
YAML and the Dockerfiles as text.  Nothing here builds an image or starts a container.
"""
from __future__ import annotations

import fnmatch
import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML comes with optuna

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILES = [ROOT / "deploy" / "Dockerfile", ROOT / "deploy" / "Dockerfile.rocm"]
INSTALL_HINT = "apt-get install -y --no-install-recommends docker-compose"

REQUIRED = {"redis", "postgres", "migrate", "scheduler", "worker-h100", "worker-mi300x", "worker-cpu", "flower", "api"}
READY = {"service_healthy", "service_completed_successfully"}


def compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return None


SECRETS = ("POSTGRES_PASSWORD", "TUNER_WORKER_DB_PASSWORD", "REDIS_PASSWORD", "TUNER_API_TOKEN",
           "TUNER_API_DB_PASSWORD", "FLOWER_PASSWORD")  # each required


def run_compose(tmp_path: Path, *args: str, password: str | None = "not-a-real-secret",
                compose_file: Path = COMPOSE, without: str | None = None, **secrets: str) -> subprocess.CompletedProcess:
    cmd = compose_cmd()
    if cmd is None:
        pytest.skip(f"no docker-compose binary to validate with; CI needs: {INSTALL_HINT}")
    env_file = tmp_path / "empty.env"  # so a developer's .env neither helps nor hurts
    env_file.write_text("")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)}
    env.update({name: f"not-a-real-{name.lower()}" for name in SECRETS if name != without}, **secrets)
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    else:
        env.pop("POSTGRES_PASSWORD", None)
    return subprocess.run([*cmd, "--env-file", str(env_file), "-f", str(compose_file), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


# ---- Compose itself ---------------------------------------------------------------------

def test_compose_validates(tmp_path):
    r = run_compose(tmp_path, "config", "-q")
    assert r.returncode == 0, r.stderr


def test_the_password_reaches_postgres_and_the_database_url(tmp_path):
    r = run_compose(tmp_path, "config", password="s3cret-from-env", TUNER_WORKER_DB_PASSWORD="w0rker-pw",
                    REDIS_PASSWORD="r3dis-pw")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)["services"]
    assert cfg["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret-from-env"
    # the owner migrates; everything else connects as the least-privilege worker role
    assert cfg["migrate"]["environment"]["TUNER_DB_URL"] == "postgresql+psycopg://tuner:s3cret-from-env@postgres:5432/tuner"
    for name in ("worker-cpu", "scheduler", "cli"):
        assert cfg[name]["environment"]["TUNER_DB_URL"] == \
            "postgresql+psycopg://tuner_worker:w0rker-pw@postgres:5432/tuner", name
    assert cfg["postgres"]["environment"]["TUNER_WORKER_DB_PASSWORD"] == "w0rker-pw"


@pytest.mark.parametrize("secret", SECRETS[1:])
def test_compose_refuses_to_run_without_each_secret(tmp_path, secret):
    r = run_compose(tmp_path, "config", "-q", without=secret)
    assert r.returncode != 0 and secret in r.stderr


def test_redis_requires_the_password_that_every_client_gives(tmp_path):
    """Redis has a password (requirepass), and the workers, the scheduler, the CLI and Flower give it."""
    r = run_compose(tmp_path, "config", REDIS_PASSWORD="r3dis-pw")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)["services"]
    command = cfg["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == "r3dis-pw" and "--appendonly" in command
    assert cfg["redis"]["environment"]["REDISCLI_AUTH"] == "r3dis-pw"  # the healthcheck's redis-cli
    for name in ("worker-cpu", "scheduler", "cli", "migrate"):
        assert cfg[name]["environment"]["TUNER_BROKER_URL"] == "redis://:r3dis-pw@redis:6379/0", name
    assert cfg["flower"]["environment"]["CELERY_BROKER_URL"] == "redis://:r3dis-pw@redis:6379/0"


def test_postgres_creates_the_least_privilege_roles(services):
    """The roles of db/roles.py are created with the database, by a script the postgres image runs."""
    from db.roles import API, RUNTIME, WORKER

    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["postgres"]["volumes"] if ":" in m}
    script = ROOT / mounts["/docker-entrypoint-initdb.d/10-tuner-roles.sh"]
    text = script.read_text()
    assert script.is_file() and os.access(script, os.X_OK)
    assert f"CREATE ROLE {WORKER} LOGIN PASSWORD :'worker_pw'" in text and f"CREATE ROLE {RUNTIME}" in text
    assert f"CREATE ROLE {API} LOGIN PASSWORD :'api_pw'" in text
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0


def test_the_api_serves_on_the_loopback_with_the_token_from_the_environment(tmp_path):
    r = run_compose(tmp_path, "config", TUNER_API_TOKEN="t0k-from-env", TUNER_API_DB_PASSWORD="api-pw")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)["services"]
    api = cfg["api"]
    assert api["environment"]["TUNER_API_TOKEN"] == "t0k-from-env"
    # the API submits jobs and records misses as its own role (db/roles.py API: it can write no
    # best, trial or worker), never as the worker role or the tables' owner
    assert api["environment"]["TUNER_DB_URL"] == "postgresql+psycopg://tuner_api:api-pw@postgres:5432/tuner"
    assert cfg["postgres"]["environment"]["TUNER_API_DB_PASSWORD"] == "api-pw"
    (port,) = api["ports"]
    if isinstance(port, dict):  # Compose v2 writes the long form
        assert (port["host_ip"], str(port["published"]), int(port["target"])) == ("127.0.0.1", "8000", 8000)
    else:  # Compose 1.29: "127.0.0.1:8000:8000/tcp"
        assert port.split("/")[0] == "127.0.0.1:8000:8000"


def test_the_commented_extra_gpu_services_are_valid(tmp_path):
    """docker-compose.yml shows how to add a worker for a second GPU; uncommented, it must work."""
    lines, inside = [], False
    for line in COMPOSE.read_text().splitlines():
        if line.startswith("  # More GPUs"):
            inside = True
        elif inside and not line.strip():
            inside = False
        elif inside and line.startswith("  # "):
            line = "  " + line[4:]
        lines.append(line)
    extended = tmp_path / "docker-compose.yml"
    extended.write_text("\n".join(lines) + "\n")
    r = run_compose(tmp_path, "config", compose_file=extended)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)["services"]
    [dev] = cfg["worker-h100-gpu1"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["device_ids"] == ["1"] and dev["driver"] == "nvidia"
    assert cfg["worker-mi300x-gpu1"]["environment"]["HIP_VISIBLE_DEVICES"] == "1"
    assert cfg["worker-mi300x-gpu1"]["devices"] == ["/dev/kfd", "/dev/dri"]


# ---- What the fleet is made of ----------------------------------------------------------

def test_required_services_exist(services):
    assert REQUIRED <= set(services)


def test_redis_and_postgres_have_healthchecks_and_postgres_a_named_volume(services):
    redis, pg = services["redis"], services["postgres"]
    assert redis["image"].startswith("redis:7")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")[0]
    assert volume in yaml.safe_load(COMPOSE.read_text())["volumes"]


def test_migrate_is_one_shot_after_postgres(services):
    m = services["migrate"]
    assert m["command"] == ["tuner", "db", "upgrade"]
    assert m["restart"] == "no"
    assert m["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_scheduler_waits_for_the_migration_and_the_broker(services):
    s = services["scheduler"]
    assert s["command"] == ["tuner", "scheduler"]
    assert s["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert s["depends_on"]["redis"]["condition"] == "service_healthy"


def test_h100_worker_reserves_one_nvidia_gpu(services):
    w = services["worker-h100"]
    [dev] = w["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert dev.get("count") == 1 or len(dev.get("device_ids", [])) == 1
    assert w["command"] == ["tuner", "worker", "--device", "cuda:0"]


def test_mi300x_worker_maps_the_rocm_devices(services):
    w = services["worker-mi300x"]
    assert w["build"]["dockerfile"] == "deploy/Dockerfile.rocm"
    assert {"/dev/kfd", "/dev/dri"} <= set(w["devices"])
    assert "video" in w["group_add"]
    assert "seccomp=unconfined" in w["security_opt"]
    assert w.get("ipc") == "host" or w.get("shm_size")
    assert w["command"] == ["tuner", "worker", "--device", "cuda:0"]  # ROCm GPUs are cuda:N in torch


def test_flower_asks_for_the_password_from_the_environment(tmp_path):
    """Flower reads its options from FLOWER_* variables (mher/flower flower/command.py,
    FlowerCommand.apply_env_options: ENV_VAR_PREFIX = 'FLOWER_', the name lowercased, so
    FLOWER_BASIC_AUTH is --basic_auth user:password); its /healthcheck handler needs no login
    (flower/api/prometheus_metrics.py, Healthcheck has no @web.authenticated)."""
    r = run_compose(tmp_path, "config", FLOWER_PASSWORD="fl0wer-pw")
    assert r.returncode == 0, r.stderr
    flower = yaml.safe_load(r.stdout)["services"]["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:fl0wer-pw"
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_cpu_worker_and_flower(services):
    assert services["worker-cpu"]["command"] == ["tuner", "worker", "--device", "cpu"]
    f = services["flower"]
    assert any(str(p).endswith("5555:5555") for p in f["ports"])
    assert f["environment"]["CELERY_BROKER_URL"] == services["worker-cpu"]["environment"]["TUNER_BROKER_URL"]


def test_api_service(services):
    api = services["api"]
    assert api["command"][:2] == ["tuner", "serve"]
    # it must listen beyond the container's loopback for the published port to reach it, which
    # `tuner serve` allows only with a token
    assert api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert api["command"][api["command"].index("--port") + 1] == "8000"
    assert api["environment"]["TUNER_API_TOKEN"].startswith("${TUNER_API_TOKEN:?")
    assert api["ports"] == ["${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8000"]
    assert "/healthz" in " ".join(api["healthcheck"]["test"]) and "8000" in " ".join(api["healthcheck"]["test"])
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_long_running_service_is_health_checked_or_waits_for_healthy_ones(services):
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on without conditions starts it too early"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec["condition"] in READY, f"{name} -> {dep}: {spec['condition']}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
            else:
                assert services[dep].get("restart") == "no", f"{dep} must be one-shot to complete"
        if svc.get("restart") == "no":
            continue  # one-shot
        assert "healthcheck" in svc or deps, f"{name}: no healthcheck and waits for nothing"


def test_workers_check_their_own_celery_node(services):
    for name in ("worker-cpu", "worker-h100", "worker-mi300x"):
        hc = services[name]["healthcheck"]
        assert "control.ping" in " ".join(hc["test"]) and "gethostname" in " ".join(hc["test"])
        assert hc["retries"] >= 3


def _pairs(key, value):
    """(nearest mapping key, scalar) for every scalar in a parsed YAML tree."""
    if isinstance(value, (dict, list)):
        for k, v in (value.items() if isinstance(value, dict) else (("", v) for v in value)):
            yield from _pairs(k or key, v)
    else:
        yield str(key), str(value)


def test_no_password_literal():
    """Every password is an environment reference; none is written into the file."""
    raw = yaml.safe_load(COMPOSE.read_text())
    env_ref = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")
    seen = 0
    for key, value in _pairs("", raw):
        if re.search(r"PASSWORD|SECRET|TOKEN", key, re.I):
            seen += 1
            assert env_ref.match(value), f"{key}: {value!r} is not ${{VAR}}"
        for userinfo in re.findall(r"://[^/@\s:]*:(\$\{[^}]*\}|[^@\s/]*)@", value):
            seen += 1
            assert env_ref.match(userinfo), f"password {userinfo!r} in {value!r}"
    assert seen >= 3  # POSTGRES_PASSWORD, the one in TUNER_DB_URL, TUNER_API_TOKEN


# ---- The images -------------------------------------------------------------------------

def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerignored(rel: str, patterns: list[str]) -> bool:
    ignored = False
    for p in patterns:
        neg = p.startswith("!")
        p = p.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, p.replace("**/", "")) or rel.startswith(p + "/"):
            ignored = not neg
    return ignored


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_sound(dockerfile):
    ins = _instructions(dockerfile)
    known = {"ARG", "FROM", "RUN", "ENV", "COPY", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE"}
    assert {w for w, _ in ins} <= known
    assert ins[0][0] in ("ARG", "FROM") and any(w == "FROM" for w, _ in ins)
    last_stage = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    users = [rest for w, rest in ins[last_stage:] if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert any(w in ("CMD", "ENTRYPOINT") for w, _ in ins[last_stage:])
    text = dockerfile.read_text()
    assert "--index-url" in text and "torch==2.13.0" in text  # which torch build, and how
    for w, rest in ins:
        if w in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN", rest, re.I), f"{dockerfile.name}: {w} {rest}"
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert ".env" in patterns and ".git" in patterns and ".venv" in patterns
    copied = set()
    for w, rest in ins:
        if w == "COPY" and "--from=" not in rest:
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
                assert not _dockerignored(src, patterns), f"{dockerfile.name}: COPY {src} is in .dockerignore"
                copied.add(src.rstrip("/"))
    # every package `pip install .` installs is in the build context, or the image cannot import it
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    wanted = {p.rstrip("*") for p in packages["include"]}
    assert wanted <= copied, f"{dockerfile.name} does not copy {sorted(wanted - copied)}"


def test_the_images_compose_builds_exist(services):
    for name, svc in services.items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name


# ---- The commands the fleet runs exist in the CLI ---------------------------------------

def _cli_commands(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-m", "tuner.cli", *args, "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "100", "NO_COLOR": "1"})
    assert r.returncode == 0, f"tuner {' '.join(args)} --help failed:\n{r.stderr[-2000:]}"
    names, in_commands = set(), False
    for line in r.stdout.splitlines():
        if re.search(r"\bCommands\b", line):
            in_commands = True
            continue
        m = re.match(r"^[│|]?\s{1,3}([a-z][a-z0-9_-]*)\s{2,}", line)
        if in_commands and m:
            names.add(m.group(1))
    return names


def _tuner_words(services) -> dict[str, list[str]]:
    """service -> the subcommand words of the `tuner ...` it runs."""
    out = {}
    for name, svc in services.items():
        argv = list(svc.get("entrypoint") or []) + list(svc.get("command") or [])
        if argv[:1] == ["tuner"]:
            out[name] = list(itertools.takewhile(lambda w: not w.startswith("-"), argv[1:]))
    return out


def _service_params():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, words in _tuner_words(services).items():
        yield pytest.param(name, words, id=name)


@pytest.mark.parametrize("service,words", list(_service_params()))
def test_compose_commands_exist_in_the_cli(service, words):
    if not words:  # e.g. the cli service: `tuner --help`
        return
    top = _cli_commands()
    assert words[0] in top, f"{service}: `tuner {words[0]}` is not a command ({sorted(top)})"
    if words[0] == "db":
        assert words[1] in _cli_commands("db"), f"{service}: `tuner db {words[1]}` is not a command"
