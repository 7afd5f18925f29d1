"""nmfre: non-negative matrix factorization with random effects (NMF-RE).

``Y = X (Theta A + U) + E``: fit by maximum likelihood or the paper's algorithm, with the
paper's degrees-of-freedom cap and conditional inference on the covariate effects Theta.
Every output is labelled with xarray (dims ``feature``, ``unit``, ``component``,
``covariate``).
"""

__version__ = "0.1.0"

from . import simulate, study
from .crossval import ECVResult, ecv
from .datasets import load_orthodont
from .exceptions import ConvergenceWarning, IdentifiabilityWarning
from .inference import Inference, load_inference
from .model import df_scan, fit
from .results import NMFREFit, load

__all__ = [
    "ConvergenceWarning", "ECVResult", "IdentifiabilityWarning", "Inference", "NMFREFit", "__version__",
    "df_scan", "ecv", "fit", "load", "load_inference", "load_orthodont", "simulate", "study",
]
