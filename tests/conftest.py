import pytest

from tests.services import pg_database


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
