"""Errors a user can fix. The command line prints their message and exits non-zero without a traceback."""


class UserError(Exception):
    """Bad input or configuration: the message names the file / field / value and says what to do."""
