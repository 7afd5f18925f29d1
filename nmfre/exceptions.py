"""Warnings and errors raised by nmfre (the bottom layer: imports nothing from nmfre)."""


class ConvergenceWarning(UserWarning):
    """A fit stopped before meeting its tolerance (at ``max_iter``, or stalled), or refits of
    the refit bootstrap did not converge (``fit.infer(method="refit")``)."""


class DegenerateFitWarning(ConvergenceWarning):
    """A sign-free fit is degenerate: two components merge while their effects diverge in
    opposite directions, so the likelihood has no interior maximum along the path."""


class IdentifiabilityWarning(UserWarning):
    """Some parameters are not identified by the likelihood: sigma2 and tau2 (P <= Q without a
    cap or fixed variance), or the components (:class:`NonUniqueEstimateWarning`)."""


class NonUniqueEstimateWarning(IdentifiabilityWarning):
    """The ML estimate is not unique: a rotation of the components (``X R``, ``R' Theta``, ``R``
    orthogonal with ``R 1 = 1``) keeps the bounds and the likelihood, so the components' X and
    Theta are not identified (``X Theta`` is)."""


class IllConditionedWarning(UserWarning):
    """The information for Theta is nearly singular (nearly collinear covariates, or basis
    columns nearly parallel on the observed features): its standard errors, tests and Wald
    intervals lose precision."""


class SingularFitWarning(UserWarning):
    """tau2 is estimated at 0 (lambda at its upper bound): the random effects vanish."""


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type.

    Also a ``ValueError``, so that ``except ValueError`` catches every bad argument
    (as numpy's ``AxisError`` is both a ``ValueError`` and an ``IndexError``).
    """
