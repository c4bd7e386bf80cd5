"""User-facing errors.

A :class:`RaycartError` is bad input or a bad environment (a missing file, a wrong column, a
denied S3 request). The CLI prints its message as one line and exits with status 2; anything
else that escapes is a bug and keeps its traceback.
"""


class RaycartError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""


class DataError(RaycartError):
    """A data file or table is missing, malformed or has the wrong schema."""


class StorageError(RaycartError):
    """A storage location (local path or S3 URI) cannot be read or written."""
