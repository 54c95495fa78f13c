"""Every setting of the service, typed, read once from the environment.

Nothing else in the project reads ``os.environ`` for a TUNER_ variable; the rooms below tuner/
(devices, harness, search, workers, db, search_spaces) get the values they need handed to them by
the CLI and the runtime, so that they depend on nothing of tuner/ (`configure_plugins` hands the
plug-in modules to the kernel and strategy registries).
"""
from __future__ import annotations

import os
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
    # the HTTP API and metrics (tuner/api/, workers/metrics.py)
    api_token: str = ""  # bearer token for writes (and reads from other hosts than the loopback)
    metrics_port: int | None = None  # a worker's own Prometheus metrics port; None: none served
    # device-class slug -> list price per hour, for the cost column of `tuner report compare`
    device_prices: tuple[tuple[str, float], ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def is_default_db(self) -> bool:
        return "TUNER_DB_URL" not in self.extra.get("explicit", ())


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number; unset it or give a number") from None


def _port(env: dict, name: str) -> int | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise UserError(f"{name}={raw[:40]!r} is not a TCP port; give a number from 1 to 65535 or unset it")
    return int(raw)


def _prices(env: dict, name: str) -> tuple[tuple[str, float], ...]:
    """'h100-sxm-80gb=2.99,mi300x-192gb=2.49' -> (('h100-sxm-80gb', 2.99), ...)."""
    out = []
    for part in filter(None, (p.strip() for p in (env.get(name) or "").split(","))):
        slug, _, price = part.partition("=")
        try:
            value = float(price)
        except ValueError:
            value = -1.0
        if not slug.strip() or value < 0:
            raise UserError(f"{name}: {part[:40]!r} is not SLUG=PRICE; write e.g. h100-sxm-80gb=2.99,mi300x-192gb=2.49 "
                            "(price per hour)")
        out.append((slug.strip().lower(), value))
    return tuple(out)


def from_env(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
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
        retune_budget_fraction=_float(env, "TUNER_RETUNE_BUDGET_FRACTION", 0.25),
        retune_regression_threshold=_float(env, "TUNER_RETUNE_REGRESSION_THRESHOLD", 0.05),
        batch_trials=int(_float(env, "TUNER_BATCH_TRIALS", 4)),
        heartbeat_s=_float(env, "TUNER_HEARTBEAT_S", 10.0),
        worker_dead_after_s=_float(env, "TUNER_WORKER_DEAD_AFTER_S", 60.0),
        stall_s=_float(env, "TUNER_STALL_S", 120.0),
        trial_timeout_s=_float(env, "TUNER_TRIAL_TIMEOUT_S", 120.0),
        api_token=env.get("TUNER_API_TOKEN", ""),
        metrics_port=_port(env, "TUNER_METRICS_PORT"),
        device_prices=_prices(env, "TUNER_DEVICE_PRICES"),
        extra={"explicit": tuple(k for k in ("TUNER_DB_URL", "TUNER_BROKER_URL") if env.get(k))},
    )


@lru_cache(maxsize=1)
def get() -> Settings:
    """The process's settings, read once."""
    return from_env()


def configure_plugins(settings: Settings) -> None:
    """Hand TUNER_KERNEL_MODULES and TUNER_STRATEGY_MODULES to their registries, which import the
    modules only when a name is looked up there."""
    from search import strategies
    from search_spaces import registry

    registry.configure(settings.kernel_modules)
    strategies.configure(settings.strategy_modules)
