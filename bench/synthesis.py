"""Synthesis benchmark on a finished demo run: quality per organ and b against cDWI and the noise-free reference,
training throughput and inference time.

Usage: .venv/bin/python bench/synthesis.py [RUN_DIR]   (RUN_DIR defaults to this checkout, after `make demo`)
Reads results/tables/synthesis_metrics.tsv (volume rows) and the models; writes
bench/results/synthesis_{quality,gap,speed}.tsv and prints the tables. It reports; it asserts nothing.

Noise-free reference: the demo's noise-free truth scored against the noisy acquisition; a reference
point, not a bound (under Rician noise the MSE-optimal prediction is the Rician mean); `gap_db` is a
method's PSNR minus the reference's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dwisynth import layout
from dwisynth.inference import load_model, synthesize_slices


def quality(run: Path) -> pd.DataFrame:
    table = pd.read_csv(run / "results/tables/synthesis_metrics.tsv", sep="\t", dtype={"slice": str})
    volumes = table[table["slice"] == "volume"]
    return (volumes.groupby(["organ", "b_value", "seen", "method"])
            .agg(subjects=("psnr", "size"), psnr=("psnr", "mean"), ssim=("ssim", "mean"),
                 psnr_legacy=("psnr_legacy", "mean")).reset_index())


def gap_to_reference(table: pd.DataFrame) -> pd.DataFrame:
    wide = table.pivot_table(index=["organ", "b_value"], columns="method", values="psnr")
    out = pd.DataFrame(index=wide.index)
    for method in [m for m in wide.columns if m != "noisefree"]:
        out[f"{method}_psnr"] = wide[method]
        if "noisefree" in wide:
            out[f"{method}_gap_db"] = wide[method] - wide["noisefree"]
    if "noisefree" in wide:
        out["noisefree_psnr"] = wide["noisefree"]
    return out.reset_index()


def speed(run: Path, threads: int = 2) -> pd.DataFrame:
    torch.set_num_threads(threads)
    rows = []
    for model_path in sorted((run / "results/models").glob("*/*/model.pt")):
        model = load_model(model_path, device="cpu")
        method, organ = model.record["method"], model.record["organ"]
        log = pd.read_csv(run / layout.training_log(method, organ))
        bench = run / layout.benchmark("train", method, organ)
        wall = pd.read_csv(bench, sep="\t")["s"].iloc[0] if bench.exists() else np.nan
        cohort, subject = model.record["train_subjects"][0]
        with np.load(run / layout.shard(cohort, subject)) as data:
            grid = [float(b) for b in data["bvals"]]
            slices = data["images"][:, [grid.index(b) for b in model.input_b]]
        synthesize_slices(model, slices[:2])  # warm-up
        runs = []
        for _ in range(3):  # the fastest of three: first calls pay for allocation
            start = time.perf_counter()
            synthesize_slices(model, slices)
            runs.append(time.perf_counter() - start)
        ms = 1000 * min(runs) / len(slices)
        rows.append({"method": method, "organ": organ, "steps": int(log["step"].max()),
                     "train_images_per_s": float(log["images_per_s"].median()), "train_wall_s": wall,
                     "infer_ms_per_slice": ms, "slice_px": "x".join(map(str, slices.shape[2:])),
                     "threads": threads})
    return pd.DataFrame(rows)


def main(run: Path) -> None:
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    table = quality(run)
    gaps = gap_to_reference(table)
    speeds = speed(run)
    table.to_csv(out / "synthesis_quality.tsv", sep="\t", index=False)
    gaps.to_csv(out / "synthesis_gap.tsv", sep="\t", index=False)
    speeds.to_csv(out / "synthesis_speed.tsv", sep="\t", index=False)
    pd.set_option("display.width", 200)
    print("== PSNR (dB, data range 1 = reference robust max) per organ and b; gap = method - noise-free reference ==")
    print(gaps.round(2).to_string(index=False))
    print("\n== mean over organs, per b ==")
    print(gaps.drop(columns="organ").groupby("b_value").mean().round(2).to_string())
    print("\n== SSIM per organ and b ==")
    print(table.pivot_table(index=["organ", "b_value"], columns="method", values="ssim").round(3).to_string())
    print("\n== training throughput and inference time (this CPU) ==")
    print(speeds.round(2).to_string(index=False))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
