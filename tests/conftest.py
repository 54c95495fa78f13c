import os

# The Triton interpreter is chosen when triton is first imported, and every test runs on the CPU.
# Set here, where only pytest looks, not in tests/__init__.py: a benchmark process on a GPU imports
# tests.kernels.* as kernel modules, and a package that turned the interpreter on there would run
# its GPU kernels interpreted (the GPU-only harness tests crawled past their timeouts on an H200).
os.environ.setdefault("TRITON_INTERPRET", "1")

# scripts/test runs the suite in pytest-xdist workers. Each gets a Redis server of its own, on a
# free port (started by tests/services.py as it starts a Redis that is down, stopped at the end),
# so a test that restarts "the" Redis restarts only its worker's. Databases need no such care:
# every test makes its own (tests/services.py: pg_database, scratch names; roles have unique names).
if os.environ.get("PYTEST_XDIST_WORKER") and "TUNER_TEST_REDIS_PORT" not in os.environ:
    import socket

    with socket.socket() as _s:
        _s.bind(("127.0.0.1", 0))
        os.environ["TUNER_TEST_REDIS_PORT"] = str(_s.getsockname()[1])
    _OWN_REDIS = True
else:
    _OWN_REDIS = False

import pytest  # noqa: E402

from search_spaces import registry  # noqa: E402
from tests.services import pg_database  # noqa: E402

# the test kernels, for the tests that run them in this process (what TUNER_KERNEL_MODULES does
# through tuner/settings.py for the CLI, a worker and the runtime); child processes get them in
# the harness's ping
os.environ.setdefault("TUNER_KERNEL_MODULES", "tests.kernels.trivial,tests.kernels.broken,tests.kernels.external,"
                                               "tests.kernels.tutorial,tests.kernels.tiles")
registry.configure(os.environ["TUNER_KERNEL_MODULES"])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty database of its own per test: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tuner.db"
        return
    from db.session import dispose_all

    with pg_database() as url:
        try:
            yield url
        finally:
            dispose_all()  # pooled connections would keep the database from being dropped


def pytest_sessionfinish(session):
    if _OWN_REDIS:
        from tests.services import redis_cli

        redis_cli("shutdown", "nosave")
