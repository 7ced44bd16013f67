"""The name the notebooks import: `from emotionlib import runner` gives the papermill pipeline
(emotionlib.pipeline) and the helpers the notebooks share (emotionlib.notebook). No code lives here."""

from .notebook import *  # noqa: F403
from .notebook import __all__ as _notebook
from .pipeline import *  # noqa: F403
from .pipeline import __all__ as _pipeline

__all__ = [*_pipeline, *(n for n in _notebook if n not in _pipeline)]
