"""Errors a user can act on. The CLI prints them without a traceback and exits non-zero."""


class CatError(Exception):
    """Base class: something the user supplied is wrong; the message says what and where."""


class ConfigError(CatError):
    """A config file, override, template or registry name is invalid."""


class DataError(CatError):
    """A dataset file or row is missing or malformed."""


class TeacherError(CatError):
    """The anchor or judge failed in a way that must stop the run (for example unreachable)."""


class TrainingHalted(CatError):
    """Training stopped on purpose (for example too many non-finite updates in a row)."""


class CheckpointError(CatError):
    """A checkpoint could not be written, or one on disk is damaged or holds non-finite numbers."""
