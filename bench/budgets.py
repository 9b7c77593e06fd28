"""Equal training budgets: the step counts that give each baseline the step-loop seconds of the network it is
compared with, from the per-step costs measured on a finished demo run.

Usage: .venv/bin/python bench/budgets.py [RUN_DIR] [--organ brain]
       (RUN_DIR defaults to this checkout, after `make demo`; run it on an otherwise idle machine)

Each network's seconds per step is the slope between two short runs of the trainer's own loop (200 and 600
steps, one thread; `bench/quality.py`'s calibration: batches, validation, logging and phases included, set-up
excluded), with the run's config blocks and trainer settings: multi-b DC²Anet and pix2pix on one organ's
train-split shards, CT -> DWI JMMDA-GAN, pix2pix and U-Net on the stroke train split (the main cell). The
proposed network keeps its configured steps; a baseline gets proposed seconds / its own seconds per step,
rounded to 50. The result goes into the config as fixed step counts (reruns stay bit-identical), never
measured again at run time. Writes bench/results/budgets.tsv and prints it; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (the calibration and the run's config, shared with the quality bench)

from dwisynth import layout  # noqa: E402
from dwisynth.ct2dwi import PROPOSED, Cell, guidance_on, train_ct2dwi  # noqa: E402
from dwisynth.dataset import task_members  # noqa: E402
from dwisynth.loader import SliceDataset  # noqa: E402
from dwisynth.provenance import run_config  # noqa: E402

SHORT = (200, 600)  # the two calibration lengths (steps)


def ct2dwi_seconds_per_step(run: Path, config: dict, method: str) -> float:
    """The slope of the CT -> DWI main cell's training time between SHORT[0] and SHORT[1] steps."""
    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t")
    train = task_members(split, "ct2dwi", "train")
    shards = [run / layout.shard(s["cohort"], s["subject"]) for s in train]
    cell = Cell("main", method, "main", guided=guidance_on(config))
    times = []
    for steps in SHORT:
        block, training, lesions = quality.ct2dwi_cell_block(run, config, cell, steps, train)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train_ct2dwi(cell, shards, tmp, block, quality.bench_training(training, steps),
                         config["ct2dwi"], config["seed"], "cpu", lesions, progress=False)
            times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / (SHORT[1] - SHORT[0])


def equal_steps(seconds: float, per_step: float) -> int:
    return int(max(50, round(seconds / per_step / 50) * 50))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--organ", default="brain", help="the multi-b organ whose shards calibrate (default brain)")
    args = parser.parse_args()
    run = Path(args.run)
    config = run_config(run)
    torch.set_num_threads(1)
    rows = []
    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t")
    shards = [run / layout.shard(s["cohort"], s["subject"])
              for s in task_members(split, "multib", "train", args.organ)]
    b = config["bvalues"]
    data = SliceDataset(shards, b["inputs"], b["targets"], b["heldout"], zero_shot=True)
    multib = {m: quality.seconds_per_step(m, config[m], data, config, SHORT) for m in ("dc2anet", "pix2pix")}
    proposed_s = multib["dc2anet"] * config["dc2anet"]["steps"]
    for method, per_step in multib.items():
        rows.append({"task": "multib", "method": method, "proposed": "dc2anet", "ms_per_step": 1000 * per_step,
                     "configured_steps": config[method]["steps"], "proposed_seconds": proposed_s,
                     "equal_steps": config[method]["steps"] if method == "dc2anet" else equal_steps(proposed_s, per_step)})
    ct = {m: ct2dwi_seconds_per_step(run, config, m) for m in config["ct2dwi"]["methods"]}
    proposed_s = ct[PROPOSED] * config["ct2dwi"]["steps"]
    for method, per_step in ct.items():
        configured = config["ct2dwi"].get("steps_per_method", {}).get(method, config["ct2dwi"]["steps"])
        rows.append({"task": "ct2dwi", "method": method, "proposed": PROPOSED, "ms_per_step": 1000 * per_step,
                     "configured_steps": configured, "proposed_seconds": proposed_s,
                     "equal_steps": config["ct2dwi"]["steps"] if method == PROPOSED
                     else equal_steps(proposed_s, per_step)})
    table = pd.DataFrame(rows)
    quality.OUT.mkdir(exist_ok=True)
    table.to_csv(quality.OUT / "budgets.tsv", sep="\t", index=False, float_format="%.4g")
    print(table.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
