"""The one clock of the service: aware UTC datetimes. Its own module so that code that must stay
light (the bundle format, read inside model servers) can use it without importing sqlalchemy."""
from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
