"""Exceptions that carry a message meant for the user, not a traceback."""


class CvpipeError(Exception):
    """Base class: the CLI prints these as one clear line and exits non-zero."""


class DataError(CvpipeError):
    """A dataset source is missing, corrupt, or not in a supported layout."""


class ChecksumError(DataError):
    """A file's checksum differs from the expected one."""


class ConfigError(CvpipeError, ValueError):
    """A configuration value is invalid (unknown option, impossible size, ...).

    Also a :class:`ValueError`, so scikit-learn (``GridSearchCV``, estimator checks) treats
    an invalid parameter the way it treats its own.
    """


class ArtifactError(CvpipeError):
    """A saved model is missing, incomplete, tampered with or of an unknown kind."""
