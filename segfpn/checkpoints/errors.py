"""Errors a person can hit when loading weights; each message says what is wrong and what to do."""


class CheckpointError(ValueError):
    """The file is not a checkpoint segfpn can read, or it does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint asked to run code or build objects other than arrays: refused."""
