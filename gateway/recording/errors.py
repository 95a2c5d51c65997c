"""The recording modules' one error type, at the bottom so every one of them can raise it."""


class RecordingError(Exception):
    """A recording file is not what it should be, or an operation on it is not allowed."""
