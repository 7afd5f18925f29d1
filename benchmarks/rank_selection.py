"""Rank selection side by side: element-wise cross-validation, BIC and the LRT sequence.

Two designs with a known rank, R replicates each, candidate ranks 1..``max_rank``:

* ``baseline``: the paper's baseline (P = 4, true rank 1, N = 100, Orthodont-based truth);
* ``block_sparse``: block-sparse X (P = 12, true rank 2, N = 150, K = 2, tau2 = 4, noise 0.3).

Per replicate and criterion, the chosen rank:

* ``ecv``: :func:`nmfre.ecv` (5 folds of speckled cells), the rank with the least held-out
  mean squared error;
* ``bic``: the rank with the least ``fit.bic`` (``n_params = Q (P - 1) + Q K + 2``,
  ``n`` = observed entries);
* ``lrt``: the LRT sequence, rank r against r + 1 from r = 1 upward with
  :func:`nmfre.lrt` at level 0.05 (its chi2 reference is not valid for a rank reduction:
  this is the naive practice being measured), stopping at the first non-significant step.

Fits are ML with sign-free Theta and no cap (``theta="nonneg"`` for ranks above the truth
gives the same picture). Run: ``python benchmarks/rank_selection.py [--n-rep R] [--seed S]
[--out DIR]``; writes ``rank_selection.csv`` (one row per replicate, design and criterion).
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import nmfre

DESIGNS = {
    "baseline": (lambda seed: nmfre.simulate.baseline(N=100, seed=seed), 1),
    "block_sparse": (lambda seed: nmfre.simulate.block_sparse(P=12, N=150, rank=2, K=2, tau2=4.0, seed=seed), 2),
}


def choose(Y, A, ranks, seed: int) -> dict:
    """The rank each criterion picks on one data set (and the seconds each took)."""
    out = {}
    t = time.perf_counter()
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in ranks:
            fits[r] = nmfre.fit(Y, A, rank=r)
    t_fit = time.perf_counter() - t
    bic = {r: f.bic for r, f in fits.items()}
    out["bic"] = min(bic, key=bic.get)
    pick = ranks[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in ranks[:-1]:
            if nmfre.lrt(fits[r], fits[r + 1]).p_value >= 0.05:
                pick = r
                break
    out["lrt"] = pick
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = nmfre.ecv(Y, A, ranks=ranks, seed=seed)
    out["ecv"] = int(e.best_rank)
    out["seconds_fits"], out["seconds_ecv"] = t_fit, time.perf_counter() - t
    return out


def main(args) -> pd.DataFrame:
    rows = []
    ss = np.random.SeedSequence(args.seed)
    for (name, (design, truth)), child in zip(DESIGNS.items(), ss.spawn(len(DESIGNS)), strict=True):
        for r, rs in enumerate(child.spawn(args.n_rep)):
            d = design(np.random.default_rng(rs))
            Y, A = d["Y"], d["A"]
            ranks = list(range(1, args.max_rank + 1))
            got = choose(Y, A, ranks, int(rs.generate_state(1)[0]))
            for crit in ("ecv", "bic", "lrt"):
                rows.append(dict(design=name, replicate=r, truth=truth, criterion=crit, chosen=got[crit],
                                 seconds=got["seconds_ecv"] if crit == "ecv" else got["seconds_fits"]))
    table = pd.DataFrame(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "rank_selection.csv", index=False)
    table = table.assign(correct=table["chosen"] == table["truth"], too_small=table["chosen"] < table["truth"],
                         too_large=table["chosen"] > table["truth"])
    summary = table.groupby(["design", "criterion"])[["correct", "too_small", "too_large", "seconds"]].mean()
    print(summary.round(3).to_string())
    return summary


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-rep", type=int, default=20)
    p.add_argument("--max-rank", type=int, default=3)
    p.add_argument("--seed", type=int, default=19)
    p.add_argument("--out", default="benchmarks/results")
    main(p.parse_args())
