"""Conversion overhead: `dwisynth.convert.convert_series` against bare dcm2niix on the same DICOM series.

Usage: .venv/bin/python bench/conversion.py [RUN_DIR] [--repeats 3]
       (RUN_DIR defaults to this checkout, after `make demo`: its data/demo/dicom series are converted)
Writes bench/results/conversion.tsv (one row per series and tool) and prints the summary per modality.
It reports; it asserts nothing about speed.

Bare dcm2niix is the same binary with the same options (gzip, BIDS sidecar, anonymized) into a scratch
folder. dwisynth adds what makes a conversion safe to feed the study: every header read (modality, one
series, b-values, slice spacing, tilt), value checks on the image, sidecar de-identification, the identifier
scan of every output and the atomic copy into place. Each is timed as the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

from dwisynth.convert import convert_series, dcm2niix_binary

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    series = sorted(p for p in (args.run / "data/demo/dicom").glob("*/*/*") if p.is_dir() and p.name in ("DWI", "CT"))
    if not series:
        raise SystemExit(f"no DICOM series under {args.run / 'data/demo/dicom'}: run `make demo` first")
    rows = []
    with tempfile.TemporaryDirectory(prefix="dwisynth-bench-convert-") as scratch:
        scratch = Path(scratch)
        for folder in series:
            subject, modality = folder.parent.name, folder.name
            n_files = sum(1 for _ in folder.iterdir())

            def bare():
                out = scratch / "bare"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                subprocess.run([dcm2niix_binary(), "-b", "y", "-ba", "y", "-z", "y", "-f", "x", "-o", str(out),
                                str(folder)], capture_output=True, check=True)

            def ours():
                out = scratch / "ours"
                shutil.rmtree(out, ignore_errors=True)
                convert_series(folder, out, "bench", modality=modality, log=lambda *a, **k: None,
                               source=f"{subject} {modality}")

            for tool, run in (("dcm2niix", bare), ("dwisynth", ours)):
                rows.append({"subject": subject, "modality": modality, "dicom_files": n_files, "tool": tool,
                             "seconds": round(best_of(args.repeats, run), 4)})
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "conversion.tsv", sep="\t", index=False)
    wide = table.pivot_table(index=["subject", "modality", "dicom_files"], columns="tool", values="seconds")
    wide["overhead_s"] = wide["dwisynth"] - wide["dcm2niix"]
    wide["ratio"] = wide["dwisynth"] / wide["dcm2niix"]
    summary = wide.reset_index().groupby("modality").agg(
        series=("ratio", "size"), dicom_files=("dicom_files", "median"), dcm2niix_s=("dcm2niix", "median"),
        dwisynth_s=("dwisynth", "median"), overhead_s=("overhead_s", "median"), ratio=("ratio", "median"))
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
