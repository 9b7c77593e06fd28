"""Compare two runs of the study: every table and every model, for reviewers who rerun it from a clean clone.

Tables (`results/tables/**/*.tsv`, the split, the reader study, the input checksums) must hold the same rows and columns; text cells
must be equal, numbers equal within `rtol` (0: bit-identical, which the same code, config, data and CPU type
give: training is deterministic on the CPU). Models (`results/models/**/model.pt`) compare by a checksum of
their weights and of what the record says about them (fingerprint, exported step), not by file bytes.
Columns that hold wall time or throughput differ between any two runs by nature; they are listed apart and
never compared.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TABLE_GLOBS = ("*.tsv", "tables/**/*.tsv", "datasets/*.tsv", "reader_study/**/*.tsv", "provenance/*.tsv")
MODEL_GLOB = "models/**/model.pt"
# columns measured in seconds or images per second: machine load moves them, nothing else
TIMING_COLUMNS = {"train_seconds", "step_loop_seconds", "seconds", "images_per_s", "s", "wall_s"}
MODEL_FIELDS = ("fingerprint", "selected_step", "trained_steps", "validation_psnr", "validation_score",
                "warm_started_from", "stopped_early", "method", "task", "organ", "target_b", "input_b")


@dataclass
class Difference:
    path: str  # relative to the results folder
    what: str


def model_checksum(path: Path) -> str:
    """SHA-256 over the exported weights (sorted by name) and the record fields that describe them."""
    import torch

    record = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for name in sorted(record["state_dict"]):
        tensor = record["state_dict"][name].contiguous()
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(tensor.numpy().tobytes())
    for key in MODEL_FIELDS:
        h.update(f"{key}={record.get(key)!r};".encode())
    return h.hexdigest()


def compare_tables(reference: Path, rerun: Path, rtol: float = 0.0) -> list[str]:
    """What differs between two TSV tables (empty: the same)."""
    a = pd.read_csv(reference, sep="\t", dtype=str, keep_default_na=False)
    b = pd.read_csv(rerun, sep="\t", dtype=str, keep_default_na=False)
    if list(a.columns) != list(b.columns):
        return [f"columns differ: {sorted(set(a.columns) ^ set(b.columns)) or 'order'}"]
    if len(a) != len(b):
        return [f"{len(a)} rows here, {len(b)} in the rerun"]
    out = []
    for column in a.columns:
        if column in TIMING_COLUMNS:
            continue
        x, y = a[column], b[column]
        if (x == y).all():
            continue
        xn, yn = pd.to_numeric(x, errors="coerce"), pd.to_numeric(y, errors="coerce")
        numeric = xn.notna() & yn.notna()
        text_differs = (~numeric & (x != y)).sum()
        close = np.isclose(xn[numeric], yn[numeric], rtol=rtol, atol=0.0, equal_nan=True)
        if text_differs:
            row = int(np.flatnonzero((~numeric & (x != y)).to_numpy())[0])
            out.append(f"{column}: {text_differs} text cells differ (row {row}: {x.iloc[row]!r} vs {y.iloc[row]!r})")
        if not close.all():
            diff = (xn[numeric] - yn[numeric]).abs()
            out.append(f"{column}: {int((~close).sum())} values differ beyond rtol {rtol:g} "
                       f"(largest |difference| {diff.max():.3g})")
    return out


def compare_runs(reference: Path, rerun: Path, rtol: float = 0.0) -> tuple[list[Difference], dict[str, int]]:
    """Every table and model of two results folders; returns the differences and counts of what was compared."""
    reference, rerun = Path(reference), Path(rerun)
    differences: list[Difference] = []
    counts = {"tables": 0, "models": 0}
    tables = sorted({p.relative_to(reference) for g in TABLE_GLOBS for p in reference.glob(g)}
                    | {p.relative_to(rerun) for g in TABLE_GLOBS for p in rerun.glob(g)})
    models = sorted({p.relative_to(reference) for p in reference.glob(MODEL_GLOB)}
                    | {p.relative_to(rerun) for p in rerun.glob(MODEL_GLOB)})
    for relative in tables + models:
        here, there = reference / relative, rerun / relative
        if not here.exists() or not there.exists():
            differences.append(Difference(str(relative), "only in the rerun" if there.exists() else "missing in the rerun"))
            continue
        if relative in models:
            counts["models"] += 1
            if model_checksum(here) != model_checksum(there):
                differences.append(Difference(str(relative), "weights or record differ"))
        else:
            counts["tables"] += 1
            differences += [Difference(str(relative), what) for what in compare_tables(here, there, rtol)]
    return differences, counts
