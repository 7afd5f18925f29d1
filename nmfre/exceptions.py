"""Warnings raised by nmfre."""


class ConvergenceWarning(UserWarning):
    """The final fit stopped at ``max_iter`` before meeting its tolerance."""


class IdentifiabilityWarning(UserWarning):
    """sigma2 and tau2 are not separately identifiable (P <= Q without a cap or fixed variance)."""
