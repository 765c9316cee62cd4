"""dlm: masked (absorbing-state) discrete diffusion language models, and their autoregressive twins."""

__version__ = "0.1.0"

from dlm.api import Pipeline, load  # noqa: E402
from dlm.errors import DlmError  # noqa: E402

__all__ = ["__version__", "load", "Pipeline", "DlmError"]
