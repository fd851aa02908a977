"""Errors a person can hit when loading weights; each message says what is wrong and what to do.

Every one is a :class:`CheckpointError`, so a caller (the CLI, the app) that reports
``CheckpointError`` as a one-line message covers the downloads too.
"""


class CheckpointError(ValueError):
    """The file is not a checkpoint segfpn can read, or it does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint asked to run code or build objects other than arrays: refused."""


class DownloadError(CheckpointError):
    """A checkpoint could not be fetched or is not the file it should be.

    ``url``: the address that was tried (``None`` when nothing was fetched).
    ``reason``: the short cause, without the advice that the message adds.
    """

    def __init__(self, message: str, *, url: str | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason or message


class ChecksumError(DownloadError):
    """The file's size or digest does not match the catalogue."""


class OfflineError(DownloadError):
    """The checkpoint is missing and downloads are turned off."""


class DownloadCancelled(DownloadError):
    """The download was cancelled (:meth:`segfpn.checkpoints.download.Cancellation.cancel`)."""
