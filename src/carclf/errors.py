"""User-facing errors: each names the file or key at fault and what is wrong with it."""


class CarclfError(Exception):
    """Base class for errors that should be shown to a user as one clear line, not a traceback."""


class DataError(CarclfError):
    """A dataset cannot be read: missing file, unknown layout, malformed CSV."""


class ImageDecodeError(CarclfError):
    """One image cannot be decoded; callers report and skip it."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ModelError(CarclfError):
    """A backbone or checkpoint cannot be built or loaded."""


class ConfigError(CarclfError, ValueError):
    """A configuration value is invalid or cannot work on this machine; names the key."""
