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


def utf8_text(data: bytes, what: str, *, error: type[CatError] = ConfigError, fix: str = "save it as UTF-8") -> str:
    """``data`` decoded as UTF-8, or ``error`` naming ``what`` and where the first bad byte is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(f"{what} is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); {fix}") from None
