"""The one trainer every network uses (nnU-Net habit: one trainer, networks plug in through hooks).

Networks plug in through the hooks of `dwisynth.networks.base.Network`. The trainer
owns everything else: device and mixed precision, the data order, the learning-rate
schedule, phases, checkpoints with optimizer and RNG state, resume, the progress bar
and the per-step CSV log.

Reproducibility: every random draw of step k (which slices, where to crop, the
image pool) comes from a generator seeded by (seed, k), so a run resumed from a
checkpoint at step k continues exactly as an uninterrupted one. On CPU torch runs
with deterministic algorithms.

Validation: whole train-split subjects (never test) are held out of the batches; every
`validate_every` steps the inference network predicts their slices and the masked PSNR per
target b is logged, with label-free scores at b-values without images where a network has them
(`bridged_references`: MineGAN's held-out b). model.pt holds the weights of the step with the best
mean of these (`val_score`), so a long run never exports worse weights than it passed through.
Divergence (a non-finite or exploding loss, or the validation score falling `collapse_db` below its
best twice in a row) stops the run with a message; the best validated weights are exported and
model.pt says why it stopped. A network whose first phase is a warm-up that may not be exported
(`selectable`) may start the next phase from the warm-up's best validated weights (`warm_start`).

Honest resume: a checkpoint carries the fingerprint of everything that shaped it (the
network's config block, the trainer settings, the b-values and model metadata, the
training data's content and the training code). A checkpoint with another
fingerprint is never resumed from: training starts afresh and the log says what changed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dwisynth.device import training_device
from dwisynth.errors import ConfigError, DwisynthError
from dwisynth.inference import MODEL_FORMAT
from dwisynth.loader import chunked_percentile, inputs_to_network
from dwisynth.networks.base import code_digest, config_weight_files
from dwisynth.networks.blocks import from_network, pad_to_multiple, to_network
from dwisynth.provenance import file_checksum

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"  # the one before: what a corrupt checkpoint falls back to
MODEL = "model.pt"
LOG = "training_log.csv"
# Trainer settings that change how a run is carried out, never what it learns.
NOT_FINGERPRINTED = ("device", "threads", "progress", "checkpoint_every", "log_every")
# Libraries whose version can change the learned weights (kernels, initialisers, the MONAI SSIM loss).
FINGERPRINTED_LIBRARIES = ("torch", "monai", "numpy")


def weights_file_digest(path: str | Path) -> str:
    """sha256 of a weights file named in a network's config."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: weights file not found; fix the path in the network's config block")
    return file_checksum(path)


