"""Errors a user can cause and fix. The CLI prints their message as one line and exits non-zero."""


class RetrvError(Exception):
    """Base class: the message is complete and meant for a person."""


class IndexNotFoundError(RetrvError):
    pass


class EncoderMismatchError(RetrvError):
    pass


class ModelLoadError(RetrvError):
    pass


class DataError(RetrvError):
    """Bad dataset content: the message names the file and line."""
