"""One table of every benchmark's headline numbers, from bench/results/*.tsv (`make bench` runs it last).

Usage: .venv/bin/python bench/summary.py [--doc docs/benchmarks.md]
Writes bench/results/summary.tsv (with the date, commit and machine), prints it, and replaces the section of
docs/benchmarks.md between the markers `<!-- bench:begin -->` and `<!-- bench:end -->` with the same table
as Markdown, headed by the date, the commit and the machine (`--doc ''` leaves the document alone). A
benchmark that has not run is listed as such, never filled in.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


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


def heldout_b(rows):
    table = read("heldout_b_truth.tsv")
    if table is None:
        return False
    for b, part in table.groupby("b_value"):
        error = part[["loglinear_error", "cdwi_error"]].abs()
        rows.append(("held-out b truth", f"b {b:g}: largest |error| over demo tissues, log-linear / cDWI",
                     error["loglinear_error"].max(), error["cdwi_error"].max()))
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


def commit() -> str:
    """Short commit of this checkout, '+local changes' when tracked files differ from it (provenance.git_state)."""
    from dwisynth.provenance import git_state

    state = git_state(REPO)
    if state["dirty"] is None:
        return state["commit"]
    return state["commit"][:7] + (" +local changes" if state["dirty"] else "")


def machine() -> str:
    """CPU model, core count, GPU if torch sees one, Python."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        pass
    parts = [cpu or platform.processor() or platform.machine(), f"{os.cpu_count()} cores"]
    try:
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            parts.append(f"GPU {torch.cuda.get_device_name(0)}" + (f" x{count}" if count > 1 else ""))
        else:
            parts.append("no GPU")
    except ImportError:
        pass
    parts.append(f"{platform.python_implementation()} {platform.python_version()}")
    return ", ".join(parts)


def markdown(table: pd.DataFrame, stamp: str, commit_label: str, machine_label: str, missing: list[str]) -> str:
    """The summary as a dated Markdown table for docs/benchmarks.md."""
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, float):
            return f"{round(value, 3):g}"
        return str(value).replace("|", "\\|")

    lines = [f"### `make bench` summary, {stamp}", "",
             f"Commit {commit_label}; machine: {machine_label}. Written by `bench/summary.py`, not by hand.", ""]
    if len(table):
        lines += ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    else:
        lines.append("No benchmark results found.")
    if missing:
        lines += ["", "Not run: " + ", ".join(f"`{name}`" for name in missing) + "."]
    return "\n".join(lines)


def write_doc(block: str, doc: Path = DOC) -> bool:
    """Replace what lies between the bench markers of `doc` with `block`; False (and a note) without them."""
    text = doc.read_text() if doc.is_file() else ""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        print(f"{doc}: no {BEGIN} ... {END} section; the summary is only in {RESULTS / 'summary.tsv'}",
              file=sys.stderr)
        return False
    text = text[:start + len(BEGIN)] + "\n" + block.strip("\n") + "\n" + text[end:]
    staged = doc.with_name(doc.name + ".tmp")
    staged.write_text(text)
    os.replace(staged, doc)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--doc", default=str(DOC), help="Markdown file with the bench markers ('' for none)")
    args = parser.parse_args()
    rows: list[tuple] = []
    missing = [name for name, fill in (("bench/preprocess.py", preprocess), ("bench/conversion.py", conversion),
                                       ("bench/adc.py", adc), ("bench/synthesis.py", synthesis),
                                       ("bench/quality.py", quality), ("bench/ct2dwi_lesion.py", ct2dwi),
                                       ("bench/heldout_b_truth.py", heldout_b),
                                       ("bench/scale.py", scale), ("bench/viewer.py", viewer)) if not fill(rows)]
    table = pd.DataFrame(rows, columns=["benchmark", "measure", "value", "second_value"])
    machine_label, commit_label = machine(), commit()
    stamp = datetime.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    table.assign(date=stamp, commit=commit_label, machine=machine_label).to_csv(RESULTS / "summary.tsv", sep="\t",
                                                                               index=False)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 110)
    print(f"== dwisynth benchmarks, {stamp}, {commit_label}, {machine_label} ==")
    print(table.round(3).to_string(index=False))
    for name in missing:
        print(f"not run: {name} (no results in {RESULTS})")
    if args.doc and write_doc(markdown(table, stamp, commit_label, machine_label, missing), Path(args.doc)):
        print(f"summary written into {args.doc}")


if __name__ == "__main__":
    main()
