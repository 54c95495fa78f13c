"""Which failures are the infrastructure's (the database or the broker unreachable) rather than a
job's, and how long a worker backs off after them.

A batch that meets one is never acknowledged as done: its message goes back to the queue after a
pause that doubles with each consecutive fault (workers/tasks.py), so an outage costs time, not
messages. Anything else a batch raises is a fault of the batch, handled where it happens.
"""
from __future__ import annotations

import socket

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def infrastructure(exc: BaseException) -> bool:
    """True when exc (or what caused it: Optuna and kombu wrap the driver's errors) says that the
    database or the broker cannot be reached or dropped the connection."""
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, InterfaceError
    from sqlalchemy.exc import OperationalError as DatabaseOperationalError

    for e in _chain(exc):
        if isinstance(e, (DatabaseOperationalError, InterfaceError, BrokerError, RedisConnectionError,
                          RedisTimeoutError, ConnectionError, TimeoutError, socket.timeout)):
            return True
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
    return False


class Backoff:
    """The pause before a message goes back after an infrastructure fault: 1 s, doubling up to
    30 s with each consecutive one, back to 1 s after a batch that succeeds."""

    def __init__(self, first_s: float = BACKOFF_FIRST_S, max_s: float = BACKOFF_MAX_S):
        self.first_s, self.max_s, self.faults = first_s, max_s, 0

    def next_s(self) -> float:
        self.faults += 1
        return min(self.max_s, self.first_s * 2 ** (self.faults - 1))

    def reset(self) -> None:
        self.faults = 0
