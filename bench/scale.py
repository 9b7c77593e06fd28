"""Scale benchmark: a cohort at the paper's size (50,000 slices over five organs) against one of 5,000, in a
bounded amount of disk, with wall time and peak memory of conversion, shard building and one epoch of loading.

Usage: .venv/bin/python bench/scale.py [--slices 5000 50000] [--real-subjects 2] [--workdir DIR]
Writes bench/results/scale.tsv and prints the table. It reports; it asserts nothing about speed.

How the cohort is made, within a bounded disk:
- `--real-subjects` demo subjects per organ go the workflow's way: simulated, written as vendor DICOM,
  converted by dcm2niix (`dwisynth.convert`), sliced into shards (`dwisynth.dataset`). Each step runs in its
  own process, so its peak memory is its own; the DICOM and NIfTI are deleted after each subject. These are
  per-subject jobs: their time grows with the cohort, their memory cannot (the table gives the projection).
- The rest of each level's slices are replicas of those shards with fresh noise (their own subject names),
  written the way the workflow writes shards; each level's shards are deleted after it is measured.
- Loading: for each organ, in a fresh process, the `SliceDataset` a training job builds, the `Trainer`'s set-up
  (validation split, data digest, intensity range) and one epoch of its batches (crop included).
Memory: peak resident set (VmHWM, which counts the pages of memory-mapped slice files the kernel keeps) and
peak private memory (RssAnon, sampled every 20 ms: what the process itself must hold).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ORGANS = ["brain", "breast", "abdomen", "neck", "pelvis"]
RESULTS = Path(__file__).resolve().parent / "results"


class PeakMemory:
    """Peak private memory (RssAnon) of this process, sampled in a thread; VmHWM from the kernel."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak_private_kb, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_private_kb = max(self.peak_private_kb, self._status("RssAnon"))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_private_kb = max(self.peak_private_kb, self._status("RssAnon"))

    def report(self) -> dict:
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # dcm2niix
        return {"peak_rss_mb": round(max(self._status("VmHWM"), children) / 1024, 1),
                "peak_private_mb": round(self.peak_private_kb / 1024, 1)}


def demo_config() -> dict:
    from dwisynth.config import load_config

    return load_config(Path(__file__).resolve().parents[1] / "config/demo.yaml")


# --- workers: one step in one process ------------------------------------------------------------
def work_subject(organ: str, index: int, folder: str) -> dict:
    """Simulate a demo subject of `organ`, write its DICOM, convert it, write its shard; time each step."""
    from dwisynth.config import bvalue_grid
    from dwisynth.convert import convert_series
    from dwisynth.dataset import write_slice_shard
    from dwisynth.demo.cohort import plan_demo_cohort, simulate_subject, write_subject
    from dwisynth.io import save_nifti

    config = demo_config()
    root = Path(folder)
    config["demo"]["outdir"] = str(root / "demo")
    plans = [p for p in plan_demo_cohort(config) if p.organ == organ and not p.stroke]
    plan = plans[index % len(plans)]
    times = {}
    start = time.perf_counter()
    sim = simulate_subject(plan, config)
    write_subject(sim)
    times["generate"] = time.perf_counter() - start
    nifti = root / "nifti"
    start = time.perf_counter()
    convert_series(plan.series["DWI"], nifti, plan.subject, log=lambda *a, **k: None,
                   source=f"{plan.subject} DWI")
    times["convert"] = time.perf_counter() - start
    stem = nifti / f"sub-{plan.subject}_dwi"
    mask = root / "mask.nii.gz"  # the phantom's organ mask: masking and registration are bench/preprocess.py's
    save_nifti(sim.organ_mask.astype(np.uint8), sim.grid.affine_ras(), mask, np.uint8)
    start = time.perf_counter()
    n = write_slice_shard(f"{stem}.nii.gz", f"{stem}.bval", mask, root / "shard.npz", bvalue_grid(config),
                          {"cohort": "scale", "subject": f"{organ}{index:05d}", "organ": organ})
    times["shard"] = time.perf_counter() - start
    return {"slices": n, "seconds": times}


