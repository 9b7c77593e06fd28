"""Reader study support: a blinded reading set, a ratings template, and the scores of returned ratings.

The reading set holds PNG slices of acquired and synthetic images at each b-value,
shuffled with the study seed and named case-001.png, ...; what each case is (subject,
method, b) goes to a key file kept outside the folder handed to readers. Readers
return a TSV with columns reader, image, score (Likert 1-5, 5 = excellent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dwisynth.errors import DwisynthError

EXCELLENT = 5
KEY_COLUMNS = ["image", "cohort", "subject", "organ", "method", "b_value", "seen", "slice"]


class RatingsError(DwisynthError):
    """A ratings file cannot be scored."""


def export_reading_set(cases: list[dict], images_dir, key_path, template_path, seed: int,
                       readers: int = 2) -> pd.DataFrame:
    """Write shuffled PNGs, the key and a ratings template; returns the key.

    cases: dicts with the KEY_COLUMNS (except image), `image_array` (2D) and `window`
    (display maximum, the acquired image's robust max, shared by real and synthetic so
    brightness gives nothing away).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images_dir, key_path = Path(images_dir), Path(key_path)
    if key_path.resolve().parent == images_dir.resolve() or images_dir.resolve() in key_path.resolve().parents:
        raise RatingsError(f"{key_path}: the key must live outside the reading folder {images_dir}")
    images_dir.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(cases))
    rows = []
    for number, index in enumerate(order, 1):
        case = cases[index]
        name = f"case-{number:03d}.png"
        plt.imsave(images_dir / name, np.rot90(case["image_array"]), cmap="gray", vmin=0, vmax=case["window"])
        rows.append({"image": name, **{k: case[k] for k in KEY_COLUMNS if k != "image"}})
    key = pd.DataFrame(rows, columns=KEY_COLUMNS)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key.to_csv(key_path, sep="\t", index=False)
    template = pd.DataFrame([{"reader": f"reader{r + 1}", "image": name, "score": ""}
                             for r in range(readers) for name in key["image"]])
    template.to_csv(template_path, sep="\t", index=False)
    return key


def read_ratings(path, key: pd.DataFrame) -> pd.DataFrame:
    """Ratings TSV checked against the key: known images, integer scores 1-5, one score per reader and image."""
    path = Path(path)
    try:
        ratings = pd.read_csv(path, sep="\t")
    except (OSError, ValueError) as exc:  # pandas' empty-file and parser errors, a spreadsheet's bytes: ValueErrors
        raise RatingsError(f"{path}: cannot read the ratings ({type(exc).__name__}: {exc}); expected a tab-separated "
                           "text file with the columns reader, image, score, as ratings_template.tsv (save a "
                           "spreadsheet as tab-separated text, not .xlsx)") from exc
    missing = {"reader", "image", "score"} - set(ratings.columns)
    if missing:
        raise RatingsError(f"{path}: missing column(s) {sorted(missing)}; start from ratings_template.tsv")
    ratings = ratings.dropna(subset=["score"])
    unknown = sorted(set(ratings["image"]) - set(key["image"]))
    if unknown:
        raise RatingsError(f"{path}: images not in the reading set: {unknown[:5]}")
    scores = pd.to_numeric(ratings["score"], errors="coerce")
    bad = ratings[~scores.isin([1, 2, 3, 4, 5])]
    if len(bad):
        raise RatingsError(f"{path}: scores must be integers 1-5; row(s) {list(bad.index[:5] + 2)} are not")
    ratings = ratings.assign(score=scores.astype(int))
    if ratings.duplicated(["reader", "image"]).any():
        raise RatingsError(f"{path}: a reader scored the same image twice")
    return ratings


def score_ratings(ratings: pd.DataFrame, key: pd.DataFrame) -> pd.DataFrame:
    """Per method and b: images, readers, mean score, % rated excellent, and inter-reader ICC2 / ICC2k."""
    from dwisynth.statistics import icc

    data = ratings.merge(key, on="image")
    rows = []
    for (method, b, seen), table in data.groupby(["method", "b_value", "seen"]):
        row = {"method": method, "b_value": b, "seen": seen, "images": table["image"].nunique(),
               "readers": table["reader"].nunique(), "mean_score": table["score"].mean(),
               "percent_excellent": 100.0 * (table["score"] >= EXCELLENT).mean()}
        for kind in ("ICC2", "ICC2k"):
            if row["readers"] < 2 or row["images"] < 2:  # an ICC needs two of each; anything else is an error
                row[kind.lower()], row[f"{kind.lower()}_label"] = float("nan"), "n/a (fewer than 2 readers or images)"
                continue
            result = icc(table, "image", "reader", "score", kind)
            row[kind.lower()] = result["icc"]
            row[f"{kind.lower()}_label"] = result["icc_label"]
        rows.append(row)
    return pd.DataFrame(rows)


def reading_cases(records: list[dict], methods, score_b, heldout=()) -> list[dict]:
    """Cases from each test subject's middle organ slice: the acquired image and each method's, at every
    b in score_b that both hold (records as for `dwisynth.evaluate.evaluate_multib`)."""
    from dwisynth.evaluate import seen_label
    from dwisynth.io import load_dwi, load_mask

    cases = []
    for record in records:
        acquired, acquired_b = load_dwi(*record["acquired"])
        mask = load_mask(record["mask"])
        z = int(np.argmax(mask.reshape(-1, mask.shape[-1]).sum(0)))
        acq_b = [float(b) for b in acquired_b]
        sources = {"acquired": (acquired, acq_b)}
        for method in methods:
            if method in record["synth"]:
                pred, pred_b = load_dwi(*record["synth"][method][:2])
                sources[method] = (pred, [float(b) for b in pred_b])
        for b in (float(x) for x in score_b):
            if b not in acq_b:
                continue
            reference = acquired[:, :, z, acq_b.index(b)]
            window = float(np.percentile(reference[mask[:, :, z]], 99.5)) or 1.0
            for source, (image, bvals) in sources.items():
                if b in bvals:
                    cases.append({"cohort": record["cohort"], "subject": record["subject"], "organ": record["organ"],
                                  "method": source, "b_value": b, "seen": seen_label(b, heldout), "slice": z,
                                  "image_array": image[:, :, z, bvals.index(b)], "window": window})
    return cases
