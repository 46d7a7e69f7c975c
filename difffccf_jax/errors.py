"""The error type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a file, a folder, a config field); the message says which."""
