"""One table of every benchmark's headline numbers, from bench/results/*.tsv (`make bench` runs it last).

Usage: .venv/bin/python bench/summary.py
Writes bench/results/summary.tsv (with the date and machine) and prints it. A benchmark that has not run
is listed as such, never filled in.
"""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def read(name: str) -> pd.DataFrame | None:
    path = RESULTS / name
    return pd.read_csv(path, sep="\t") if path.exists() else None


def preprocess(rows):
    table = read("preprocess_timing.tsv")
    for r in [] if table is None else table.to_dict("records"):
        rows.append(("preprocess", f"{r['step']}: mean s per subject / peak MB", r["seconds_mean"], r["peak_rss_mb_max"]))
    return table is not None


def conversion(rows):
    table = read("conversion.tsv")
    if table is None:
        return False
    wide = table.pivot_table(index=["subject", "modality"], columns="tool", values="seconds").reset_index()
    for modality, part in wide.groupby("modality"):
        rows.append(("conversion", f"{modality}: median s, dcm2niix / dwisynth", part["dcm2niix"].median(),
                     part["dwisynth"].median()))
    return True


def adc(rows):
    table = read("adc.tsv")
    if table is None:
        return False
    for snr, part in table.groupby("snr"):
        error = part.pivot_table(index="tissue", columns="method", values="mean_abs_error").mean()
        speed = part.groupby("method")["us_per_voxel"].first()
        rows.append(("ADC fit", f"SNR {snr:g}: mean |error| x10^-3 mm²/s, dwisynth / dipy", error["dwisynth"],
                     error["dipy"]))
        rows.append(("ADC fit", f"SNR {snr:g}: µs per voxel, dwisynth / dipy", speed["dwisynth"], speed["dipy"]))
    return True


def synthesis(rows):
    table = read("synthesis_speed.tsv")
    if table is None:
        return False
    for method, part in table.groupby("method", sort=False):
        rows.append(("networks", f"{method}: train images/s / inference ms per slice (mean over models)",
                     part["train_images_per_s"].mean(), part["infer_ms_per_slice"].mean()))
    gap = read("synthesis_gap.tsv")
    if gap is not None:
        for column in [c for c in gap.columns if c.endswith("_psnr") and not c.startswith("noisefree")]:
            rows.append(("quality", f"{column[:-5]}: volume PSNR dB (mean over organs and b) / gap to noise-free",
                         gap[column].mean(), gap.get(column.replace("_psnr", "_gap_db"), pd.Series(dtype=float)).mean()))
    return True


def quality(rows):
    table = read("quality.tsv")
    if table is None:
        return False
    for method, psnr in table.groupby("method")["psnr"].mean().items():
        rows.append(("equal wall-clock", f"{method}: test PSNR dB (mean over organs and b)", psnr, None))
    return True


def ct2dwi(rows):
    table = read("ct2dwi_lesion.tsv")
    if table is None:
        return False
    means = table.groupby(["method", "lesion_weight", "lesion_oversample"], sort=False)[["psnr", "lesion_psnr"]].mean()
    for (method, weight, oversample), r in means.iterrows():
        rows.append(("CT -> DWI folds", f"{method} lesion weight {weight:g} oversample {oversample:g}: PSNR / lesion PSNR",
                     r["psnr"], r["lesion_psnr"]))
    return True


def scale(rows):
    table = read("scale.tsv")
    if table is None:
        return False
    for (level, stage), part in table[table["level"] != "per subject"].groupby(["level", "stage"], sort=False):
        rows.append(("scale", f"{level}, {stage}: wall s (sum over organs) / peak private MB (max)",
                     part["wall_s"].sum(), part["peak_private_mb"].max()))
    return True


def viewer(rows):
    table = read("viewer.tsv")
    if table is None:
        return False
    later = table[~table["first"]]
    for organ, part in later.groupby("organ"):
        rows.append(("viewer", f"{organ}: a new b, request to loaded volume, median / max s",
                     part["latency_s"].median(), part["latency_s"].max()))
    return True


def main() -> None:
    rows: list[tuple] = []
    missing = [name for name, fill in (("bench/preprocess.py", preprocess), ("bench/conversion.py", conversion),
                                       ("bench/adc.py", adc), ("bench/synthesis.py", synthesis),
                                       ("bench/quality.py", quality), ("bench/ct2dwi_lesion.py", ct2dwi),
                                       ("bench/scale.py", scale), ("bench/viewer.py", viewer)) if not fill(rows)]
    table = pd.DataFrame(rows, columns=["benchmark", "measure", "value", "second_value"])
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"
    stamp = datetime.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    table.assign(date=stamp, machine=machine).to_csv(RESULTS / "summary.tsv", sep="\t", index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 110)
    print(f"== dwisynth benchmarks, {stamp}, {machine} ==")
    print(table.round(3).to_string(index=False))
    for name in missing:
        print(f"not run: {name} (no results in {RESULTS})")


if __name__ == "__main__":
    main()
