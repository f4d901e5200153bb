"""Errors a user can act on.

Every error raised on bad user input derives from :class:`UdaReidError`, so the CLI can print the
message (which names the file, key or option and what was expected) instead of a traceback.
"""


class UdaReidError(Exception):
    """Base class for errors caused by user input (files, options, recipes)."""


class UnknownNameError(UdaReidError, KeyError):
    """A registry lookup with a name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class DatasetLayoutError(UdaReidError):
    """A dataset folder, split or file name does not follow the expected layout."""


class ImageReadError(UdaReidError):
    """An image file cannot be decoded."""


class CheckpointError(UdaReidError):
    """A checkpoint file is missing, unsafe, or does not fit the model."""


class ConfigError(UdaReidError):
    """A recipe or command-line option has an unknown key or an invalid value."""


class TrainingDivergedError(UdaReidError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
