"""The one error type a user can cause from the CLI; its message says how to fix the input."""


class UserError(Exception):
    pass
