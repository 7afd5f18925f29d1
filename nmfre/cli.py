"""Command line: ``nmfre demo`` and ``nmfre fit``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def _df_cap(value: str):
    if value in ("none", "None", "off"):
        return None
    if value == "auto":
        return "auto"
    return float(value)


def plot_growth(fit, path):
    """Data, fixed-effect fit and BLUP fit per unit (one panel per covariate pattern)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Y = fit.Y.to_pandas()
    fixed = fit.fitted(random=False).to_pandas()
    blup = fit.fitted(random=True).to_pandas()
    A = fit.A.to_pandas()
    x = range(Y.shape[0])
    groups = A.T.drop_duplicates()
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 4), sharey=True, squeeze=False)
    for ax, (_, pattern) in zip(axes[0], groups.iterrows(), strict=True):
        units = [u for u in Y.columns if (A[u] == pattern).all()]
        for u in units:
            ax.plot(x, Y[u], "o", color="0.6", ms=3)
            ax.plot(x, blup[u], "-", color="tab:blue", lw=0.8, alpha=0.6)
        ax.plot(x, fixed[units[0]], "-", color="tab:red", lw=2.5, label="fixed effects X Theta a")
        ax.plot([], [], "-", color="tab:blue", label="with BLUP X (Theta a + u)")
        ax.plot([], [], "o", color="0.6", label="data")
        ax.set_xticks(list(x), [str(f) for f in Y.index])
        label = ", ".join(f"{k}={v:g}" for k, v in pattern.items())
        ax.set_title(f"{label} ({len(units)} units)")
        ax.set_xlabel("feature")
    axes[0][0].set_ylabel("Y")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _demo_bayes(Y, A, fit, inf, out: Path, draws: int) -> None:
    """Bootstrap vs posterior on Orthodont, when the ``bayes`` extra is installed."""
    try:
        import bayes  # optional extra; nmfre itself never needs it
    except ImportError:
        print("\n(Install the 'bayes' extra, pip install 'nmfre[bayes]', for the bootstrap-vs-posterior comparison.)")
        return
    import matplotlib.pyplot as plt

    if draws <= 0:
        return
    kw = dict(fit=fit, num_warmup=draws, num_samples=draws, seed=0)
    cond = bayes.sample(Y, A, 1, model="conditional", **kw)
    joint = bayes.sample(Y, A, 1, model="joint", **kw)
    table = bayes.compare(inf, cond, joint)
    print("\nBootstrap vs posterior (95% intervals; NumPyro NUTS, 4 chains):")
    cols = ["estimate", "wald_low", "wald_high", "boot_low", "boot_high", "conditional_low", "conditional_high",
            "joint_low", "joint_high", "joint_width_ratio"]
    print(table[cols].round(3).to_string())
    print("joint sampler:", {k: round(v, 3) for k, v in bayes.diagnostics(joint).items()})
    table.to_csv(out / "orthodont_bayes_compare.csv")
    fig = bayes.plot_compare(inf, cond, joint)
    fig.savefig(out / "orthodont_bayes_forest.png", dpi=100)
    plt.close(fig)


def demo(out: Path, n_boot: int = 1000, seed: int = 123, bayes_draws: int = 1000) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import nmfre

    out.mkdir(parents=True, exist_ok=True)
    Y, A = nmfre.load_orthodont()
    print("Orthodont (nlme): distance (mm) at ages 8-14 for 27 children; A = intercept + male\n")
    fit = nmfre.fit(Y, A, rank=1)
    inf = fit.infer(n_boot=n_boot, seed=seed)
    print(fit.summary())
    paper = nmfre.fit(Y, A, rank=1, method="paper", df_cap="auto")
    print(f"\nPaper algorithm (df_cap='auto' chose rate {paper.df_cap_rate:g}): loglik {paper.loglik:.4f} "
          f"vs ML {fit.loglik:.4f} after {paper.n_iter} iterations")
    fit.to_netcdf(out / "orthodont_fit.nc")
    inf.to_netcdf(out / "orthodont_inference.nc")
    inf.table.to_csv(out / "orthodont_theta.csv")
    plot_growth(fit, out / "orthodont_growth.png")
    fig = inf.plot()
    fig.savefig(out / "orthodont_theta.png", dpi=110)
    plt.close(fig)
    _demo_bayes(Y, A, fit, inf, out, bayes_draws)
    print(f"\nWrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nmfre", description="NMF with random effects")
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="fit the embedded Orthodont data end to end")
    d.add_argument("--out", type=Path, default=Path("nmfre-demo"))
    d.add_argument("--n-boot", type=int, default=1000)
    d.add_argument("--bayes-draws", type=int, default=1000,
                   help="warm-up and kept draws per chain for the Bayesian comparison (0: skip)")
    f = sub.add_parser("fit", help="fit a CSV (rows features, columns units; first column labels)")
    f.add_argument("Y", type=Path)
    f.add_argument("--covariates", type=Path, help="CSV of A (rows covariates, columns units)")
    f.add_argument("--rank", type=int, required=True)
    f.add_argument("--method", choices=["ml", "paper"], default="ml")
    f.add_argument("--theta", choices=["free", "nonneg"], default=None)
    f.add_argument("--df-cap", type=_df_cap, default=None, help="none, a rate in (0, 1], or auto")
    f.add_argument("--n-init", type=int, default=1)
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--n-boot", type=int, default=0, help="bootstrap replicates for inference (0: none)")
    f.add_argument("--out", type=Path, help="write the fit as netCDF")
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        return demo(args.out, n_boot=args.n_boot, bayes_draws=args.bayes_draws)
    import nmfre

    Y = pd.read_csv(args.Y, index_col=0)
    A = pd.read_csv(args.covariates, index_col=0) if args.covariates else None
    try:
        fit = nmfre.fit(Y, A, rank=args.rank, method=args.method, theta=args.theta, df_cap=args.df_cap,
                        n_init=args.n_init, seed=args.seed)
    except (ValueError, TypeError) as e:
        print(f"nmfre fit: error: {e}", file=sys.stderr)
        return 2
    if args.n_boot:
        fit.infer(n_boot=args.n_boot, seed=args.seed if args.seed is not None else 123)
    print(fit.summary())
    if args.out:
        fit.to_netcdf(args.out)
        print(f"\nWrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
