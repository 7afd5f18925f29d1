"""nmfre: non-negative matrix factorization with random effects (NMF-RE).

``Y = X (Theta A + U) + E``: fit by maximum likelihood or the paper's algorithm, with the
paper's degrees-of-freedom cap and conditional inference on the covariate effects Theta.
Every output is labelled with xarray (dims ``feature``, ``unit``, ``component``,
``covariate``).

Layers, each importing only from those below it (checked by import-linter in CI):
public functions and the command line (:mod:`~nmfre.cli`, :mod:`~nmfre.study`,
:mod:`~nmfre.crossval`, :mod:`~nmfre.model`), labelled results
(:mod:`~nmfre.results`, :mod:`~nmfre.inference`, :mod:`~nmfre.plotting`), the engine
(:mod:`~nmfre.engine`), numerical kernels (:mod:`nmfre.core`), and input handling
(:mod:`~nmfre.labels`, :mod:`~nmfre.settings`, :mod:`~nmfre.validation`).
"""

from . import simulate, study
from ._version import __version__
from .crossval import ECVResult, ecv
from .datasets import load_orthodont
from .exceptions import (
    ArgumentTypeError,
    ConvergenceWarning,
    DegenerateFitWarning,
    IdentifiabilityWarning,
    IllConditionedWarning,
    NonUniqueEstimateWarning,
    SingularFitWarning,
)
from .inference import Inference, load_inference
from .labels import from_long
from .likelihood_tests import LRTResult, lrt, lrt_tau2
from .model import df_scan, fit
from .results import NMFREFit, load

__all__ = [
    "ArgumentTypeError", "ConvergenceWarning", "DegenerateFitWarning", "ECVResult", "IdentifiabilityWarning",
    "IllConditionedWarning",
    "Inference", "LRTResult", "NMFREFit", "NonUniqueEstimateWarning",
    "SingularFitWarning", "__version__", "df_scan", "ecv", "fit", "from_long", "load", "load_inference",
    "load_orthodont", "lrt", "lrt_tau2", "simulate", "study",
]
