"""Every setting of the service, typed, read once from the environment.

Nothing else in the project reads ``os.environ`` for a TUNER_ variable; the rooms below tuner/
(devices, harness, search, workers, db, search_spaces) get the values they need handed to them by
the CLI and the runtime, so that they depend on nothing of tuner/ (`configure_plugins` hands the
plug-in modules to the kernel and strategy registries).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from tuner.errors import UserError


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str
    broker_url: str
    device: str | None
    kernel_modules: str
    strategy_modules: str
    config_bundle: Path | None
    fingerprint_override: str
    # nightly retune: a cron expression (minute hour day month weekday) and the budget fraction
    retune_cron: str = "0 3 * * *"
    retune_budget_fraction: float = 0.25
    retune_regression_threshold: float = 0.05
    # cooperative search: trials per task a worker runs before it asks for more
    batch_trials: int = 4
    heartbeat_s: float = 10.0
    worker_dead_after_s: float = 60.0
    stall_s: float = 120.0  # a running key with no trial for this long is re-sent
    trial_timeout_s: float = 120.0
    # the runtime in a model process (tuner/runtime/) and the misses it reports
    runtime_deadline_ms: float = 50.0  # a launch waits at most this for a miss, then serves the default
    runtime_cache_size: int = 4096  # keys kept in-process (least recently used dropped first)
    runtime_retry_s: float = 30.0  # defaults served while the source was unreachable are asked again after this
    runtime_refresh_s: float = 600.0  # answers from a fallback level are asked again this often (0: never)
    miss_flush_s: float = 5.0  # misses are written at most once this often (0: not counted)
    miss_file: Path | None = None  # JSON lines of misses when the source is a bundle
    config_url: str | None = None  # a `tuner serve` the runtime takes its bundle from (and posts misses to)
    runtime_max_bundle_mb: float = 64.0  # a larger answer from it is refused
    runtime_proxy_from_env: bool = False  # reach it through the environment's http(s)_proxy (no_proxy honoured)
    retune_misses: bool = True  # the nightly scheduler also queues the most frequent misses
    retune_misses_max_jobs: int = 20  # at most this many miss jobs a night
    retune_misses_trials: int = 20  # trials of a miss job
    misses_keep_days: float = 30.0  # runtime miss rows not seen for this long are pruned (the janitor)
    workers_keep_days: float = 7.0  # rows of workers gone (stopped or silent) this long are pruned (the janitor)
    # the HTTP API and metrics (tuner/api/, workers/metrics.py)
    api_token: str = ""  # the operators' bearer token: every read and write
    runtime_token: str = ""  # the inference hosts' bearer token: GET /v1/bundle and POST /v1/misses only
    api_open_reads: bool = False  # reads without a token: a single user's laptop (loopback only)
    api_allowed_hosts: tuple[str, ...] = ()  # Host headers served besides the bound host and the loopback
    metrics_port: int | None = None  # a worker's own Prometheus metrics port; None: none served
    metrics_host: str = "127.0.0.1"  # the address it listens on (0.0.0.0 only where the network is trusted)
    metrics_cache_s: float = 10.0  # /metrics answers from a reading at most this old (0: read at every scrape)
    # device-class slug -> list price per hour, for the cost column of `tuner report compare`
    device_prices: tuple[tuple[str, float], ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def is_default_db(self) -> bool:
        return "TUNER_DB_URL" not in self.extra.get("explicit", ())


def _refuse(message: str, on_error) -> None:
    """A malformed value: UserError for the CLI, or reported to on_error (the runtime's lenient read)."""
    if on_error is None:
        raise UserError(message)
    on_error(message)


def _float(env: dict, name: str, default: float, on_error=None, minimum: float | None = None) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
        if value != value or (minimum is not None and not minimum <= value < float("inf")):
            raise ValueError
        return value
    except ValueError:
        bound = "" if minimum is None else f" >= {minimum:g}"
        _refuse(f"{name}={str(raw)[:80]!r} is not a number{bound}; unset it or give a number{bound}", on_error)
        return default


def _port(env: dict, name: str, on_error=None) -> int | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        _refuse(f"{name}={raw[:40]!r} is not a TCP port; give a number from 1 to 65535 or unset it", on_error)
        return None
    return int(raw)


def _prices(env: dict, name: str, on_error=None) -> tuple[tuple[str, float], ...]:
    """'h100-sxm-80gb=2.99,mi300x-192gb=2.49' -> (('h100-sxm-80gb', 2.99), ...)."""
    out = []
    for part in filter(None, (p.strip() for p in (env.get(name) or "").split(","))):
        slug, _, price = part.partition("=")
        try:
            value = float(price)
        except ValueError:
            value = -1.0
        if not slug.strip() or value < 0:
            _refuse(f"{name}: {part[:40]!r} is not SLUG=PRICE; write e.g. h100-sxm-80gb=2.99,mi300x-192gb=2.49 "
                    "(price per hour)", on_error)
            return ()
        out.append((slug.strip().lower(), value))
    return tuple(out)


def _url(env: dict, name: str, on_error=None) -> str | None:
    """An http(s) base URL without its trailing slash, e.g. http://tuner.internal:8000."""
    from urllib.parse import urlsplit

    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        ok = False
    if not ok:
        _refuse(f"{name}={raw[:80]!r} is not an http(s) URL of a `tuner serve`; write e.g. http://tuner.internal:8000",
                on_error)
        return None
    return raw.rstrip("/")


HOST_PATTERN = re.compile(r"\*|(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*|\[?[0-9a-f:.]+\]?")


def _hosts(env: dict, name: str, on_error=None) -> tuple[str, ...]:
    """'tuner.internal,10.0.0.5,*.example.org' -> the names a Host header may carry (no port)."""
    out = []
    for part in filter(None, (p.strip().lower() for p in (env.get(name) or "").split(","))):
        if not HOST_PATTERN.fullmatch(part):
            _refuse(f"{name}: {part[:80]!r} is not a host name; write names or addresses without scheme or port, "
                    "e.g. tuner.internal,10.0.0.5,*.example.org", on_error)
            return ()
        out.append(part)
    return tuple(out)


def _flag(env: dict, name: str, default: bool, on_error=None) -> bool:
    raw = str(env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return raw in ("1", "true", "yes", "on")
    _refuse(f"{name}={raw[:80]!r} is not a switch; write 1 or 0", on_error)
    return default


def from_env(env: dict[str, str] | None = None, on_error=None) -> Settings:
    """The settings in env (default: the process's). A malformed value raises UserError, or, when
    `on_error` is given (the runtime, inside a model), is reported to it and its default used."""
    env = dict(os.environ if env is None else env)
    num = lambda name, default, minimum=None: _float(env, name, default, on_error, minimum)  # noqa: E731
    home = Path(env.get("TUNER_HOME") or Path.home() / ".tuner").expanduser()
    bundle = env.get("TUNER_CONFIG_BUNDLE")
    return Settings(
        home=home,
        db_url=env.get("TUNER_DB_URL") or f"sqlite:///{home / 'tuner.db'}",
        broker_url=env.get("TUNER_BROKER_URL") or f"sqla+sqlite:///{home / 'broker.db'}",
        device=env.get("TUNER_DEVICE") or None,
        kernel_modules=env.get("TUNER_KERNEL_MODULES", ""),
        strategy_modules=env.get("TUNER_STRATEGY_MODULES", ""),
        config_bundle=Path(bundle).expanduser() if bundle else None,
        fingerprint_override=env.get("TUNER_FINGERPRINT_OVERRIDE", ""),
        retune_cron=env.get("TUNER_RETUNE_CRON") or "0 3 * * *",
        retune_budget_fraction=num("TUNER_RETUNE_BUDGET_FRACTION", 0.25),
        retune_regression_threshold=num("TUNER_RETUNE_REGRESSION_THRESHOLD", 0.05),
        batch_trials=int(num("TUNER_BATCH_TRIALS", 4)),
        heartbeat_s=num("TUNER_HEARTBEAT_S", 10.0),
        worker_dead_after_s=num("TUNER_WORKER_DEAD_AFTER_S", 60.0),
        stall_s=num("TUNER_STALL_S", 120.0),
        trial_timeout_s=num("TUNER_TRIAL_TIMEOUT_S", 120.0),
        runtime_deadline_ms=num("TUNER_RUNTIME_DEADLINE_MS", 50.0, 0),
        runtime_cache_size=int(num("TUNER_RUNTIME_CACHE_SIZE", 4096, 1)),
        runtime_retry_s=num("TUNER_RUNTIME_RETRY_S", 30.0, 0),
        runtime_refresh_s=num("TUNER_RUNTIME_REFRESH_S", 600.0, 0),
        miss_flush_s=num("TUNER_MISS_FLUSH_S", 5.0, 0),
        miss_file=Path(env["TUNER_MISS_FILE"]).expanduser() if env.get("TUNER_MISS_FILE") else None,
        config_url=_url(env, "TUNER_CONFIG_URL", on_error),
        runtime_max_bundle_mb=num("TUNER_RUNTIME_MAX_BUNDLE_MB", 64.0, 0.001),
        runtime_proxy_from_env=_flag(env, "TUNER_RUNTIME_PROXY_FROM_ENV", False, on_error),
        retune_misses=_flag(env, "TUNER_RETUNE_MISSES", True, on_error),
        retune_misses_max_jobs=int(num("TUNER_RETUNE_MISSES_MAX_JOBS", 20, 0)),
        retune_misses_trials=int(num("TUNER_RETUNE_MISSES_TRIALS", 20, 1)),
        misses_keep_days=num("TUNER_MISSES_KEEP_DAYS", 30.0, 0),
        workers_keep_days=num("TUNER_WORKERS_KEEP_DAYS", 7.0, 0),
        api_token=env.get("TUNER_API_TOKEN", ""),
        runtime_token=env.get("TUNER_RUNTIME_TOKEN", ""),
        api_open_reads=_flag(env, "TUNER_API_OPEN_READS", False, on_error),
        api_allowed_hosts=_hosts(env, "TUNER_API_ALLOWED_HOSTS", on_error),
        metrics_port=_port(env, "TUNER_METRICS_PORT", on_error),
        metrics_host=(env.get("TUNER_METRICS_HOST") or "").strip() or "127.0.0.1",
        metrics_cache_s=num("TUNER_METRICS_CACHE_S", 10.0),
        device_prices=_prices(env, "TUNER_DEVICE_PRICES", on_error),
        extra={"explicit": tuple(k for k in ("TUNER_DB_URL", "TUNER_BROKER_URL") if env.get(k))},
    )


@lru_cache(maxsize=1)
def get() -> Settings:
    """The process's settings, read once."""
    return from_env()


def lenient() -> tuple[Settings, tuple[str, ...]]:
    """The process's settings as the runtime reads them: a malformed value gets its default, and
    what was wrong comes back (one message each) instead of raising into a model."""
    problems: list[str] = []
    return from_env(on_error=problems.append), tuple(problems)


def configure_plugins(settings: Settings) -> None:
    """Hand TUNER_KERNEL_MODULES and TUNER_STRATEGY_MODULES to their registries, which import the
    modules only when a name is looked up there."""
    from search import strategies
    from search_spaces import registry

    registry.configure(settings.kernel_modules)
    strategies.configure(settings.strategy_modules)
