"""The errors a user can cause; each message says how to fix the input.

The CLI prints any UserError as one line and exits 2. The HTTP API (tuner/api/errors.py) also
reads the kind: what names nothing is 404, what the current state forbids 409, and a database or
broker that cannot be reached 503; a tuning request that no job may hold 422, as a body that does
not fit the API's schema is (the three doors of a request answer alike); any other UserError is bad
input, 400.
"""


class UserError(Exception):
    pass


class NotFound(UserError):
    """The input names something that does not exist (a job id)."""


class Conflict(UserError):
    """The input is well formed but the thing's current state forbids it (cancel a finished job)."""


class InvalidRequest(UserError):
    """A tuning request's fields hold a value no job may have (tuner/request_fields.py)."""


class Unavailable(UserError):
    """The database or the broker cannot be used as configured: not the caller's input."""
