"""CT -> DWI lesion fidelity on train-split subjects only: choose ct2dwi.guidance without the test split.

Usage: .venv/bin/python bench/ct2dwi_lesion.py [RUN_DIR] [--lesion-weights 0,0.1,0.3,1]
                                               [--oversample 0,0.5] [--baselines pix2pix,unet] [--steps N]
       (RUN_DIR defaults to this checkout, after `make demo`)

Folds: the run's train-split stroke subjects, sorted within each center; fold k holds out the k-th subject
of every center (the demo: 3 train subjects per center, so 3 folds of 4 training and 2 held-out subjects).
In each fold every setting trains on the fold's training subjects exactly as the workflow trains a cell
(`dwisynth.ct2dwi.train_ct2dwi`, the run's config block, ct2dwi.steps and lr, the trainer's own validation
subject), and the held-out subjects are scored as the workflow scores test subjects
(`dwisynth.ct2dwi.score_subject`: brain PSNR, lesion PSNR, lesion contrast, superpixel r). The test split is
never read.

Settings: every method of --methods at each lesion weight x lesion oversampling (`ct2dwi.guidance`: the
workflow gives one setting to every network alike, so the choice is made over all of them). Writes bench/results/ct2dwi_lesion.tsv (one row per fold, setting and
held-out subject) and prints the mean per setting. It asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dwisynth import layout
from dwisynth.ct2dwi import PROPOSED, Cell, network_block, run_lesion_mask, score_shard, train_ct2dwi
from dwisynth.dataset import task_members
from dwisynth.provenance import run_config

OUT = Path(__file__).resolve().parent / "results"
COLUMNS = ["psnr", "ssim", "superpixel_r", "lesion_psnr", "lesion_conspicuity_vs_acquired"]


def folds(train: list[dict]) -> list[list[dict]]:
    """Fold k holds out the k-th train subject (sorted) of every center."""
    by_center: dict[str, list[dict]] = {}
    for s in sorted(train, key=lambda s: (s["center"], s["subject"])):
        by_center.setdefault(s["center"], []).append(s)
    n = min(len(v) for v in by_center.values())
    return [[v[k] for v in by_center.values()] for k in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default=Path(__file__).resolve().parents[1], type=Path)
    parser.add_argument("--lesion-weights", default="0,0.1,0.3,1")
    parser.add_argument("--oversample", default="0", help="lesion oversampling shares (ct2dwi.guidance)")
    parser.add_argument("--baselines", default="pix2pix", help="methods besides JMMDA-GAN, at every setting")
    parser.add_argument("--steps", type=int, default=None, help="default: the run's ct2dwi.steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    run = args.run.resolve()
    config = run_config(run)
    if args.steps:
        config = {**config, "ct2dwi": {**config["ct2dwi"], "steps": args.steps}}
    torch.set_num_threads(args.threads)
    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t")
    train = task_members(split, "ct2dwi", "train")
    target_b = float(config["ct2dwi"]["target_b"][0])
    truth = {s["subject"]: run_lesion_mask(run, config, s["cohort"], s["subject"]) for s in train}
    methods = [PROPOSED, *[m for m in args.baselines.split(",") if m]]
    settings = [(m, float(w), float(o)) for m in methods for w in args.lesion_weights.split(",")
                for o in args.oversample.split(",")]
    rows = []
    for k, heldout in enumerate(folds(train)):
        held = {s["subject"] for s in heldout}
        members = [s for s in train if s["subject"] not in held]
        shards = [run / layout.shard(s["cohort"], s["subject"]) for s in members]
        for method, weight, oversample in settings:
            cell = Cell("main", method, "main")
            block = network_block(config, cell)
            lesions = {(s["cohort"], s["subject"]): truth[s["subject"]] for s in members} if weight or oversample else None
            training = {**config["training"], "threads": args.threads, "lesion_weight": weight,
                        "lesion_oversample": oversample}
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                path = train_ct2dwi(cell, shards, tmp, block, training, config["ct2dwi"], config["seed"], "cpu",
                                    lesions, progress=False)
                seconds = time.perf_counter() - start
                for s in heldout:
                    shard = run / layout.shard(s["cohort"], s["subject"])
                    scores = score_shard(path, shard, target_b, truth[s["subject"]])
                    rows.append({"fold": k, "method": method, "lesion_weight": weight, "lesion_oversample": oversample,
                                 "subject": s["subject"], "train_seconds": round(seconds, 1),
                                 **{c: scores[c] for c in COLUMNS}})
            print(f"fold {k} {method} lesion {weight:g} oversample {oversample:g}: "
                  + ", ".join(f"{c} {np.mean([r[c] for r in rows[-len(heldout):]]):.3f}" for c in COLUMNS), flush=True)
    table = pd.DataFrame(rows)
    OUT.mkdir(exist_ok=True)
    table.to_csv(OUT / "ct2dwi_lesion.tsv", sep="\t", index=False)
    summary = table.groupby(["method", "lesion_weight", "lesion_oversample"], sort=False)[COLUMNS + ["train_seconds"]].mean()
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
