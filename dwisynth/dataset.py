"""2D slice datasets and the patient-level split.

Shards: one .npz per subject (so a new subject adds one shard and touches no
other), holding every masked axial slice at every b-value of the grid, with a
presence flag per b-value (subjects lack some b-values: the semi-supervised
networks use what is there). dwisynth.loader streams them into torch.

Subjects are keyed by (cohort, subject) everywhere: two cohorts may both hold S0001.
`subject_table` decides each subject's task (a subject with a CT series belongs to
the CT -> DWI task, the rest to the multi-b task) and `task_members` picks a task's
subjects of one split; the workflow, synthesis and the tests all ask these two.

Split: 8:2 by patient, stratified by task, center and organ. Within a stratum,
subjects are ranked by a seeded hash of their key and the first
round(n * test_fraction) go to test; adding a subject moves at most one other.
Subjects acquired at a held-out b-value go to test unless the sheet fixes
them to train (few-shot images); their held-out volumes never reach training
in the zero-shot setting (dwisynth.loader.SliceDataset drops them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

SPLIT_COLUMNS = ["task", "cohort", "center", "organ", "subject", "split", "reason"]
KEY = ["cohort", "subject"]


def subject_table(sheet: pd.DataFrame) -> pd.DataFrame:
    """One row per DWI subject of a validated sample sheet: task, cohort, center, organ, subject, split (fixed)."""
    with_ct = set(map(tuple, sheet.loc[sheet["modality"] == "CT", KEY].values))
    dwi = sheet[sheet["modality"] == "DWI"]
    table = dwi[["cohort", "center", "organ", "subject", "split"]].copy()
    table.insert(0, "task", ["ct2dwi" if key in with_ct else "multib" for key in map(tuple, dwi[KEY].values)])
    return table.sort_values(KEY).reset_index(drop=True)


def check_ct2dwi_subjects(subjects: pd.DataFrame, ct_cohorts, source: str) -> None:
    """Every DWI subject of a CT -> DWI cohort (`ct2dwi.cohorts`) must have its CT series in the sheet."""
    from dwisynth.errors import SampleSheetError

    lacking = subjects[subjects["cohort"].isin(list(ct_cohorts)) & (subjects["task"] != "ct2dwi")]
    if len(lacking):
        names = ", ".join(f"{r.cohort}/{r.subject}" for r in lacking.head(5).itertuples())
        raise SampleSheetError(f"{source}: {names}{' ...' if len(lacking) > 5 else ''} in the CT -> DWI cohort(s) "
                               f"{', '.join(ct_cohorts)} have no CT row; add each one's head CT (modality CT, same "
                               "cohort and subject) or move them out of ct2dwi.cohorts")


def task_members(split: pd.DataFrame, task: str, which: str | None = None, organ: str | None = None) -> list[dict]:
    """Rows (as dicts) of the split manifest for one task, optionally one split ('train'/'test') and organ."""
    chosen = split["task"] == task
    if which is not None:
        chosen &= split["split"] == which
    if organ is not None:
        chosen &= split["organ"] == organ
    return split[chosen].to_dict("records")


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def make_split(subjects: pd.DataFrame, test_fraction: float, seed: int, heldout_subjects=()) -> pd.DataFrame:
    """subjects: `subject_table` rows (task, cohort, center, organ, subject, optional split).

    heldout_subjects: (cohort, subject) pairs acquired at a held-out b-value.
    """
    heldout_subjects = set(heldout_subjects)
    if "task" not in subjects.columns:
        subjects = subjects.assign(task="multib")
    duplicated = subjects.duplicated(KEY, keep=False)
    if duplicated.any():
        pairs = sorted({f"{c}/{s}" for c, s in subjects.loc[duplicated, KEY].values})
        raise ValueError(f"subjects listed twice: {', '.join(pairs)}; (cohort, subject) must be unique")
    rows = []
    for _, group in subjects.groupby(["task", "cohort", "center", "organ"], sort=True):
        free = []
        for r in group.itertuples():
            fixed = getattr(r, "split", "") or ""
            if fixed:
                rows.append((r.task, r.cohort, r.center, r.organ, r.subject, fixed, "fixed in sample sheet"))
            elif (r.cohort, r.subject) in heldout_subjects:
                rows.append((r.task, r.cohort, r.center, r.organ, r.subject, "test",
                             "acquired at a held-out b-value"))
            else:
                free.append(r)
        free.sort(key=lambda r: _rank(seed, f"{r.cohort}/{r.subject}"))
        n_test = int(round(len(free) * test_fraction))
        if len(free) >= 2 and n_test == 0:
            n_test = 1  # every stratum with two or more free subjects is represented in test
        for i, r in enumerate(free):
            rows.append((r.task, r.cohort, r.center, r.organ, r.subject, "test" if i < n_test else "train",
                         f"stratified by center and organ, seed {seed}"))
    return pd.DataFrame(rows, columns=SPLIT_COLUMNS).sort_values(KEY).reset_index(drop=True)


def slice_shard(dwi: np.ndarray, bvals, mask: np.ndarray, grid_bvals, min_mask_fraction: float = 0.02) -> dict:
    """Arrays for one subject: images (n, n_grid_b, H, W), present (n_grid_b,), mask (n, H, W)."""
    grid = [float(b) for b in grid_bvals]
    bvals = [float(b) for b in bvals]
    h, w, depth = dwi.shape[:3]
    coverage = mask.reshape(-1, depth).mean(0)
    keep = np.flatnonzero(coverage >= min_mask_fraction)
    images = np.zeros((keep.size, len(grid), h, w), dtype=np.float32)
    present = np.zeros(len(grid), dtype=bool)
    for j, b in enumerate(grid):
        if b in bvals:
            images[:, j] = np.moveaxis(dwi[:, :, keep, bvals.index(b)], -1, 0)
            present[j] = True
    return {"images": images, "present": present, "bvals": np.asarray(grid),
            "mask": np.moveaxis(mask[:, :, keep], -1, 0).astype(np.uint8), "slice_index": keep}


def write_slice_shard(dwi_path, bval_path, mask_path, out_path, grid_bvals, metadata: dict, ct_path=None,
                      ct_mask_path=None) -> int:
    """Write one subject's shard; with ct_path (CT on the DWI grid, HU) and ct_mask_path (its brain mask,
    from HU alone) the shard also holds `ct` and `ct_mask` slices, the CT -> DWI task's inputs.

    metadata: at least cohort and subject (the key the trainer records), usually center and organ.
    """
    missing = {"cohort", "subject"} - set(metadata)
    if missing:
        raise ValueError(f"{out_path}: shard metadata needs {sorted(missing)}")
    img = nib.load(dwi_path)
    dwi = np.asarray(img.dataobj, dtype=np.float32)
    bvals = np.loadtxt(bval_path, ndmin=1)
    mask = np.asarray(nib.load(mask_path).dataobj) > 0
    shard = slice_shard(dwi, bvals, mask, grid_bvals)
    # networks see pixels, not millimetres: model.pt records the voxel size it was trained on
    metadata = {**metadata, "voxel_size": [round(float(z), 4) for z in img.header.get_zooms()[:3]]}
    for key, path, dtype in (("ct", ct_path, np.float32), ("ct_mask", ct_mask_path, np.uint8)):
        if path is None:
            continue
        img = nib.load(path)
        if img.shape[:3] != dwi.shape[:3] or not np.allclose(img.affine, nib.load(dwi_path).affine, atol=1e-3):
            raise ValueError(f"{path}: CT grid {img.shape[:3]} is not the DWI grid {dwi.shape[:3]} of {dwi_path}; "
                             "the CT must be registered onto the DWI (rule register_ct) first")
        volume = np.asarray(img.dataobj, dtype=np.float32)
        shard[key] = np.moveaxis(volume[:, :, shard["slice_index"]], -1, 0).astype(dtype)
    tmp = Path(str(out_path) + ".tmp.npz")
    np.savez_compressed(tmp, **shard, metadata=json.dumps(metadata))
    tmp.replace(out_path)
    return int(shard["images"].shape[0])


def subjects_with_heldout_b(qc_records: dict, heldout_b, tolerance: float = 15.0) -> set[tuple[str, str]]:
    """(cohort, subject) of every DWI series acquired at a held-out b-value.

    qc_records: {(cohort, subject): path of its conversion QC record}.
    """
    found = set()
    for key, path in qc_records.items():
        record = json.loads(Path(path).read_text())
        if any(abs(b - h) <= tolerance for b in record["bvals"] for h in heldout_b):
            found.add(tuple(key))
    return found


def write_split_manifest(subjects, qc_files, heldout_b, test_fraction, seed, out_path,
                         tolerance: float = 15.0) -> pd.DataFrame:
    """subjects: `subject_table` records; qc_files: the DWI QC record of each, in the same order."""
    table = pd.DataFrame(list(subjects))
    qc = dict(zip(map(tuple, table[KEY].values), qc_files))
    split = make_split(table, test_fraction, seed, subjects_with_heldout_b(qc, heldout_b, tolerance))
    split.to_csv(out_path, sep="\t", index=False)
    counts = split.groupby("split").size().to_dict()
    print(f"[split] {counts} -> {out_path}")
    return split
