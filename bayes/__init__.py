"""bayes: the Bayesian twin of nmfre in NumPyro (under construction).

The models, ``bayes.sample``, ``bayes.compare`` and the plots arrive with the Bayesian
issue; this package already imports so that the distribution layout is final.
"""

import nmfre  # noqa: F401  (bayes builds on nmfre, never the reverse)

__all__: list[str] = []