def weights_digest(state_dict: dict) -> str:
    """sha256 over a model's tensors in name order: what a network built on another model learned from."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode() + b"\0" + _tensor_bytes(state_dict[name]))
    return digest.hexdigest()[:16]


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return str(flat.dtype).encode() + flat.view(torch.uint8).numpy().tobytes()  # bf16 has no numpy dtype


@dataclass
class TrainerConfig:
    steps: int
    batch_size: int = 8
    crop: int | None = 64  # square random crop (pixels); None trains on whole slices
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_start: int | None = None  # lr constant until here, then linear to 0 at `steps`; None = steps // 2
    checkpoint_every: int = 100
    log_every: int = 10
    intensity_max: float | None = None  # S/S0 mapped to [-1, 1], above is clipped; None: from the data
    seed: int = 42
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    validation_subjects: int = 1  # train-split subjects held out to pick the exported step; 0: last step
    validate_every: int = 50
    warmup_steps: int = 0  # lr rises linearly from 0 over these steps (Adam's early steps are the largest)
    grad_clip: float | None = None  # max global gradient norm per optimizer step; None: no clipping
    collapse_db: float = 6.0  # validation PSNR this far below its best, twice in a row, stops the run
    loss_limit: float = 1e4  # a loss above this (or NaN/inf) is a blow-up
    lesion_oversample: float = 0.0  # share of batch items drawn from lesion slices, cropped around the lesion
    lesion_weight: float = 0.0  # x L1 inside the lesion mask, added by every network (Network.add_lesion_l1)


class TrainingDiverged(DwisynthError):
    """Training blew up before any validated weights existed."""


@dataclass
class Batch:
    """Network-scale tensors: inputs (N, n_in, h, w), targets (N, T, h, w) in [-1, 1], present (N, T) bool."""

    inputs: torch.Tensor
    targets: torch.Tensor
    present: torch.Tensor
    mask: torch.Tensor = field(default=None)
    lesion: torch.Tensor | None = None  # (N, h, w) bool, CT -> DWI training with lesion masks only


def step_generator(seed: int, step: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def lr_factor(step: int, steps: int, decay_start: int, warmup: int = 0) -> float:
    """Linear warm-up over `warmup` steps, constant, then linear decay to zero (CycleGAN's schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    return max(0.0, (steps - step) / max(1, steps - decay_start))


def validation_subjects(subjects: list[tuple[str, str]], n: int, seed: int, keep=()) -> list[tuple[str, str]]:
    """n of the training subjects, drawn with the seed, never one of `keep` (subjects whose images must
    train, e.g. few-shot ones); none when fewer than two would be left to train on."""
    keep = {tuple(k) for k in keep}
    candidates = [s for s in subjects if tuple(s) not in keep]
    if n <= 0 or len(subjects) - n < 2 or len(candidates) < n:
        return []
    rng = np.random.default_rng([seed, 7919])  # its own stream: the batch order is unaffected
    return sorted(candidates[i] for i in rng.choice(len(candidates), size=n, replace=False))


def masked_psnr(prediction: np.ndarray, reference: np.ndarray, mask: np.ndarray,
                scale_mask: np.ndarray | None = None) -> float:
    """PSNR (dB) inside the mask on metrics.py's scale: both divided by the reference's robust maximum in
    scale_mask (default: the mask; a lesion is scored on its organ's scale)."""
    from dwisynth.metrics import robust_max

    scale = robust_max(reference, mask if scale_mask is None else scale_mask)
    mse = float(np.mean(((prediction[mask] - reference[mask]) / scale) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def model_compute(model_path, benchmark_path=None) -> dict:
    """What a model cost: parameters of its inference network, trained and selected steps, the trainer's step-loop
    seconds (model.pt; summed over resumes) and the whole job's wall seconds (Snakemake's benchmark file, set-up
    and export included; NaN without one). Equal steps are equal compute only if the costs stand beside the
    scores."""
    import pandas as pd

    record = torch.load(model_path, map_location="cpu", weights_only=True)
    parameters = int(sum(t.numel() for k, t in record["state_dict"].items()
                         if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))))
    seconds = float("nan")
    if benchmark_path and Path(benchmark_path).is_file():
        seconds = float(pd.read_csv(benchmark_path, sep="\t")["s"].iloc[-1])
    return {"parameters": parameters, "trained_steps": int(record["trained_steps"]),
            "selected_step": int(record.get("selected_step", record["trained_steps"])),
            "step_loop_seconds": float(record.get("training_seconds", float("nan"))),
            "train_seconds": round(seconds, 1)}


def intensity_range(data, percentile: float = 99.9, margin: float = 1.1) -> float:
    """Upper end of the network's intensity scale: a margin above the brightest input voxels in the masks.

    Fluid is many times brighter than the median tissue the images are normalized to
    (up to 9x in the abdomen), so a fixed range would clip it.
    """
    top = chunked_percentile(data.signal_chunks, percentile)  # the cohort's voxels are never all in memory
    return float(top * margin) if top is not None else 1.5


def _changed(old, new, prefix: str = "") -> list[str]:
    """Dotted keys where two fingerprint sources differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


class Trainer:
    """Train `model` on `data` (a `SliceDataset`) and write checkpoints, the log and `model.pt` to out_dir.

    model: a `Network`; meta: what `model.pt` records about the model (method, organ, b-values,
    subjects); every item of meta is part of the fingerprint.
    """

    def __init__(self, model, data, config: TrainerConfig, out_dir: str | Path, meta: dict):
        if len(data) == 0:
            raise ConfigError(f"no training slices for {meta.get('method')} {meta.get('organ', '')}: check the "
                              "split (train subjects) and that their shards hold the input b-values")
        self.model, self.config = model, config
        model.lesion_weight = config.lesion_weight
        self.data_digest = data.digest()  # every slice, the held-out validation subjects included
        self.validation_keys = validation_subjects(data.subject_keys(), config.validation_subjects, config.seed,
                                                   keep=data.pinned)
        if config.validation_subjects and not self.validation_keys:
            print(f"[train] {len(data.subject_keys())} training subjects: too few to hold {config.validation_subjects} "
                  "out for validation; the last step is exported", file=sys.stderr)
        if self.validation_keys:
            data, self.validation = data.split_subjects(self.validation_keys)
            meta = {**meta, "validation_subjects": [list(k) for k in self.validation_keys]}
        else:
            self.validation = None
        self.data, self.meta = data, meta
        # training slices that hold a lesion (lesion oversampling draws from them)
        self.lesion_slices = (np.zeros(0, int) if data.lesions is None
                              else np.flatnonzero(data.lesions.reshape(len(data.lesions), -1).any(1)))
        self.out_dir = Path(out_dir)
        self.device = training_device(config.device, job=f"training of {self.out_dir}")
        if config.threads:
            torch.set_num_threads(config.threads)
        if self.device.type == "cpu":
            torch.use_deterministic_algorithms(True)
            torch.set_flush_denormal(True)  # denormals in instance norm make CPU steps many times slower
        self.model.to(self.device)
        if model.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizers = {name: torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas))
                           for name, params in model.parameter_groups().items()}
        decay_start = config.decay_start if config.decay_start is not None else config.steps // 2
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s, n=config.steps, d=decay_start, w=config.warmup_steps: lr_factor(s, n, d, w))
            for name, opt in self.optimizers.items()}
        if config.grad_clip:
            # the networks call optimizer.step() themselves: clip in a pre-step hook, the same for every network
            for opt in self.optimizers.values():
                opt.register_step_pre_hook(self._clip_gradients)
        self.pad_multiple = model.inference_spec()["pad_multiple"]
        self.intensity_max = config.intensity_max or intensity_range(data)
        self.step = 0
        self.training_seconds = 0.0  # wall time of the step loop, summed over resumes (model.pt records it)
        self._loop_started = time.perf_counter()
        self.log_rows: list[dict] = []
        self._log_fields: list[str] | None = None  # the columns of the training_log.csv on disk (None: rewrite it)
        self._log_written = 0  # rows of log_rows already in that file
        self.best: dict | None = None  # {"step", "val_score", "val_psnr", "state_dict"} of the best validation
        self.collapses = 0  # consecutive validations collapse_db below the best
        # the warm-up phase's (not selectable) best and latest validation, for a network that starts its next
        # phase from the best (`Network.warm_start`); and the step it started from
        self.warm: dict | None = None  # {"best": {"step", "val_score", "state_dict"}, "latest": val_score}
        self.warm_started: int | None = None
        self.stopped: str | None = None
        self.fingerprint_sources = self._fingerprint_sources()
        self.fingerprint = hashlib.sha256(json.dumps(self.fingerprint_sources, sort_keys=True).encode()).hexdigest()[:16]

    def _clip_gradients(self, optimizer, args, kwargs) -> None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"] if p.grad is not None],
                                       self.config.grad_clip)

    def _fingerprint_sources(self) -> dict:
        """Everything that shapes the trained weights; a checkpoint must share all of it to be resumed."""
        trainer = {k: v for k, v in asdict(self.config).items() if k not in NOT_FINGERPRINTED}
        network = asdict(self.model.config)
        return json.loads(json.dumps({
            "network": network, "trainer": trainer, "meta": self.meta, "intensity_max": self.intensity_max,
            "spec": self.model.inference_spec(), "data": self.data_digest,
            "files": {k: weights_file_digest(path) for k, path in config_weight_files(self.model.config).items()},
            "libraries": {name: metadata.version(name) for name in FINGERPRINTED_LIBRARIES},
            "code": code_digest(self.model.name)}, sort_keys=True, default=str))

    # --- data ------------------------------------------------------------------------------
    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.config.seed, epoch]).permutation(len(self.data))

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        n, bs = len(self.data), self.config.batch_size
        indices, orders = [], {}
        for k in range(step * bs, (step + 1) * bs):
            epoch = k // n
            if epoch not in orders:
                orders[epoch] = self._order(epoch)
            indices.append(int(orders[epoch][k % n]))
        d = self.data
        on_lesion = self._lesion_items(indices, generator)
        inputs = torch.from_numpy(d.inputs[indices])
        targets = torch.from_numpy(d.targets[indices])
        present = torch.from_numpy(d.present[indices])
        mask = torch.from_numpy(d.masks[indices])
        extra = [] if d.lesions is None else [torch.from_numpy(d.lesions[indices])[:, None].float()]
        stack = torch.cat([inputs, targets, *extra, mask[:, None].float()], 1)  # the mask stays last (_crop)
        stack = self._crop(stack, generator, on_lesion)
        n_in, n_t = inputs.shape[1], targets.shape[1]
        imax = self.intensity_max
        lesion = (stack[:, n_in + n_t] > 0.5).to(self.device) if extra else None
        return Batch(inputs_to_network(stack[:, :n_in], d.input_scaling, imax).to(self.device),
                     to_network(stack[:, n_in:n_in + n_t], imax).to(self.device),
                     present.to(self.device), (stack[:, -1] > 0.5).to(self.device), lesion)

    def _lesion_items(self, indices: list[int], generator: torch.Generator) -> list[bool]:
        """Lesion oversampling (nnU-Net's foreground oversampling, for lesion masks): each batch item is
        replaced, with probability `lesion_oversample`, by a random lesion-bearing slice whose crop is then
        centred on the lesion. A lesion covers a few percent of the slices, so without it most batches hold
        none and the lesion-weighted loss rarely acts. Draws nothing when off, so other runs keep their batches."""
        share = self.config.lesion_oversample
        if not share or not len(self.lesion_slices):
            return [False] * len(indices)
        chosen = []
        for i in range(len(indices)):
            if float(torch.rand(1, generator=generator)) < share:
                pick = int(torch.randint(len(self.lesion_slices), (1,), generator=generator))
                indices[i] = int(self.lesion_slices[pick])
                chosen.append(True)
            else:
                chosen.append(False)
        return chosen

    def _crop(self, stack: torch.Tensor, generator: torch.Generator, on_lesion=None) -> torch.Tensor:
        """Square crops centred on a random voxel of the organ mask (the stack's last channel), or of the
        lesion (the channel before it) for the items marked in on_lesion.

        Foreground sampling (nnU-Net's habit): a random crop of a large field of view is
        mostly background, where predicting a constant already scores well.
        """
        size = self.config.crop
        if size is None:
            return pad_to_multiple(stack, self.pad_multiple, 0.0)[0]
        h, w = stack.shape[-2:]
        stack = F.pad(stack, (0, max(0, size - w), 0, max(0, size - h)))  # zero intensity = background
        h, w = stack.shape[-2:]
        out = []
        for i, item in enumerate(stack):
            inside = torch.nonzero(item[-2 if on_lesion and on_lesion[i] else -1] > 0.5)
            if len(inside):
                cy, cx = inside[int(torch.randint(len(inside), (1,), generator=generator))].tolist()
            else:
                cy, cx = int(torch.randint(h, (1,), generator=generator)), int(torch.randint(w, (1,), generator=generator))
            top = min(max(cy - size // 2, 0), h - size)
            left = min(max(cx - size // 2, 0), w - size)
            out.append(item[:, top:top + size, left:left + size])
        return torch.stack(out)

    # --- checkpoints -----------------------------------------------------------------------
    def _atomic_save(self, obj, path: Path, keep_previous: Path | None = None) -> None:
        """Write, fsync, then rename into place: a kill or a power cut mid-write never leaves a broken
        file under `path`; keep_previous: move the file `path` replaces there first."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous is not None and path.exists():
            # a second name for the current file, then renamed over the previous one: `path` itself never
            # goes missing (moving it aside first left a gap in which a kill found no checkpoint.pt)
            linked = keep_previous.with_suffix(keep_previous.suffix + ".tmp")
            linked.unlink(missing_ok=True)
            try:
                os.link(path, linked)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, linked)
            os.replace(linked, keep_previous)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the renames themselves reach the disk
        finally:
            os.close(directory)

    def save_checkpoint(self) -> None:
        self._atomic_save({
            "fingerprint": self.fingerprint, "fingerprint_sources": self.fingerprint_sources, "step": self.step,
            "model": self.model.state_dict(), "extra": self.model.extra_state(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "torch_rng": torch.get_rng_state(), "log_rows": self.log_rows,
            # dropout and noise drawn on the GPU use its own generator: without it a resumed CUDA run diverges
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "best": self.best, "collapses": self.collapses, "warm": self.warm, "warm_started": self.warm_started,
            "training_seconds": self.training_seconds + time.perf_counter() - self._loop_started,
        }, self.out_dir / CHECKPOINT, keep_previous=self.out_dir / PREVIOUS_CHECKPOINT)

    def _load_checkpoint(self) -> tuple[Path, dict] | None:
        """The newest readable checkpoint: checkpoint.pt, or the previous one when it is corrupt."""
        for path in (self.out_dir / CHECKPOINT, self.out_dir / PREVIOUS_CHECKPOINT):
            if not path.exists():
                continue
            try:
                # On CPU: the RNG state must stay a CPU tensor (torch.set_rng_state rejects a CUDA one);
                # load_state_dict moves weights and optimizer state to the parameters' device.
                state = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(state, dict) or "step" not in state or "model" not in state:
                    raise ValueError("not a dwisynth checkpoint")
                return path, state
            except Exception as exc:  # torch raises many types for a truncated or garbled file
                print(f"[train] {path} is unreadable ({type(exc).__name__}: {exc}); "
                      + ("trying the previous checkpoint" if path.name == CHECKPOINT else "training from scratch"),
                      file=sys.stderr)
        return None

    def try_resume(self) -> bool:
        loaded = self._load_checkpoint()
        if loaded is None:
            return False
        path, state = loaded
        if state.get("fingerprint") != self.fingerprint:
            changed = _changed(state.get("fingerprint_sources", {}), self.fingerprint_sources)
            print(f"[train] {path} was trained with other settings or data (changed: {', '.join(changed)}); "
                  "training from scratch", file=sys.stderr)
            return False
        self.model.load_state_dict(state["model"])
        self.model.load_extra_state(state["extra"])
        for k, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        for k, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][k])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step = int(state["step"])
        self.log_rows = [row for row in state["log_rows"] if row["step"] <= self.step]
        self._log_fields = None  # the file may hold rows past the checkpoint: rewrite it from these
        self.best, self.collapses = state.get("best"), state.get("collapses", 0)
        self.warm, self.warm_started = state.get("warm"), state.get("warm_started")
        self.training_seconds = float(state.get("training_seconds", 0.0))
        print(f"[train] resumed from {path} at step {self.step}", file=sys.stderr)
        return True

    def export(self) -> Path:
        """model.pt: the inference network's weights (CPU tensors) and what it needs to run."""
        self.training_seconds += time.perf_counter() - self._loop_started
        self._loop_started = time.perf_counter()
        network = self.model.inference_network()
        weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        selection = {"selected_step": self.step, "warm_started_from": self.warm_started}
        if self.best is not None:
            weights = self.best["state_dict"]
            selection = {**selection, "selected_step": self.best["step"], "validation_psnr": self.best["val_psnr"],
                         "validation_score": self.best["val_score"]}
            if self.best.get("val_lesion_psnr") is not None:
                selection["validation_lesion_psnr"] = self.best["val_lesion_psnr"]
        record = {"format": MODEL_FORMAT, **self.meta, **self.model.inference_spec(),
                  "intensity_max": self.intensity_max, "trained_steps": self.step, "fingerprint": self.fingerprint,
                  "training_seconds": round(self.training_seconds, 2),
                  **selection, "stopped_early": self.stopped or "", "state_dict": weights}
        path = self.out_dir / MODEL
        self._atomic_save(record, path)
        return path

    # --- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Masked PSNR per target b of the inference network on the validation subjects' slices."""
        network = self.model.inference_network()
        was_training = network.training
        network.eval()
        v, imax, predictions = self.validation, self.intensity_max, []
        for start in range(0, len(v), 16):
            x = inputs_to_network(torch.from_numpy(v.inputs[start:start + 16]), v.input_scaling, imax)
            x, (h, w) = pad_to_multiple(x, self.pad_multiple, -1.0)
            y = self.model.predict(network, x.to(self.device), v.target_b).float().cpu()[..., :h, :w]
            predictions.append(from_network(y, imax).numpy())
        network.train(was_training)
        prediction = np.concatenate(predictions)
        scores = {}
        for j, b in enumerate(v.target_b):
            rows = v.present[:, j]
            mask = v.masks[rows]
            if mask.any():
                scores[f"val_psnr_b{b:g}"] = masked_psnr(prediction[rows, j], v.targets[rows, j], mask)
        scores["val_psnr"] = float(np.mean(list(scores.values()))) if scores else float("nan")
        lesion = [masked_psnr(prediction[rows, j], v.targets[rows, j], v.lesions[rows] & v.masks[rows], v.masks[rows])
                  for j, rows in ((j, v.present[:, j]) for j in range(len(v.target_b)))
                  if v.lesions is not None and (v.lesions[rows] & v.masks[rows]).any()]
        if lesion:  # logged, never selected on: what the lesion settings buy, on train-split validation
            scores["val_lesion_psnr"] = float(np.mean(lesion))
        bridged = self.model.bridged_references(to_network(torch.from_numpy(v.targets), imax),
                                                torch.from_numpy(v.present), v.target_b)
        for b, (rows, reference) in bridged.items():
            rows = rows.numpy()
            scores[f"val_bridged_psnr_b{b:g}"] = masked_psnr(prediction[rows, v.target_b.index(b)],
                                                            from_network(reference, imax)[:, 0].numpy(), v.masks[rows])
        # the exported step is chosen on every scored b, the bridged ones too (a held-out b may drift alone)
        scored = [value for key, value in scores.items() if key.startswith(("val_psnr_b", "val_bridged_psnr_b"))]
        scores["val_score"] = float(np.mean(scored)) if scored else float("nan")
        return scores

    def _weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the inference network's weights now (a best step to export or start from)."""
        return {k: t.detach().cpu().clone() for k, t in self.model.inference_network().state_dict().items()}

    def _judge_validation(self, scores: dict[str, float]) -> None:
        """Keep the best weights; stop on a collapse (twice collapse_db below the best) or a NaN score."""
        value = scores["val_score"]
        if not np.isfinite(value):
            self.stopped = f"validation PSNR is {value} at step {self.step}"
            return
        if not self.model.selectable(self.step - 1):
            if self.warm is None or value > self.warm["best"]["val_score"]:
                self.warm = {"best": {"step": self.step, "val_score": value, "state_dict": self._weights()}}
            self.warm["latest"] = value
            return
        if self.best is None or value > self.best["val_score"]:
            self.best = {"step": self.step, "val_score": value, "val_psnr": scores["val_psnr"],
                         "val_lesion_psnr": scores.get("val_lesion_psnr"), "state_dict": self._weights()}
            self.collapses = 0
        elif value < self.best["val_score"] - self.config.collapse_db:
            self.collapses += 1
            if self.collapses >= 2:
                self.stopped = (f"validation PSNR collapsed to {value:.1f} dB at step {self.step} from "
                                f"{self.best['val_score']:.1f} dB at step {self.best['step']}")
        else:
            self.collapses = 0

    def _warm_start(self, phase: str) -> None:
        """At the first step of a phase that `Network.warm_start`s: the inference network goes back to the
        warm-up's best validated weights when validation has fallen since (a long warm-up overfits)."""
        if self.warm is None or not self.model.warm_start(phase):
            return
        best = self.warm["best"]
        if best["val_score"] > self.warm["latest"]:
            weights = {k: t.to(self.device) for k, t in best["state_dict"].items()}
            self.model.inference_network().load_state_dict(weights)
            self.warm_started = best["step"]
            print(f"[train] {phase} starts from step {best['step']} ({best['val_score']:.2f} dB), the best validated "
                  f"step of the phase before; its last validation read {self.warm['latest']:.2f} dB", file=sys.stderr)
        self.warm = None

    def _check_losses(self, losses: dict[str, float]) -> None:
        bad = {k: v for k, v in losses.items() if not np.isfinite(v) or abs(v) > self.config.loss_limit}
        if bad:
            self.stopped = f"loss blew up at step {self.step}: " + ", ".join(f"{k}={v:.3g}" for k, v in bad.items())

    def _stop(self) -> Path:
        """Stop a diverged run: export the best validated weights, or fail when there are none."""
        advice = (f"lower the lr ({self.config.lr:g}), add training.warmup_steps or training.grad_clip, "
                  "or train fewer steps")
        self.log_rows.append({"step": self.step, "stopped": self.stopped})
        self._write_log()
        name = f"{self.meta.get('method')} {self.meta.get('organ', '')}".strip()
        if self.best is None:
            raise TrainingDiverged(f"{name}: {self.stopped}, before any validated weights; {advice}")
        self.save_checkpoint()
        print(f"[train] {name}: {self.stopped}; stopped and exported the weights of step {self.best['step']} "
              f"(validation PSNR {self.best['val_psnr']:.2f} dB). To go further: {advice}", file=sys.stderr)
        return self.export()

    # --- the loop --------------------------------------------------------------------------
    def _write_log(self) -> None:
        """Bring training_log.csv up to the rows in memory. New rows are appended while the columns stay
        the same; the file is rewritten whole (atomically) when a row brings a new column (the first
        validation) and after a resume, whose rows come from the checkpoint and may undo steps the killed
        run had logged. Rewriting every time cost O(steps²): minutes over a 100k-step GPU run."""
        if not self.log_rows:
            return
        appendable = self._log_fields is not None and self._log_written <= len(self.log_rows)
        # only the new rows are scanned for new columns: a scan of every row per call was O(steps²) again
        new_rows = self.log_rows[self._log_written:] if appendable else self.log_rows
        fields = list(dict.fromkeys([*(self._log_fields if appendable else []), *(k for row in new_rows for k in row)]))
        path = self.out_dir / LOG
        if appendable and fields == self._log_fields and path.exists():
            with open(path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=fields).writerows(self.log_rows[self._log_written:])
        else:
            tmp = self.out_dir / (LOG + ".tmp")
            with open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.log_rows)
            os.replace(tmp, path)
            self._log_fields = fields
        self._log_written = len(self.log_rows)

    def fit(self, stop_after: int | None = None) -> Path:
        """Train to `config.steps` (resuming if a matching checkpoint exists) and export model.pt.

        stop_after: return after this many steps without exporting (used to test resume).
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.try_resume()
        self._loop_started = time.perf_counter()
        cfg = self.config
        window: dict[str, list[float]] = {}
        images, started = 0, time.perf_counter()
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{self.meta.get('method')} "
                       f"{self.meta.get('organ', '')}".strip(), file=sys.stderr, mininterval=5)
        self.model.train()
        phase = None
        while self.step < cfg.steps:
            if self.model.phase(self.step) != phase:
                phase = self.model.phase(self.step)
                if self.step > 0 and self.model.phase(self.step - 1) != phase:
                    self._warm_start(phase)
                self.model.start_phase(phase, self.optimizers)
            generator = step_generator(cfg.seed, self.step)
            batch = self.batch(self.step, generator)
            with autocast:
                losses = self.model.training_step(batch, self.optimizers, generator, self.step)
            with warnings.catch_warnings():  # phases leave some optimizers idle; their schedule still advances
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
                for sched in self.schedulers.values():
                    sched.step()
            self.step += 1
            images += len(batch.inputs)
            for k, v in losses.items():
                window.setdefault(k, []).append(v)
            self._check_losses(losses)
            validated = {}
            if self.validation is not None and not self.stopped and (
                    self.step % cfg.validate_every == 0 or self.step == cfg.steps):
                validated = self.validate()
                self._judge_validation(validated)
            if self.stopped:
                if bar is not None:
                    bar.close()
                return self._stop()
            if bar is not None:
                bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps or validated:
                elapsed = time.perf_counter() - started
                row = {"step": self.step, "phase": phase,
                       "epoch": round(self.step * cfg.batch_size / len(self.data), 3),
                       "lr": next(iter(self.optimizers.values())).param_groups[0]["lr"],
                       "images_per_s": round(images / elapsed, 2) if elapsed > 0 else "",
                       **{k: round(float(np.mean(v)), 6) for k, v in window.items()},
                       **{k: round(v, 3) for k, v in validated.items()}}
                self.log_rows.append(row)
                self._write_log()
                if bar is not None:
                    bar.set_postfix({k: f"{float(np.mean(window[k])):.3g}" for k in list(window)[:3]})
                window, images, started = {}, 0, time.perf_counter()
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
            if stop_after is not None and self.step >= stop_after:
                break
        if bar is not None:
            bar.close()
        if self.step < cfg.steps:
            return self.out_dir / CHECKPOINT
        return self.export()
