"""Conversion overhead: `dwisynth.convert.convert_series` against bare dcm2niix on the same DICOM series.

Usage: .venv/bin/python bench/conversion.py [RUN_DIR] [--repeats 3] [--no-demo]
Converts, in a temp folder, series built to look like real vendor exports at their real size:
- "philips classic": 544 single-frame files (b 0 + 16 b-values x 32 slices of 112 x 112), each carrying
  kilobytes of nested private sequences of undefined length as Philips classic exports do ((2001,105F) stack
  and (2005,140F) per-image sequences, hundreds of private elements): pydicom parses such sequences in full
  whatever it is asked for, which made conversion 8.6x slower than dcm2niix on a real Philips series; once
  with 6.4 kB of private elements per file, once with 15 kB (a longer nested sequence);
- "enhanced": the same volumes as one Enhanced MR multi-frame file (Siemens XA style), when
  `dwisynth.dicom.write_enhanced_dwi_series` exists;
and, unless --no-demo, every DWI and CT series of RUN_DIR/data/demo/dicom (RUN_DIR defaults to this checkout,
after `make demo`).

Bare dcm2niix is the same binary as dwisynth's, with the options a user would give it (gzip, BIDS sidecar,
anonymized) into a scratch folder; dwisynth has it write the image uncompressed and gzips it itself beside its
checks (`dwisynth.convert.GZIP_LEVEL`). dwisynth adds what makes a conversion safe to feed the study: every
header read (modality, one series, b-values, slice spacing, tilt), value checks on the image, sidecar
de-identification, the identifier scan of every output and the atomic copy into place. Each is timed as the median of --repeats runs, the two
tools taking turns so that load from other users of the machine falls on both.
Writes bench/results/conversion.tsv (one row per series and tool) and prints the table with the ratio.
It reports; it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import dwisynth.dicom as dicom
from dwisynth.convert import convert_series, dcm2niix_binary
from dwisynth.errors import DwisynthError
from dwisynth.geometry import Grid

RESULTS = Path(__file__).resolve().parent / "results"
PHILIPS_GRID = Grid.centred((112, 112, 32), (2.0, 2.0, 2.0))
# the classic series built, by the items of their nested private sequence (see add_philips_private_sequences)
BUILT_CLASSIC = {"philips classic": 3, "philips classic, 15 kB private": 30}
PHILIPS_BVALS = [0, 50, 100, 150, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600, 2000]

# Values by VR for private elements (what they hold does not matter to either tool; how many there are does).
_VALUE_BY_VR = {"FL": 1.5, "SS": -3, "CS": "NONE", "LO": "PHILIPS MR", "IS": "3", "DS": "1.5"}
# Philips' private creators, in the slots Philips uses: (2001,0010) holds "Philips Imaging DD 001" (the b-value
# block, written by write_dwi_series), (2005,0010..0015) the MR blocks. The bulk of private elements goes to
# slots whose elements dcm2niix does not interpret ((2001,11xx), (2005,11xx)), so that made-up values cannot
# change its conversion; the sequences sit at their real tags, (2001,105F) and (2005,140F).
PHILIPS_MR_CREATORS = [f"Philips MR Imaging DD 00{n}" for n in range(1, 7)]


def _private_elements(ds: Dataset, group: int, slot: int, count: int) -> None:
    for n in range(count):
        vr = tuple(_VALUE_BY_VR)[n % len(_VALUE_BY_VR)]
        ds.add_new((group << 16) | (slot << 8) | (0x20 + n), vr, _VALUE_BY_VR[vr])


def _undefined_length(sequence_element) -> None:
    """Sequence and items of undefined length, delimited, as Philips writes them (pydicom writes lengths)."""
    sequence_element.is_undefined_length = True
    for item in sequence_element.value:
        item.is_undefined_length_sequence_item = True


def add_philips_private_sequences(ds: Dataset, nested_items: int = 3) -> None:
    """Hundreds of private elements and nested undefined-length private sequences, several kilobytes, laid out
    as in a Philips classic MR image: top-level private elements, the (2001,105F) stack sequence and the
    (2005,140F) sequence that repeats the image's acquisition attributes, with a nested sequence of
    nested_items items of 25 elements (3: 6.4 kB of private elements per file, 30: 15 kB)."""
    ds.add_new(0x20010011, "LO", "Philips Imaging DD 002")
    _private_elements(ds, 0x2001, 0x11, 90)
    for slot, creator in enumerate(PHILIPS_MR_CREATORS, 0x10):
        ds.add_new((0x2005 << 16) | slot, "LO", creator)
    _private_elements(ds, 0x2005, 0x11, 120)

    stack = Dataset()
    stack.add_new(0x20010011, "LO", "Philips Imaging DD 002")
    _private_elements(stack, 0x2001, 0x11, 40)
    ds.add_new(0x2001105F, "SQ", Sequence([stack]))
    _undefined_length(ds[0x2001105F])

    per_image = Dataset()
    for element in ds:
        if element.tag.group in (0x0018, 0x0020, 0x0028):
            per_image.add(element)
    per_image.add_new(0x20050011, "LO", PHILIPS_MR_CREATORS[1])
    _private_elements(per_image, 0x2005, 0x11, 100)
    nested = []
    for _ in range(nested_items):
        item = Dataset()
        item.add_new(0x20050011, "LO", PHILIPS_MR_CREATORS[1])
        _private_elements(item, 0x2005, 0x11, 25)
        nested.append(item)
    per_image.add_new(0x2005110F, "SQ", Sequence(nested))
    _undefined_length(per_image[0x2005110F])
    ds.add_new(0x2005140F, "SQ", Sequence([per_image]))
    _undefined_length(ds[0x2005140F])


def _volumes(grid: Grid, n_b: int) -> np.ndarray:
    """A noisy ellipsoid head (ADC 0.8e-3 mm²/s) in a background of low noise, as a scanner's magnitude images:
    how well the image compresses sets much of dcm2niix's time (its gzip), so noise everywhere would flatter
    the ratio."""
    rng = np.random.default_rng(7)
    axes = [np.linspace(-1, 1, n) for n in grid.shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2 < 1
    bvals = np.asarray(PHILIPS_BVALS[:n_b], float)[:, None, None, None]
    signal = np.where(head, 2000 * np.exp(-bvals * 0.8e-3), 0) + rng.rayleigh(12, size=(n_b, *grid.shape))
    return np.clip(np.round(signal), 0, 65535).astype(np.uint16)


def _patient() -> dicom.PatientInfo:
    return dicom.PatientInfo("Benchpatient^Ida", "BENCH0424242", "19610215", "Bench Clinic", "1 Bench Street")


def write_philips_classic_series(folder: Path, nested_items: int = 3) -> int:
    """The 544-file series; returns the bytes of private elements per file (the first file's)."""
    uids = dicom.series_uids("bench-philips", 301)
    files = dicom.write_dwi_series(folder, _volumes(PHILIPS_GRID, len(PHILIPS_BVALS)), PHILIPS_BVALS, PHILIPS_GRID,
                                   "philips", _patient(), uids, series_description="DWI_SENSE")
    before = files[0].stat().st_size
    for path in files:
        ds = pydicom.dcmread(path)
        add_philips_private_sequences(ds, nested_items)
        ds.save_as(path)
    return files[0].stat().st_size - before


def write_enhanced_series(folder: Path) -> bool:
    """The same volumes as one Enhanced MR file, each b-value with its own gradient direction (a DTI-style
    series; dcm2niix writes no .bval for an enhanced trace series here)."""
    if not hasattr(dicom, "write_enhanced_dwi_series"):
        return False
    directions = np.random.default_rng(8).normal(size=(len(PHILIPS_BVALS), 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    dicom.write_enhanced_dwi_series(folder, _volumes(PHILIPS_GRID, len(PHILIPS_BVALS)), PHILIPS_BVALS, PHILIPS_GRID,
                                    _patient(), dicom.series_uids("bench-enhanced", 302), bvecs=directions)
    return True


def _cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children (dcm2niix)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def median_of(repeats: int, *runs) -> list[tuple[float, float]]:
    """(median wall seconds, median CPU seconds) of each run, the runs taking turns. On a machine shared with
    others the wall time of a run that keeps two processes busy (dcm2niix beside the checks) suffers most: the
    CPU time says what each costs whatever the load."""
    wall, cpu = [[] for _ in runs], [[] for _ in runs]
    for _ in range(repeats):
        for run, spent, used in zip(runs, wall, cpu):
            start, start_cpu = time.perf_counter(), _cpu_seconds()
            run()
            spent.append(time.perf_counter() - start)
            used.append(_cpu_seconds() - start_cpu)
    return [(statistics.median(spent), statistics.median(used)) for spent, used in zip(wall, cpu)]


def time_series(folder: Path, scratch: Path, name: str, modality: str, repeats: int) -> list[dict]:
    def bare():
        out = scratch / "bare"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        subprocess.run([dcm2niix_binary(), "-b", "y", "-ba", "y", "-z", "y", "-f", "x", "-o", str(out),
                        str(folder)], capture_output=True, check=True)

    def ours():
        out = scratch / "ours"
        shutil.rmtree(out, ignore_errors=True)
        convert_series(folder, out, "bench", modality=modality, log=lambda *a, **k: None, source=f"{name} {modality}")

    try:
        ours()  # once untimed: a series dwisynth refuses is reported, and the caches of both tools are warm alike
    except DwisynthError as error:
        print(f"{name}: not timed, dwisynth refuses it: {error}")
        return []
    files = sorted(folder.iterdir())
    seconds = median_of(repeats, bare, ours)
    return [{"subject": name, "modality": modality, "dicom_files": len(files),
             "mb": round(sum(p.stat().st_size for p in files) / 1e6, 1), "tool": tool, "seconds": round(wall, 4),
             "cpu_seconds": round(cpu, 4)} for tool, (wall, cpu) in zip(("dcm2niix", "dwisynth"), seconds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-demo", action="store_true", help="only the built vendor series")
    args = parser.parse_args()
    demo = [] if args.no_demo else sorted(
        p for p in (args.run / "data/demo/dicom").glob("*/*/*") if p.is_dir() and p.name in ("DWI", "CT"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="dwisynth-bench-convert-") as scratch:
        scratch = Path(scratch)
        for name, nested_items in BUILT_CLASSIC.items():
            folder = scratch / f"classic-{nested_items}" / "DWI"
            private_bytes = write_philips_classic_series(folder, nested_items)
            print(f"{name}: {private_bytes} bytes of private elements per file")
            rows += time_series(folder, scratch, name, "DWI", args.repeats)
        if write_enhanced_series(scratch / "enhanced" / "DWI"):
            rows += time_series(scratch / "enhanced" / "DWI", scratch, "enhanced", "DWI", args.repeats)
        else:
            print("enhanced: not timed (dwisynth.dicom has no write_enhanced_dwi_series)")
        for folder in demo:
            rows += time_series(folder, scratch, folder.parent.name, folder.name, args.repeats)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "conversion.tsv", sep="\t", index=False)
    wide = table.pivot_table(index=["subject", "modality", "dicom_files", "mb"], columns="tool", values="seconds")
    wide["ratio"] = wide["dwisynth"] / wide["dcm2niix"]
    cpu = table.pivot_table(index=["subject", "modality", "dicom_files", "mb"], columns="tool", values="cpu_seconds")
    wide["cpu_dcm2niix"], wide["cpu_dwisynth"] = cpu["dcm2niix"], cpu["dwisynth"]
    wide["cpu_ratio"] = cpu["dwisynth"] / cpu["dcm2niix"]
    built = wide.loc[[s for s in (*BUILT_CLASSIC, "enhanced") if s in wide.index.get_level_values(0)]]
    pd.set_option("display.width", 200)
    print(built.round(3).to_string())
    if demo:
        rest = wide.drop(built.index).reset_index()
        summary = rest.groupby("modality").agg(series=("ratio", "size"), dicom_files=("dicom_files", "median"),
                                               dcm2niix_s=("dcm2niix", "median"), dwisynth_s=("dwisynth", "median"),
                                               ratio=("ratio", "median"))
        print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
