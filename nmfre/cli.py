"""Command line: ``nmfre demo`` and ``nmfre fit``.

Every user error (missing or unreadable file, bad option value, bad data) ends in one
line on stderr and exit status 2; warnings are one line each on stderr; a pipe closed by its
reader (``| head``) ends quietly with status 141, as a shell tool's. The demo's Bayesian
part is a plugin: a package that registers an entry point in the group ``nmfre.demo``
(``bayes`` does) is called with the fit and its inference, so nmfre itself never imports
bayes.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from importlib.metadata import entry_points
from pathlib import Path

import pandas as pd

DEMO_PLUGINS = "nmfre.demo"
#: the summary's footnote on inference, as the command line offers it
CLI_INFER_HINT = "--n-boot N (N >= 2) adds standard errors, bootstrap intervals and p-values."


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _df_cap(value: str):
    if value in ("none", "None", "off"):
        return None
    if value == "auto":
        return "auto"
    try:
        rate = float(value)
    except ValueError:
        rate = float("nan")
    if not 0 < rate <= 1:
        raise argparse.ArgumentTypeError(f"must be none, auto or a rate in (0, 1], got {value!r}")
    return rate


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV with labels in its first row (units) and first column (rows); repeated labels in
    the first row are an error (pandas renames them: '20.0' and '20.0.1'), and a first row
    of non-integer numbers gets a warning (it looks like data)."""
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{what} path {path} is a directory, not a CSV file")
    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0, 1:]
        table = pd.read_csv(path, index_col=0)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {what} file {path} as CSV ({type(e).__name__}: {e})") from None
    repeated = sorted({x for x in first if (first == x).sum() > 1})
    if repeated:
        raise ValueError(f"{what} file {path}: its first row (the unit labels) repeats {repeated[:5]}; "
                         "nmfre fit reads the first row as unit labels and the first column as row labels")
    if len(first) and all(_is_fraction(x) for x in first):
        warnings.warn(f"{what} file {path}: its first row, read as unit labels, is all non-integer numbers; if "
                      "it is data, add a row of unit labels (and a first column of row labels)", UserWarning,
                      stacklevel=2)
    return table


def _is_fraction(text: str) -> bool:
    """Whether ``text`` is a number that is not an integer (as data, not labels, are)."""
    try:
        x = float(text)
    except ValueError:
        return False
    return x == x and x != int(x) if abs(x) < 1e15 else False


def demo(out: Path, n_boot: int = 1000, seed: int = 123, bayes_draws: int = 1000) -> int:
    """Orthodont end to end: ML fit, inference, paper fit, files and figures, plugins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import validation as v
    from .datasets import load_orthodont
    from .model import fit as nmfre_fit
    from .plotting import growth

    v.integer(n_boot, "--n-boot", minimum=2)  # before any work or folder
    v.integer(bayes_draws, "--bayes-draws", minimum=0)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the demo writes its results into a folder")
    out.mkdir(parents=True, exist_ok=True)
    Y, A = load_orthodont()
    print("Orthodont (nlme): distance (mm) at ages 8-14 for 27 children; A = intercept + male\n")
    fit = nmfre_fit(Y, A, rank=1)
    inf = fit.infer(n_boot=n_boot, seed=seed)
    print(fit.summary(inference=inf))
    paper = nmfre_fit(Y, A, rank=1, method="paper", df_cap="auto")
    print(f"\nPaper algorithm (df_cap='auto' chose rate {paper.df_cap_rate:g}): loglik {paper.loglik:.4f} "
          f"vs ML {fit.loglik:.4f} after {paper.n_iter} iterations")
    fit.to_netcdf(out / "orthodont_fit.nc")
    inf.to_netcdf(out / "orthodont_inference.nc")
    inf.table.to_csv(out / "orthodont_theta.csv")
    for name, fig in (("orthodont_growth.png", growth(Y, A, fit.fitted(False).to_pandas(),
                                                      fit.fitted(True).to_pandas())),
                      ("orthodont_theta.png", inf.plot())):
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    ran = 0
    for ep in entry_points(group=DEMO_PLUGINS):
        try:
            plugin = ep.load()
        except ImportError:  # registered, but its dependencies (e.g. JAX) are not installed
            continue
        plugin(Y=Y, A=A, fit=fit, inference=inf, out=out, draws=bayes_draws)
        ran += 1
    if not ran:
        print("\n(Install the 'bayes' extra, pip install 'nmfre[bayes]', for the bootstrap-vs-posterior comparison.)")
    print(f"\nWrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/")
    return 0


def _fit_command(args) -> int:
    from . import validation as v
    from .model import fit as nmfre_fit
    from .results import INFER_HINT

    # checked before the fit, not after it, and named as the command line names them
    if args.out and not args.out.resolve().parent.is_dir():
        raise ValueError(f"--out {args.out}: its folder {args.out.resolve().parent} does not exist")
    if args.out and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the path of the netCDF file to write")
    v.integer(args.rank, "--rank")
    v.integer(args.n_init, "--n-init")
    if args.seed is not None:
        v.integer(args.seed, "--seed", minimum=0)
    if args.n_boot:
        v.integer(args.n_boot, "--n-boot", minimum=2)
    if args.df_cap == "auto" and args.n_init > 1:
        raise ValueError("--n-init > 1 with --df-cap auto: the rate scan runs from one start; fit with --df-cap auto "
                         "first, then with the rate it chose and --n-init")
    Y = _read_csv(args.Y, "Y")
    A = _read_csv(args.covariates, "covariates") if args.covariates else None
    fit = nmfre_fit(Y, A, rank=args.rank, method=args.method, theta=args.theta, df_cap=args.df_cap,
                    n_init=args.n_init, seed=args.seed)
    inf = fit.infer(n_boot=args.n_boot, seed=args.seed if args.seed is not None else 123) if args.n_boot else None
    summary = fit.summary(inference=inf)
    # the summary's hint is Python's; on the command line it is an option
    summary.notes = [CLI_INFER_HINT if note == INFER_HINT else note for note in summary.notes]
    print(summary)
    if args.out:
        fit.to_netcdf(args.out)
        print(f"\nWrote {args.out}")
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``nmfre`` argument parser."""
    p = _Parser(prog="nmfre", description="NMF with random effects")
    sub = p.add_subparsers(dest="cmd", required=True)
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 on any user error)."""
    args = parser().parse_args(argv)

    def one_line(message, category, filename, lineno, file=None, line=None):  # no source line for a user
        print(f"nmfre {args.cmd}: warning: {category.__name__}: {message}", file=sys.stderr if file is None else file)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            if args.cmd == "demo":
                return demo(args.out, n_boot=args.n_boot, bayes_draws=args.bayes_draws)
            return _fit_command(args)
    except BrokenPipeError:  # the reader closed the pipe (e.g. | head): stop quietly, as a shell tool does
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # a stdout without a file (captured)
            pass
        return 141
    except (ValueError, OSError) as e:
        message = " | ".join(line for line in str(e).splitlines() if line.strip())
        print(f"nmfre {args.cmd}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
