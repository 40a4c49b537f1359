"""The one exception type that means "the user's input is wrong", as opposed to a bug."""


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, an unknown name, a bad config value.

    The message is one line that says what is wrong, where, and what to do. The CLI prints it without a
    traceback and exits with status 2; library callers can catch it like any exception.
    """
