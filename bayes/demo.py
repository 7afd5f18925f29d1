"""The Bayesian part of ``nmfre demo`` (registered as an ``nmfre.demo`` entry point, so
nmfre calls it without importing bayes)."""

from __future__ import annotations

from pathlib import Path


def orthodont(*, Y, A, fit, inference, out: Path, draws: int) -> None:
    """Bootstrap vs conditional and joint posteriors on Orthodont: prints the table,
    writes ``orthodont_bayes_compare.csv`` and ``orthodont_bayes_forest.png``."""
    if draws <= 0:
        return
    import matplotlib.pyplot as plt

    from .compare import compare, plot_compare
    from .config import configure
    from .sampling import diagnostics, sample

    configure()  # parallel CPU chains (the demo process has not started JAX yet)
    kw = dict(fit=fit, num_warmup=draws, num_samples=draws, seed=0)
    cond = sample(Y, A, 1, model="conditional", **kw)
    joint = sample(Y, A, 1, model="joint", **kw)
    table = compare(inference, cond, joint)
    print("\nBootstrap vs posterior (95% intervals; NumPyro NUTS, 4 chains):")
    cols = ["estimate", "wald_low", "wald_high", "boot_low", "boot_high", "conditional_low", "conditional_high",
            "joint_low", "joint_high", "joint_width_ratio"]
    print(table[cols].round(3).to_string())
    print("joint sampler:", {k: round(v, 3) for k, v in diagnostics(joint).items()})
    table.to_csv(out / "orthodont_bayes_compare.csv")
    fig = plot_compare(inference, cond, joint)
    fig.savefig(out / "orthodont_bayes_forest.png", dpi=110)
    plt.close(fig)
