"""Statistics of both papers: means with 95% CI, paired tests, Bland-Altman, ICC (pingouin), reader scores.

Conventions: confidence intervals are two-sided t-intervals over units (subjects or
readers); ICC is Shrout & Fleiss ICC2 (two-way random, absolute agreement, single
rater) unless stated, with Koo & Li's labels; Bland-Altman limits are mean
difference ± 1.96 SD of the differences. A difference test's p > 0.05 is not evidence
of agreement: equivalence is Schuirmann's TOST within a stated margin.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

# Shrout & Fleiss names -> the McGraw & Wong names pingouin 0.7 reports.
ICC_TYPES = {"ICC1": "ICC(1,1)", "ICC2": "ICC(A,1)", "ICC3": "ICC(C,1)",
             "ICC1k": "ICC(1,k)", "ICC2k": "ICC(A,k)", "ICC3k": "ICC(C,k)"}
KOO_LI = [(0.5, "poor"), (0.75, "moderate"), (0.9, "good"), (np.inf, "excellent")]


def mean_ci(values, confidence: float = 0.95) -> dict:
    """n, mean and the t-interval of the mean (NaN bounds below two values)."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    n = x.size
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "ci_low": float("nan"), "ci_high": float("nan")}
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def koo_li(icc: float) -> str:
    if not np.isfinite(icc):
        return "n/a"
    return next(label for bound, label in KOO_LI if icc < bound)


def icc(data: pd.DataFrame, targets: str, raters: str, ratings: str, kind: str = "ICC2") -> dict:
    """One ICC (kind: ICC1..ICC3k, Shrout & Fleiss) from pingouin.intraclass_corr, with its 95% CI, p and
    Koo & Li label. data is long: one row per (target, rater) rating."""
    import pingouin as pg

    table = pg.intraclass_corr(data=data, targets=targets, raters=raters, ratings=ratings, nan_policy="omit")
    row = table.set_index("Type").loc[ICC_TYPES[kind]]
    low, high = row["CI95"]
    return {"icc_type": kind, "icc": float(row["ICC"]), "icc_ci_low": float(low), "icc_ci_high": float(high),
            "icc_p": float(row["pval"]), "icc_label": koo_li(float(row["ICC"]))}


def equivalence_tost(candidate, reference, margin: float, alpha: float = 0.05) -> dict:
    """Schuirmann's two one-sided paired t-tests (pingouin.tost): the two are equivalent when the mean
    difference lies within ±margin, i.e. p_tost < alpha (the 90% CI of the difference inside the margin)."""
    import pingouin as pg

    a, b = np.asarray(candidate, float), np.asarray(reference, float)
    keep = np.isfinite(a) & np.isfinite(b)
    row = {"tost_margin": float(margin), "p_tost": float("nan"), "equivalent": False}
    if keep.sum() >= 3 and np.std(a[keep] - b[keep]) > 0:
        row["p_tost"] = float(pg.tost(a[keep], b[keep], bound=margin, paired=True)["pval"].iloc[0])
        row["equivalent"] = bool(row["p_tost"] < alpha)
    return row


def paired_agreement(candidate, reference, units=None, margin: float | None = None,
                     agreement: bool = True) -> dict:
    """Agreement of paired measurements, one pair per unit (e.g. synthetic vs acquired ADC per subject).

    Mean difference with its CI, paired t-test and Wilcoxon signed-rank p-values, and with
    `margin` the TOST equivalence test; with `agreement` also Bland-Altman limits and ICC2
    (absolute agreement), which only mean something within one population (one organ).
    Needs >= 3 pairs for the tests.
    """
    import pingouin as pg

    a, b = np.asarray(candidate, float), np.asarray(reference, float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    diff = a - b
    ci = mean_ci(diff)
    row = {"n": int(diff.size), "mean_difference": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
           "p_ttest": float("nan"), "p_wilcoxon": float("nan"), "loa_low": float("nan"), "loa_high": float("nan"),
           "icc_type": "ICC2", "icc": float("nan"), "icc_ci_low": float("nan"), "icc_ci_high": float("nan"),
           "icc_label": "n/a"}
    if margin is not None:
        row.update(equivalence_tost(a, b, margin))
    if diff.size < 3:
        return row
    sd = diff.std(ddof=1)
    if sd > 0:
        row["p_ttest"] = float(pg.ttest(a, b, paired=True)["p_val"].iloc[0])
        row["p_wilcoxon"] = float(stats.wilcoxon(a, b).pvalue)
    if not agreement:
        row["icc_label"] = "per organ only"
        return row
    row["loa_low"], row["loa_high"] = ci["mean"] - 1.96 * sd, ci["mean"] + 1.96 * sd
    ids = np.asarray(units)[keep] if units is not None else np.arange(diff.size)
    long = pd.DataFrame({"unit": np.concatenate([ids, ids]), "source": ["candidate"] * a.size + ["reference"] * b.size,
                         "value": np.concatenate([a, b])})
    try:
        row.update({k: v for k, v in icc(long, "unit", "source", "value").items() if k != "icc_p"})
    except (AssertionError, ValueError):  # pingouin refuses degenerate tables (e.g. no variance)
        pass
    return row