def work_load(organ: str, shards: list[str]) -> dict:
    """What a training job does with the organ's shards before and while it trains, without the network."""
    from dwisynth.loader import SliceDataset
    from dwisynth.networks.base import build_network
    from dwisynth.training import Trainer, TrainerConfig, step_generator

    config = demo_config()
    bvalues, training = config["bvalues"], config["training"]
    start = time.perf_counter()
    data = SliceDataset(shards, bvalues["inputs"], [*bvalues["targets"], *bvalues["heldout"]], bvalues["heldout"])
    built = time.perf_counter() - start
    model = build_network("pix2pix", config["pix2pix"], len(bvalues["inputs"]), len(data.target_b), seed=0)
    trainer_config = TrainerConfig(steps=1, batch_size=training["batch_size"], crop=training["crop"],
                                   validation_subjects=training["validation_subjects"], device="cpu",
                                   threads=1, progress=False)
    start = time.perf_counter()
    trainer = Trainer(model, data, trainer_config, "/nonexistent", {"method": "pix2pix", "organ": organ})
    set_up = time.perf_counter() - start
    steps = -(-len(trainer.data) // trainer_config.batch_size)
    start = time.perf_counter()
    for step in range(steps):
        trainer.batch(step, step_generator(0, step))
    epoch = time.perf_counter() - start
    dataset_mb = sum(a.nbytes for a in (data.inputs, data.targets, data.masks)) / 2**20
    return {"slices": len(data), "seconds": {"dataset": built, "trainer_set_up": set_up, "epoch": epoch},
            "dataset_mb": dataset_mb}


def worker(kind: str, args: dict) -> None:
    with PeakMemory() as memory:
        result = work_subject(**args) if kind == "subject" else work_load(**args)
    print(json.dumps({**result, **memory.report()}))


def run_worker(kind: str, **args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, json.dumps(args)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- the cohort ------------------------------------------------------------------------------------
def replicate(shard: Path, out: Path, subject: str, seed: int) -> int:
    """A copy of `shard` as another subject: its images with fresh Rician-like noise, its masks."""
    with np.load(shard) as src:
        arrays = {k: src[k] for k in src.files}
    rng = np.random.default_rng(seed)
    images = arrays["images"]
    sigma = 0.03 * float(np.percentile(images[:, 0][arrays["mask"] > 0], 50))
    noisy = np.hypot(images + rng.normal(0, sigma, images.shape), rng.normal(0, sigma, images.shape))
    arrays["images"] = np.where(arrays["present"][None, :, None, None], noisy, 0).astype(np.float32)
    meta = json.loads(str(arrays.pop("metadata")))
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays, metadata=json.dumps({**meta, "subject": subject}))
    tmp.replace(out)
    return int(images.shape[0])


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[5000, 50000], help="cohort sizes (all organs)")
    parser.add_argument("--real-subjects", type=int, default=2, help="subjects per organ through DICOM/dcm2niix")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dwisynth-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, real = [], {}
    try:
        for organ in ORGANS:  # the per-subject pipeline on real DICOM
            real[organ] = []
            for i in range(args.real_subjects):
                folder = work / "subject"
                shutil.rmtree(folder, ignore_errors=True)
                result = run_worker("subject", organ=organ, index=i, folder=str(folder))
                kept = work / "seed_shards" / f"{organ}{i}.npz"
                kept.parent.mkdir(exist_ok=True)
                shutil.move(folder / "shard.npz", kept)
                dicom_mb = folder_mb(folder / "demo" / "dicom")
                shutil.rmtree(folder)  # DICOM and NIfTI: disk stays bounded however large the cohort
                real[organ].append(kept)
                for step, seconds in result["seconds"].items():
                    rows.append({"level": "per subject", "stage": step, "organ": organ, "slices": result["slices"],
                                 "wall_s": round(seconds, 3), "peak_rss_mb": result["peak_rss_mb"],
                                 "peak_private_mb": result["peak_private_mb"], "disk_mb": round(dicom_mb, 1)})
                print(f"[scale] {organ} subject {i}: {result['slices']} slices, "
                      f"{', '.join(f'{k} {v:.2f} s' for k, v in result['seconds'].items())}", flush=True)
        per_subject = pd.DataFrame(rows)
        for total in args.slices:
            level = f"{total} slices"
            shards_dir = work / "shards"
            shutil.rmtree(shards_dir, ignore_errors=True)
            shards_dir.mkdir()
            per_organ = total // len(ORGANS)
            start = time.perf_counter()
            organ_shards = {}
            for organ in ORGANS:
                organ_shards[organ], count = [], 0
                while count < per_organ:
                    k = len(organ_shards[organ])
                    out = shards_dir / f"{organ}{k:05d}.npz"
                    count += replicate(real[organ][k % len(real[organ])], out, f"{organ}{k:05d}", seed=k)
                    organ_shards[organ].append(str(out))
            replicas_s = time.perf_counter() - start
            disk = folder_mb(shards_dir)
            n_subjects = sum(len(v) for v in organ_shards.values())
            print(f"[scale] {level}: {n_subjects} subjects' shards, {disk:.0f} MB, {replicas_s:.0f} s", flush=True)
            for stage in ("generate", "convert", "shard"):  # per-subject jobs: time projected, memory per job
                part = per_subject[per_subject["stage"] == stage]
                per_slice = part["wall_s"].sum() / part["slices"].sum()
                rows.append({"level": level, "stage": f"{stage} (projected: per-slice time x slices)",
                             "organ": "all", "slices": total, "wall_s": round(per_slice * total, 1),
                             "peak_rss_mb": part["peak_rss_mb"].max(), "peak_private_mb": part["peak_private_mb"].max(),
                             "disk_mb": round(disk, 1) if stage == "shard" else np.nan})
            for organ in ORGANS:
                result = run_worker("load", organ=organ, shards=organ_shards[organ])
                for step, seconds in result["seconds"].items():
                    rows.append({"level": level, "stage": f"load: {step}", "organ": organ,
                                 "slices": result["slices"], "wall_s": round(seconds, 2),
                                 "peak_rss_mb": result["peak_rss_mb"], "peak_private_mb": result["peak_private_mb"],
                                 "disk_mb": round(result["dataset_mb"], 1)})
                print(f"[scale] {level} {organ}: loaded, peak private {result['peak_private_mb']:.0f} MB "
                      f"(slice arrays {result['dataset_mb']:.0f} MB)", flush=True)
            shutil.rmtree(shards_dir)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "scale.tsv", sep="\t", index=False)
    summary = table[table["level"] != "per subject"]
    print(summary.to_string(index=False))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(sys.argv[2], json.loads(sys.argv[3]))
    else:
        main()
