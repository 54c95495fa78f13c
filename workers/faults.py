"""Which failures are the infrastructure's (the database or the broker unreachable) rather than a
job's, and how long a worker backs off after them.

A batch that meets one is never acknowledged as done: its message goes back to the queue after a
pause that doubles with each consecutive fault (workers/tasks.py), so an outage costs time, not
messages. Anything else a batch raises is a fault of the batch, handled where it happens.
"""
from __future__ import annotations

import socket
import time
from typing import Callable, TypeVar

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
REPORT_EVERY_S = 60.0  # a process waiting for a service says so once, then this often
T = TypeVar("T")


def chain(exc: BaseException):
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

    for e in chain(exc):
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


class StillDown(RuntimeError):
    """A service did not answer within the time a process was given to wait for it."""


def wait_for_service(check: Callable[[], T], limit_s: float | None, say: Callable[[str], None],
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> T:
    """check()'s result, once it stops raising an exception whose `transient` is true (a service
    down or refusing connections: an outage, or one starting beside this process), trying again
    with Backoff's pauses; anything else it raises comes through at once. A process started
    during an outage waits for it instead of exiting, which under a supervisor is a crash loop.
    `say` hears of the wait once, then every REPORT_EVERY_S, and of its end; after `limit_s`
    (None: never) StillDown, one line with the last reason."""
    start, backoff, said = clock(), Backoff(), None
    while True:
        try:
            result = check()
        except Exception as exc:
            if not getattr(exc, "transient", False):
                raise
            reason, waited = str(exc).splitlines()[0][:300], clock() - start
            if limit_s is not None and waited >= limit_s:
                raise StillDown(f"gave up after {limit_s:g} s (--wait-for-services): {reason}") from None
            if said is None:
                until = "until it answers" if limit_s is None else f"for up to {limit_s:g} s"
                say(f"waiting: {reason}; trying again with back-off {until}")
                said = waited
            elif waited - said >= REPORT_EVERY_S:
                say(f"still waiting after {waited:.0f} s: {reason}")
                said = waited
            pause = backoff.next_s()
            sleep(pause if limit_s is None else max(0.0, min(pause, limit_s - waited)))
            continue
        if said is not None:
            say(f"answered after {clock() - start:.0f} s; starting")
        return result
