"""Equal wall-clock comparison of the learned methods, and long-training stability, on a finished demo run.

Usage: .venv/bin/python bench/quality.py [RUN_DIR] [--organ abdomen] [--seconds 150] [--long] [--ct2dwi]
                                          [--device cuda] [--size config/config.yaml]
                                          [--networks minegan] [--set minegan.weights.bridge=0]
                                          [--threads 2]
       (RUN_DIR defaults to this checkout, after `make demo`; run one organ per process to use two cores)

Equal wall-clock: each network trains on the run's train-split shards of one organ for the same CPU
seconds (one thread): a short timed calibration gives its seconds per step (averaged over its phases), and
it then trains for budget / (seconds per step) steps with the run's config block and trainer settings (lr
schedule fitted to those steps, validation on a held-out train subject). DC²Anet also trains the published
way, jointly from the first step (`dc2anet_joint`: paired_warmup 0). Test subjects are scored like the workflow scores
them (`dwisynth.evaluate.score_synthesis`, volume PSNR in the organ mask), beside cDWI and the noise-free
reference from the run's own `synthesis_metrics.tsv`. Nothing here reads the test split before scoring.

--long: each network also trains for its demo step count and ten times that (MineGAN: every phase ten times,
on the run's DC²Anet), validated as often as the demo-length run (the 10x run differs in its steps alone); both
end points' validation and test PSNR go to long_training.tsv and the validation curves to
long_training_curves.tsv. The test PSNR mean is over the trained b; held-out b get their own columns.
--ct2dwi: the same for the CT -> DWI networks (`ct2dwi.methods`, the main cell, each method's configured steps
and ten times that), scored on the test stroke subjects as the workflow scores them (brain PSNR; organ column "stroke").
--size CONFIG: the networks take their widths (ngf, ndf, n_residual, JMMDA-GAN's levels), lr and betas from
CONFIG (its defaults filled in, so MineGAN gets its full size too), and the trainer its stability settings
(validation subjects, warm-up, gradient clipping): the full-size check on a GPU. MineGAN still reads the
run's (demo-size) DC²Anet: the check is of MineGAN's own training.
--set KEY=VALUE (repeatable): one value of the run's config overridden (dotted key, YAML value), for an
ablation on the same run: `--set minegan.weights.bridge=0`; the results files' names end in `_bridge0`.
--threads N: CPU threads per training run (default 1), for a --long check on the CPU (a full-size one:
`--size ... --threads 2`), whose numbers it changes only through the order of floating-point sums; the equal
wall-clock budget is of one thread, so --threads above 1 needs --seconds 0.
--seconds 0 skips the equal wall-clock comparison. A warm-up never exceeds a tenth of the run's steps.
A budget run whose wall time ends more than 5% off its budget (the machine's load changed after the
calibration) is rerun with its steps scaled by budget / wall time, up to three runs in all.

Writes bench/results/quality_<organ>.tsv (and long_training_<organ>.tsv, long_training_curves_<organ>.tsv,
with _<device>_full for --size runs);
`--summary` merges them into quality.tsv / long_training.tsv and prints the tables. It asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from dwisynth import layout
from dwisynth.config import load_config
from dwisynth.ct2dwi import (PROPOSED, Cell, cell_training, guidance_on, network_block, run_lesion_mask, score_shard,
                             train_ct2dwi)
from dwisynth.dataset import task_members
from dwisynth.provenance import run_config
from dwisynth.evaluate import score_synthesis
from dwisynth.inference import load_model, synthesize_volume
from dwisynth.io import load_dwi, load_mask
from dwisynth.loader import SliceDataset
from dwisynth.networks.base import build_network
from dwisynth.synthesis import train_model, trainer_config
from dwisynth.training import Trainer

METHODS = ("dc2anet", "pix2pix")
NETWORKS = (*METHODS, "minegan")  # --networks: which to train (MineGAN only in --long)
# the equal wall-clock comparison also trains DC²Anet the published way, jointly from the first step
VARIANTS = {"dc2anet": ("dc2anet", {}), "dc2anet_joint": ("dc2anet", {"paired_warmup": 0.0}),
            "pix2pix": ("pix2pix", {})}
OUT = Path(__file__).resolve().parent / "results"
FULL_SIZE_KEYS = ("ngf", "ndf", "n_residual", "lr", "betas")  # not pix2pix levels: those follow the crop
FULL_SIZE_BLOCKS = {**dict.fromkeys((*METHODS, "minegan", "unet"), FULL_SIZE_KEYS),
                    PROPOSED: (*FULL_SIZE_KEYS, "levels")}
FULL_SIZE_TRAINING = ("validation_subjects", "warmup_steps", "grad_clip")
DEVICE = "cpu"
THREADS = 1  # --threads: CPU threads per training run (the equal wall-clock budget is of one thread by default)
OVERRIDES: list[tuple[str, object]] = []  # --set: (dotted key, value) on the run's config


def with_full_size(config: dict, path: Path) -> dict:
    """The run's config with network widths, lr and trainer stability settings taken from a full-size config
    (validated, so a block it leaves out gets the network's full-size defaults)."""
    full = load_config(path)
    out = {**config, "training": {**config["training"], **{k: full["training"][k] for k in FULL_SIZE_TRAINING}},
           "ct2dwi": {**config["ct2dwi"], "lr": full["ct2dwi"]["lr"]}}
    for name, keys in FULL_SIZE_BLOCKS.items():
        out[name] = {**config.get(name, {}), **{k: v for k, v in full[name].items() if k in keys}}
    return out


def with_overrides(config: dict) -> dict:
    """The config with the --set overrides: an ablation of one setting on the same run."""
    out = copy.deepcopy(config)
    for key, value in OVERRIDES:
        *parents, last = key.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[last] = value
    return out


def bench_training(training: dict, steps: int, demo_steps: int | None = None) -> dict:
    """The run's training block for one bench run: `THREADS` threads, one checkpoint, validation at most 20 times
    a run of `demo_steps` (default: this run's) and a warm-up of at most a tenth of this run.

    A --long run at 10x passes the demo length, so it validates as often as the demo-length run and differs from
    it in its steps alone, as when a user multiplies `steps` (`validate_every` does not scale). Spacing
    validation by the run's own length left DC²Anet's exported dual-cycle phase, its last 5%, one validation at
    10x: model.pt was its last step, not its best (full size, abdomen, 2026-11-24)."""
    return {**training, "threads": THREADS, "checkpoint_every": max(steps, 1),
            "validate_every": max(training["validate_every"], (demo_steps or steps) // 20),
            "warmup_steps": min(training["warmup_steps"], steps // 10)}


def seconds_per_step(method: str, block: dict, data: SliceDataset, config: dict,
                     short: tuple[int, int] = (200, 600)) -> float:
    """Wall time per step of the trainer's own loop: the slope between two short runs of it, each with the
    method's phase shares and lr schedule scaled to its length, so set-up and export fall out and what a
    budget run pays per step stays in (batches, validation every `validate_every` steps, logging,
    checkpoints, DC²Anet's paired and dual-cycle phases in their shares). Timing bare training steps
    left validation and logging out: pix2pix, with the most steps, then ran 162-169 s of a 150 s budget
    and DC²Anet 130-151 s (2026-11-24)."""
    times = []
    for steps in short:
        with tempfile.TemporaryDirectory() as tmp:
            times.append(train(method, block, data, config, steps, Path(tmp))[1])
    return (times[1] - times[0]) / (short[1] - short[0])


def train(method: str, block: dict, data: SliceDataset, config: dict, steps: int, out: Path,
          demo_steps: int | None = None) -> tuple[Path, float]:
    b = config["bvalues"]
    block = {**block, "steps": steps, "decay_start": None}
    model = build_network(method, block, len(b["inputs"]), len(b["targets"]), config["seed"])
    meta = {"method": method, "input_b": [float(x) for x in b["inputs"]], "target_b": [float(x) for x in b["targets"]]}
    settings = trainer_config(bench_training(config["training"], steps, demo_steps), model, config["training"].get("intensity_max"),
                              config["seed"], DEVICE, progress=False)
    start = time.perf_counter()
    path = Trainer(model, data, settings, out, meta).fit()
    return path, time.perf_counter() - start


def train_minegan(run: Path, organ: str, shards: list[Path], block: dict, config: dict, factor: int,
                  out: Path) -> tuple[Path, float, int]:
    """MineGAN with every phase `factor` times its demo length, built on the run's DC²Anet of the organ, through
    the workflow's own `train_model` (validation spaced as in the demo-length run, as for the others)."""
    phases = ("pretrain_steps", "mine_steps", "finetune_steps")
    demo_steps = sum(int(block[k]) for k in phases)
    block = {**block, **{k: int(block[k]) * factor for k in phases}}
    steps = sum(block[k] for k in phases)
    start = time.perf_counter()
    path = train_model("minegan", organ, shards, out, block, bench_training(config["training"], steps, demo_steps),
                       config["bvalues"], config["seed"], DEVICE,
                       progress=False, upstream={"stage1": run / layout.model("dc2anet", organ)})
    return path, time.perf_counter() - start, steps


def long_curve(out: Path, organ: str, method: str, factor: int, size: str) -> list[dict]:
    """The validation PSNR curve of one long-training run, from its training_log.csv."""
    log = pd.read_csv(out / "training_log.csv")
    if "val_psnr" not in log:
        return []
    return [{"organ": organ, "method": method, "device": DEVICE, "size": size, "factor": factor, "step": r["step"],
             **{k: v for k, v in r.items() if k in ("val_psnr", "val_score") or k.startswith("val_bridged")}}
            for r in log.dropna(subset=["val_psnr"]).to_dict("records")]


def test_psnr(run: Path, model_path: Path, tests: list[dict], config: dict) -> dict[float, float]:
    """Mean volume PSNR per target b over the organ's test subjects, scored as the workflow scores."""
    model = load_model(model_path, DEVICE)
    per_b: dict[float, list[float]] = {}
    for s in tests:
        files = {k: run / v for k, v in layout.preproc(s["cohort"], s["subject"]).items()}
        dwi, bvals = load_dwi(files["dwi"], files["bval"])
        synthetic = synthesize_volume(model, dwi, bvals, s["subject"])
        _, volumes = score_synthesis(synthetic, model.target_b, dwi, bvals, load_mask(files["mask"]) > 0,
                                     model.target_b, config["bvalues"]["heldout"])
        for row in volumes:
            per_b.setdefault(row["b_value"], []).append(row["psnr"])
    return {b: float(np.mean(v)) for b, v in sorted(per_b.items())}


def references(run: Path, organ: str) -> pd.DataFrame:
    """cDWI and the noise-free reference on the same test subjects, from the run's own scores."""
    table = pd.read_csv(run / "results/tables/synthesis_metrics.tsv", sep="\t", dtype={"slice": str})
    rows = table[(table["slice"] == "volume") & (table["organ"] == organ) & table["method"].isin(["cdwi", "noisefree"])]
    return rows.groupby(["method", "b_value"])["psnr"].mean().reset_index()


def long_row(organ: str, method: str, size: Path | None, factor: int, steps: int, wall: float, model_path: Path,
             psnr: dict[float, float], trained_b: list[float]) -> dict:
    """One end point of a long-training check: the exported step's validation PSNR and the test PSNR per b;
    the mean is over the trained b only, so a network that also writes held-out b compares like for like."""
    record = torch.load(model_path, weights_only=True)
    return {"organ": organ, "method": method, "device": DEVICE, "size": "full" if size else "demo", "factor": factor,
            "threads": THREADS, "steps": steps, "ms_per_step": wall / steps * 1000, "wall_s": wall,
            "selected_step": record["selected_step"],
            "stopped_early": record["stopped_early"], "val_psnr": record.get("validation_psnr", np.nan),
            "val_score": record.get("validation_score", np.nan),
            **{f"test_psnr_b{k:g}": v for k, v in psnr.items()},
            "test_psnr_mean": float(np.mean([v for k, v in psnr.items() if k in trained_b]))}


def budget_run(name: str, method: str, block: dict, data: SliceDataset, config: dict, organ: str, per_step: float,
               seconds: float, out: Path, attempts: int = 3) -> tuple[Path, float, int]:
    """Train for `seconds` of wall time at the calibrated speed; while a run ends more than 5% off (the load
    changed after calibrating: the other organ finished, --long beside it), rerun at steps x budget / wall,
    at most `attempts` runs in all (one rescaling left the brain's DC²Anet at 133 of 150 s)."""
    steps = max(10, int(seconds / per_step))
    print(f"[quality] {organ} {name}: {per_step * 1000:.1f} ms/step -> {steps} steps for {seconds:g} s", flush=True)
    model_path, wall = train(method, block, data, config, steps, out)
    for attempt in range(1, attempts):
        if abs(wall - seconds) <= 0.05 * seconds:
            break
        steps = max(10, int(steps * seconds / wall))
        print(f"[quality] {organ} {name}: {wall:.0f} s for a {seconds:g} s budget; again with {steps} steps", flush=True)
        model_path, wall = train(method, block, data, config, steps, out.with_name(f"{out.name}_{attempt}"))
    return model_path, wall, steps


def bench_organ(run: Path, organ: str, seconds: float, long: bool, size: Path | None,
                networks: tuple[str, ...] = NETWORKS) -> None:
    config = run_config(run)
    if size is not None:
        config = with_full_size(config, size)
    config = with_overrides(config)
    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t")
    train_shards = [run / layout.shard(s["cohort"], s["subject"]) for s in task_members(split, "multib", "train", organ)]
    tests = task_members(split, "multib", "test", organ)
    b = config["bvalues"]
    data = SliceDataset(train_shards, b["inputs"], b["targets"], b["heldout"], zero_shot=True)
    torch.set_num_threads(THREADS)
    rows, long_rows, curves = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        blocks = {name: (method, {**config[method], **over}) for name, (method, over) in VARIANTS.items()
                  if method in networks}
        if seconds > 0:
            # time every variant's step first, back to back, so all calibrations see the same machine load
            per_steps = {name: seconds_per_step(method, block, data, config) for name, (method, block) in blocks.items()}
            for name, (method, block) in blocks.items():
                model_path, wall, steps = budget_run(name, method, block, data, config, organ, per_steps[name], seconds,
                                                     Path(tmp) / f"{name}_budget")
                record = torch.load(model_path, weights_only=True)
                for b_value, psnr in test_psnr(run, model_path, tests, config).items():
                    rows.append({"organ": organ, "method": name, "budget_s": seconds, "steps": steps,
                                 "ms_per_step": per_steps[name] * 1000, "wall_s": wall,
                                 "selected_step": record["selected_step"], "b_value": b_value, "psnr": psnr})
        for method in [m for m in METHODS if long and m in networks]:
            block = blocks[method][1]
            for factor in (1, 10):
                steps = int(block["steps"]) * factor
                out = Path(tmp) / f"{method}_x{factor}"
                model_path, wall = train(method, block, data, config, steps, out, demo_steps=int(block["steps"]))
                long_rows.append(long_row(organ, method, size, factor, steps, wall, model_path,
                                          test_psnr(run, model_path, tests, config), b["targets"]))
                curves += long_curve(out, organ, method, factor, "full" if size else "demo")
    if long and "minegan" in networks:
        for factor in (1, 10):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp)
                model_path, wall, steps = train_minegan(run, organ, train_shards, config["minegan"], config, factor,
                                                        out)
                curves += long_curve(out, organ, "minegan", factor, "full" if size else "demo")
                long_rows.append(long_row(organ, "minegan", size, factor, steps, wall, model_path,
                                          test_psnr(run, model_path, tests, config), b["targets"]))
    for r in references(run, organ).to_dict("records"):
        rows.append({"organ": organ, "method": r["method"], "b_value": r["b_value"], "psnr": r["psnr"]})
    OUT.mkdir(exist_ok=True)
    if seconds > 0:
        pd.DataFrame(rows).to_csv(OUT / f"quality_{organ}{file_tag(size, networks)}.tsv", sep="\t", index=False)
    if long:
        write_long(organ, file_tag(size, networks), long_rows, curves)


def file_tag(size: Path | None, networks: tuple[str, ...] = NETWORKS) -> str:
    """The results files' suffix: device and size off the CPU demo-size default, and a subset of networks, so
    processes run side by side (one per organ and network on a GPU) write files of their own."""
    tag = "" if DEVICE == "cpu" and size is None else f"_{DEVICE}" + ("_full" if size else "")
    tag += "" if set(networks) == set(NETWORKS) else "_" + "-".join(networks)
    return tag + "".join(f"_{key.rsplit('.', 1)[-1]}{value}" for key, value in OVERRIDES)


def write_long(organ: str, tag: str, long_rows: list[dict], curves: list[dict]) -> None:
    OUT.mkdir(exist_ok=True)
    pd.DataFrame(long_rows).to_csv(OUT / f"long_training_{organ}{tag}.tsv", sep="\t", index=False)
    pd.DataFrame(curves).to_csv(OUT / f"long_training_curves_{organ}{tag}.tsv", sep="\t", index=False)


def ct2dwi_cell_block(run: Path, config: dict, cell: Cell, steps: int, train: list[dict]):
    """(the cell's network block at `steps`, its training block with the cell's lesion supervision, the training
    subjects' lesion masks for a guided cell, else None), as the workflow trains the cell."""
    block = network_block({**config, "ct2dwi": {**config["ct2dwi"], "steps": steps, "steps_per_method": {}}}, cell)
    lesions = None
    if cell.guided:
        lesions = {(s["cohort"], s["subject"]): run_lesion_mask(run, config, s["cohort"], s["subject"]) for s in train}
    return block, cell_training(config, cell), lesions


def bench_ct2dwi(run: Path, size: Path | None) -> None:
    """The long-training check of the CT -> DWI networks: each of `ct2dwi.methods` trained as the workflow trains
    the main cell (with ct2dwi.guidance's lesion supervision), at `ct2dwi.steps` and ten times that."""
    config = run_config(run)
    if size is not None:
        config = with_full_size(config, size)
    config = with_overrides(config)
    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t")
    train, tests = task_members(split, "ct2dwi", "train"), task_members(split, "ct2dwi", "test")
    shards = [run / layout.shard(s["cohort"], s["subject"]) for s in train]
    target_b = float(config["ct2dwi"]["target_b"][0])
    torch.set_num_threads(THREADS)
    long_rows, curves = [], []
    for method in config["ct2dwi"]["methods"]:
        cell = Cell("main", method, "main", guided=guidance_on(config))
        configured = int(config["ct2dwi"].get("steps_per_method", {}).get(method, config["ct2dwi"]["steps"]))
        for factor in (1, 10):
            steps = configured * factor
            block, training, lesions = ct2dwi_cell_block(run, config, cell, steps, train)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                model_path = train_ct2dwi(cell, shards, tmp, block,
                                          bench_training(training, steps, configured),
                                          config["ct2dwi"], config["seed"], DEVICE, lesions, progress=False)
                wall = time.perf_counter() - start
                psnr = np.mean([score_shard(model_path, run / layout.shard(s["cohort"], s["subject"]), target_b,
                                            device=DEVICE)["psnr"] for s in tests])
                long_rows.append(long_row("stroke", method, size, factor, steps, wall, model_path,
                                          {target_b: float(psnr)}, [target_b]))
                curves += long_curve(Path(tmp), "stroke", method, factor, "full" if size else "demo")
            print(f"[quality] stroke {method} x{factor}: val {long_rows[-1]['val_psnr']:.2f}, test {psnr:.2f} dB "
                  f"({wall:.0f} s)", flush=True)
    write_long("stroke", file_tag(size), long_rows, curves)


def summary() -> None:
    pd.set_option("display.width", 200)
    quality_files = sorted(OUT.glob("quality_*.tsv"))
    if quality_files:
        table = pd.concat([pd.read_csv(p, sep="\t") for p in quality_files])
        table.to_csv(OUT / "quality.tsv", sep="\t", index=False)
        wide = table.pivot_table(index=["organ", "b_value"], columns="method", values="psnr")
        for method in [m for m in VARIANTS if m in wide]:
            wide[f"{method}_gap"] = wide[method] - wide["noisefree"]
        budget = table.dropna(subset=["steps"]).groupby(["organ", "method"])[
            ["budget_s", "steps", "ms_per_step", "wall_s"]].first()
        print("== equal wall-clock: test PSNR (dB, workflow scoring); gap = method - noise-free reference ==")
        print(wide.round(2).to_string())
        print("\n== budget per method (one CPU thread) ==")
        print(budget.round(1).to_string())
    long_files = sorted(OUT.glob("long_training_[!c]*.tsv"))
    if long_files:
        long = pd.concat([pd.read_csv(p, sep="\t") for p in long_files])
        long.to_csv(OUT / "long_training.tsv", sep="\t", index=False)
        print("\n== demo steps vs 10x: validation PSNR of the exported step and test PSNR ==")
        print(long.round(2).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--organ", action="append", help="organ(s) to bench (default abdomen and brain)")
    parser.add_argument("--seconds", type=float, default=150.0, help="training budget per method (one thread)")
    parser.add_argument("--long", action="store_true", help="also train demo steps and 10x demo steps")
    parser.add_argument("--ct2dwi", action="store_true", help="the long-training check of the CT -> DWI networks")
    parser.add_argument("--networks", default=",".join(NETWORKS),
                        help="comma-separated subset of dc2anet,pix2pix,minegan (one per process to fill a GPU)")
    parser.add_argument("--summary", action="store_true", help="merge the per-organ files and print the tables")
    parser.add_argument("--device", default="cpu", help="cpu (--threads threads) or cuda (bf16 autocast)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per training run (default 1; more only shortens a --long check on the CPU)")
    parser.add_argument("--size", type=Path, help="config whose network widths, lr and trainer stability settings to use")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one value of the run's config (dotted key, YAML value), e.g. "
                             "minegan.weights.bridge=0; the results files' names carry it")
    args = parser.parse_args()
    global DEVICE, THREADS
    DEVICE, THREADS = args.device, args.threads
    if THREADS < 1:
        parser.error(f"--threads {THREADS}: expected 1 or more")
    if THREADS > 1 and args.seconds > 0 and not (args.ct2dwi or args.summary):
        parser.error(f"--threads {THREADS}: the equal wall-clock budget is of one thread per method; "
                     "add --seconds 0 to run only the --long check on more threads")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set {item}: expected KEY=VALUE, e.g. minegan.weights.bridge=0")
        OVERRIDES.append((key, yaml.safe_load(value)))
    networks = tuple(args.networks.split(","))
    if set(networks) - set(NETWORKS):
        parser.error(f"--networks: unknown {sorted(set(networks) - set(NETWORKS))}; choose from {', '.join(NETWORKS)}")
    if args.ct2dwi:
        bench_ct2dwi(Path(args.run), args.size)
    elif not args.summary:
        for organ in args.organ or ["abdomen", "brain"]:
            bench_organ(Path(args.run), organ, args.seconds, args.long, args.size, networks)
    summary()


if __name__ == "__main__":
    main()
