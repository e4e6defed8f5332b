"""User-facing errors: the CLI prints their one-line message and exits with code 2."""


class UserError(Exception):
    """A problem with the user's input that they can fix; the message names the problem and the fix."""
