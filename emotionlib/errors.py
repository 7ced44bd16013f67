"""Errors that the command line turns into one line and exit code 2.

Every message names the file or argument at fault and, where it can, says what to do.
"""


class EmotionLibError(Exception):
    """Base class: a user-facing problem, not a bug."""


class DataError(EmotionLibError):
    """A dataset, image, manifest or split that cannot be used."""


class ConfigError(EmotionLibError):
    """An unknown profile, variant, parameter or an impossible setting."""


class CheckpointError(EmotionLibError):
    """A checkpoint or weight file that is missing, damaged or of another model."""


class RunFolderError(EmotionLibError):
    """A run folder that would be overwritten, or that cannot be resumed."""


class TrainingError(EmotionLibError):
    """Training cannot go on (a loss that is not finite, say); the last good checkpoint is kept."""


class NotebookError(EmotionLibError):
    """A notebook of the pipeline failed; its executed copy holds the traceback."""
