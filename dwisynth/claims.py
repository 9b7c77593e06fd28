"""The study's claims, each tested against its strongest baseline: `results/tables/claims.tsv`.

A claim is a method against one or more baselines on a task; where several baselines qualify, the
strongest one on the same subjects and metric is the one tested (MineGAN against the better of
DC²Anet's log-linear interpolation and cDWI at each held-out b). The unit is the test subject (never a
slice or a b-value): one value per subject, the method's minus the baseline's, with the paired t-test and
the t-interval 95% CI of the mean difference (a bootstrap is degenerate at a handful of subjects). The
p-values are Holm-corrected across every row of one reference (acquisition-referenced rows together;
truth-referenced rows, where a truth exists, together). A row with fewer than `MIN_SUBJECTS` subjects is
underpowered and never called a win, whatever its p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_SUBJECTS = 6  # fewer paired test subjects: underpowered, never a win
ALPHA = 0.05
CLAIMS_COLUMNS = ["claim", "task", "reference", "metric", "b_value", "method", "baseline", "baselines_considered",
                  "n_subjects", "method_mean", "baseline_mean", "mean_difference", "ci_low", "ci_high", "p", "p_holm",
                  "underpowered", "verdict"]
# +1: higher is better; -1: lower is better (an error)
DIRECTION = {"psnr": 1, "ssim": 1, "lesion_psnr": 1, "infarct_contrast_error": -1}


@dataclass(frozen=True)
class Claim:
    text: str
    task: str
    method: str
    baselines: tuple[str, ...]
    bvalues: str  # "trained", "heldout" or "any": which b-values (the tables' `seen`) the claim is about
    metrics: tuple[str, ...] = ("psnr", "ssim")


CLAIMS = (
    Claim("DC²Anet synthesizes the trained b-values better than pix2pix", "multib", "dc2anet", ("pix2pix",),
          "trained"),
    Claim("MineGAN synthesizes never-trained b-values better than interpolation", "multib", "minegan",
          ("dc2anetinterp", "cdwi"), "heldout"),
    Claim("Few-shot mining improves on zero-shot MineGAN", "multib", "mineganfewshot", ("minegan",), "heldout"),
    Claim("JMMDA-GAN synthesizes DWI from CT better than pix2pix and U-Net", "ct2dwi", "jmmdagan",
          ("pix2pix", "unet"), "any", ("psnr", "ssim", "lesion_psnr", "infarct_contrast_error")),
)


def subject_values(metrics: pd.DataFrame | None, truth_metrics: pd.DataFrame | None = None,
                   ct2dwi_truth: pd.DataFrame | None = None, ct2dwi_contrast: pd.DataFrame | None = None
                   ) -> pd.DataFrame:
    """Long table of one value per (reference, task, method, cohort, subject, b_value, seen, metric).

    metrics: synthesis_metrics.tsv (its volume rows: acquisition-referenced; CT -> DWI rows bring lesion PSNR and
    the infarct's contrast error |conspicuity against the acquisition - 1|); truth_metrics.tsv and the CT -> DWI
    truth tables: the same against the noise-free truth (conspicuity C / C_truth from lesion_contrast.tsv)."""
    keys = ["task", "method", "cohort", "subject", "b_value", "seen"]
    frames = []

    def add(table, reference, columns):
        if table is None or not len(table):
            return
        table = table.copy()
        for name, source in columns.items():
            if source in table:
                frame = table[keys].assign(reference=reference, metric=name, value=pd.to_numeric(table[source],
                                                                                                  errors="coerce"))
                frames.append(frame)

    if metrics is not None and len(metrics):
        volumes = metrics[metrics["slice"].astype(str) == "volume"].copy()
        if "lesion_conspicuity_vs_acquired" in volumes:
            volumes["infarct_contrast_error"] = (volumes["lesion_conspicuity_vs_acquired"] - 1).abs()
        multib, ct = volumes[volumes["task"] == "multib"], volumes[volumes["task"] == "ct2dwi"]
        add(multib, "acquisition", {"psnr": "psnr", "ssim": "ssim"})
        add(ct, "acquisition", {"psnr": "psnr", "ssim": "ssim", "lesion_psnr": "lesion_psnr",
                                "infarct_contrast_error": "infarct_contrast_error"})
    add(truth_metrics, "truth", {"psnr": "psnr", "ssim": "ssim"})
    add(ct2dwi_truth, "truth", {"psnr": "psnr", "ssim": "ssim"})
    if ct2dwi_contrast is not None and len(ct2dwi_contrast):
        per_lesion = ct2dwi_contrast.assign(infarct_contrast_error=(ct2dwi_contrast["conspicuity"] - 1).abs())
        per_subject = per_lesion.groupby(keys, as_index=False)["infarct_contrast_error"].mean()
        add(per_subject, "truth", {"infarct_contrast_error": "infarct_contrast_error"})
    if not frames:
        return pd.DataFrame(columns=keys + ["reference", "metric", "value"])
    values = pd.concat(frames, ignore_index=True)
    # one value per subject: a subject's rows for one b (e.g. lesion labels) are averaged
    return values.groupby(["reference", "metric"] + keys, as_index=False)["value"].mean()


def _paired(values: pd.DataFrame, method: str, baseline: str) -> pd.DataFrame:
    units = ["cohort", "subject"]
    a = values[values["method"] == method].set_index(units)["value"]
    b = values[values["method"] == baseline].set_index(units)["value"]
    pairs = pd.concat([a.rename("method"), b.rename("baseline")], axis=1, join="inner").dropna()
    return pairs


def _test(pairs: pd.DataFrame) -> dict:
    from scipy import stats

    from dwisynth.statistics import mean_ci

    diff = (pairs["method"] - pairs["baseline"]).to_numpy(float)
    ci = mean_ci(diff)
    p = float("nan")
    if diff.size >= 2 and np.std(diff) > 1e-12:  # identical values: no test (scipy would warn and guess)
        p = float(stats.ttest_rel(pairs["method"], pairs["baseline"]).pvalue)
    return {"n_subjects": int(diff.size), "method_mean": float(pairs["method"].mean()),
            "baseline_mean": float(pairs["baseline"].mean()), "mean_difference": ci["mean"],
            "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "p": p}


def claims_table(metrics: pd.DataFrame | None, truth_metrics: pd.DataFrame | None = None,
                 ct2dwi_truth: pd.DataFrame | None = None, ct2dwi_contrast: pd.DataFrame | None = None,
                 claims=CLAIMS, min_subjects: int = MIN_SUBJECTS, floor_limited_b=()) -> pd.DataFrame:
    """claims.tsv: for each claim, reference, metric and b-value (the claim's `bvalues` of the tables' `seen`),
    the method against its strongest baseline on the subjects that have both (n: the test subjects that have that
    b), with the mean difference (method - baseline), its 95% CI, p, Holm's p and the verdict: "better" or
    "worse" (Holm's p < 0.05 in the metric's direction), "no difference shown", or "underpowered" (n below
    `min_subjects`: never a win), or "floor-limited" (acquisition-referenced at a b in `floor_limited_b`, the
    held-out b beyond every trained b: there the acquisition nears the Rician noise floor, and a method could win
    by predicting the floor; the truth-referenced rows judge). A claim whose method is not in the tables has no
    rows."""
    import pingouin as pg

    values = subject_values(metrics, truth_metrics, ct2dwi_truth, ct2dwi_contrast)
    rows = []
    for claim in claims:
        mine = values[(values["task"] == claim.task) & (values["metric"].isin(claim.metrics))]
        if claim.bvalues != "any":
            mine = mine[mine["seen"] == claim.bvalues]
        for (reference, metric, b), group in mine.groupby(["reference", "metric", "b_value"]):
            if claim.method not in set(group["method"]):
                continue
            candidates = {}
            for baseline in claim.baselines:
                pairs = _paired(group, claim.method, baseline)
                if len(pairs):
                    candidates[baseline] = pairs
            if not candidates:
                continue
            # the strongest baseline on these subjects: the best mean in the metric's direction
            strongest = max(candidates, key=lambda k: DIRECTION[metric] * candidates[k]["baseline"].mean())
            rows.append({"claim": claim.text, "task": claim.task, "reference": reference, "metric": metric,
                         "b_value": float(b), "method": claim.method, "baseline": strongest,
                         "baselines_considered": ",".join(claim.baselines), **_test(candidates[strongest])})
    table = pd.DataFrame(rows).reindex(columns=CLAIMS_COLUMNS)
    if table.empty:
        return table
    for reference, index in table.groupby("reference").groups.items():
        table.loc[index, "p_holm"] = pg.multicomp(table.loc[index, "p"].to_numpy(float), method="holm")[1]
    table["underpowered"] = table["n_subjects"] < min_subjects
    direction = table["metric"].map(DIRECTION)
    significant = table["p_holm"] < ALPHA
    table["verdict"] = np.select(
        [table["underpowered"], significant & (direction * table["mean_difference"] > 0),
         significant & (direction * table["mean_difference"] < 0)],
        ["underpowered", "better", "worse"], "no difference shown")
    floor = (table["reference"] == "acquisition") & table["b_value"].isin([float(b) for b in floor_limited_b])
    table.loc[floor, "verdict"] = "floor-limited"
    return table


def floor_limited_bvalues(bvalues: dict) -> list[float]:
    """The held-out b-values beyond every trained b (`evaluate.heldout_regime`'s extrapolation), where an
    acquisition-referenced score is not judged."""
    from dwisynth.evaluate import heldout_regime

    return [float(b) for b in bvalues.get("heldout", ())
            if heldout_regime(b, bvalues["inputs"], bvalues["targets"])["regime"] == "extrapolation"]
