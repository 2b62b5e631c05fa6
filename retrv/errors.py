"""Errors a user can cause and fix: every one retrv raises for bad input, in one place.

The CLI prints the message of a `RetrvError` as one line (`retrv: error: ...`) and exits 1; any other
exception is a bug and keeps its traceback. Errors about a bad argument are also `ValueError`s, so library
callers that catch those keep working.
"""


class RetrvError(Exception):
    """Base class: the message is complete and meant for a person. `setting`, where given, names the setting
    (a `config.Settings` field) the error is about, so that a caller who knows where its value came from (a
    variable, a config-file line) can say so."""

    def __init__(self, *args: object, setting: str | None = None) -> None:
        super().__init__(*args)
        self.setting = setting


class UsageError(RetrvError, ValueError):
    """A bad argument, flag or setting value; the message names it."""


class ConfigError(UsageError):
    """A bad value in the config file or a RETRV_* variable; the message names the file or variable."""


class TrainConfigError(UsageError):
    """A training config value that cannot work; the message names the flag."""


class DeviceError(UsageError):
    """A device that does not exist or is not available here."""


class IndexNotFoundError(RetrvError):
    pass


class IndexSchemaError(RetrvError):
    """An index this retrv cannot read (a newer schema, a damaged `retrv.json` or table)."""


class IndexDamagedError(RetrvError):
    """Files of an index's tables are truncated or missing; the message names them and says how to repair."""


class DiskFullError(RetrvError):
    """No space left where the index is written; what was committed before stays readable."""


class IndexBusyError(RetrvError):
    """Another process is writing the index (a build), and this operation must not run beside it."""


class EncoderMismatchError(RetrvError):
    pass


class ScanError(RetrvError):
    """A path given to scan does not exist."""


class ModelLoadError(RetrvError):
    pass


class ModelNotCachedError(ModelLoadError):
    """A Hugging Face id that is not in the cache and cannot be downloaded now; `why` says which."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class DataError(RetrvError):
    """Bad dataset content: the message names the file and line."""


class FeatureError(RetrvError):
    """A candidate or query could not be turned into reasoner tokens (e.g. an unreadable image)."""


class ScoreError(RetrvError):
    """Score mode cannot judge this query (e.g. an image query for a reasoner without an image processor)."""


class CompressError(RetrvError):
    """`retrv compress` cannot run with this reasoner."""


class NotServedError(RetrvError):
    """`retrv serve`: a request names an index the server does not serve, or an item none of them holds."""


class ServerBusyError(RetrvError):
    """`retrv serve`: the reasoner's queue is full; the client may try again later."""


class RequestLimitError(RetrvError):
    """`retrv serve`: a request over one of the server's limits (query length, number of terms, k)."""


class RequestTooLargeError(RequestLimitError):
    """`retrv serve`: a request body or an uploaded image over the server's limit."""


class RequestTimeoutError(RequestLimitError):
    """`retrv serve`: a request that took longer than the server allows."""


class ServerUnreachableError(RetrvError):
    """`retrv search --server URL`: nothing answers at URL, or not in time."""
