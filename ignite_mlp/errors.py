"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """A problem with the user's input: bad option, missing data, corrupt file.

    The CLI prints its message as one line and exits with status 2, no traceback,
    so the message must name the problem *and* the fix.

    >>> str(UserError("--lr must be > 0 (got -1.0); pass a positive learning rate such as 1e-3"))
    '--lr must be > 0 (got -1.0); pass a positive learning rate such as 1e-3'
    """
