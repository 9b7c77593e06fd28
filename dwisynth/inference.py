"""Synthesis with a trained model (model.pt), and the other image sources scored beside it.

Every source returns target-b volumes on the normalized (S/S0) scale of the input,
in the input's voxel grid, so they can be written with the acquired geometry:
- `synthesize_volume`: a trained network, slice by slice along the third axis;
- `cdwi_volume`: computed DWI from the input b-values only (the clinical baseline);
- `noise_free_reference`: the demo's noise-free truth brought onto the normalized scale
  of the acquisition (the noise-free reference: scored against the acquisition it shows the room left;
  not a bound, since under Rician noise the MSE-optimal prediction is the Rician mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dwisynth.device import inference_device
from dwisynth.diffusion import computed_dwi
from dwisynth.errors import ConfigError, DwisynthError
from dwisynth.networks.base import build_inference_network
from dwisynth.loader import inputs_to_network
from dwisynth.networks.blocks import from_network, pad_to_multiple

MODEL_FORMAT = "dwisynth-model/2"  # 2: the network is rebuilt from `method` and `kwargs`


class ModelFileError(DwisynthError):
    """A model file is missing, not a dwisynth model, or does not fit the data."""


@dataclass
class SynthesisModel:
    network: torch.nn.Module
    record: dict
    device: torch.device

    @property
    def input_b(self) -> list[float]:
        return [float(b) for b in self.record["input_b"]]

    @property
    def target_b(self) -> list[float]:
        """The b-values synthesized by default (a b-conditioned model: its trained and held-out targets)."""
        return [float(b) for b in self.record.get("synthesize_b", self.record["target_b"])]

    @property
    def b_conditioned(self) -> bool:
        """True for a model that takes any b in `b_range` (stage 2), False for fixed target b-values."""
        return bool(self.record.get("b_conditioned", False))

    def check_b(self, wanted, source: str = "model") -> list[float]:
        """The requested b-values if this model can synthesize them, else a ConfigError that says what can."""
        wanted = [float(b) for b in wanted]
        if self.b_conditioned:
            lo, hi = self.record["b_range"]
            outside = [b for b in wanted if not lo <= b <= hi]
            if outside:
                raise ConfigError(f"{source} synthesizes b in [{lo:g}, {hi:g}] (minegan.b_range), not "
                                  f"{', '.join(f'{b:g}' for b in outside)}")
        else:
            unknown = [b for b in wanted if b not in self.target_b]
            if unknown:
                raise ConfigError(f"{source} ({self.record['method']}) synthesizes b = "
                                  f"{', '.join(f'{b:g}' for b in self.target_b)} only, not "
                                  f"{', '.join(f'{b:g}' for b in unknown)}; any other b needs a MineGAN model "
                                  "(results/models/minegan/<organ>/model.pt)")
        return wanted


def load_model(path: str | Path, device: str = "auto") -> SynthesisModel:
    """Load model.pt (written by the trainer, on any device) for inference on `device`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found; train it first (snakemake results/models/...)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise ModelFileError(f"{path}: not a readable model file ({exc.__class__.__name__}); retrain it") from exc
    if isinstance(record, dict) and str(record.get("format", "")).startswith("dwisynth-model/") \
            and record["format"] != MODEL_FORMAT:
        raise ModelFileError(f"{path}: written by another dwisynth version ({record['format']}, this one reads "
                             f"{MODEL_FORMAT}); retrain it (delete the file and rerun the workflow)")
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{path}: not a dwisynth model ({MODEL_FORMAT}); a training checkpoint is "
                             "checkpoint.pt, the model for synthesis is model.pt beside it")
    network = build_inference_network(record)
    try:
        network.load_state_dict(record["state_dict"])
    except RuntimeError as exc:  # the network's code changed its layers since this file was written
        raise ModelFileError(f"{path}: its weights do not fit this version's {record.get('method')} network "
                             f"({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}); "
                             "retrain it (delete the file and rerun the workflow)") from exc
    target = inference_device(device)
    return SynthesisModel(network.to(target).eval(), record, target)


@torch.no_grad()
def synthesize_slices(model: SynthesisModel, inputs: np.ndarray, b=None, batch_size: int = 16) -> np.ndarray:
    """(n, n_inputs, H, W) S/S0 slices -> (n, len(b), H, W) synthetic S/S0 slices.

    b: the b-values to synthesize (default: the model's targets); a model with fixed targets returns those
    among its targets, a b-conditioned model (stage 2) any b in its range.
    """
    wanted = model.check_b(model.target_b if b is None else b)
    imax = float(model.record["intensity_max"])
    multiple = int(model.record["pad_multiple"])
    out = []
    for start in range(0, len(inputs), batch_size):
        x = inputs_to_network(torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch_size], np.float32)),
                              model.record.get("input_scaling"), imax)
        x, (h, w) = pad_to_multiple(x, multiple, -1.0)
        x = x.to(model.device)
        if model.b_conditioned and hasattr(model.network, "synthesize"):  # MineGAN: monotone in b, stage 1 once
            y = model.network.synthesize(model.network.stack(x), wanted, model.record["b_range"][1])
        elif model.b_conditioned:
            y = torch.cat([model.network(x, torch.full((len(x),), value, device=model.device)) for value in wanted], 1)
        else:
            y = model.network(x)[:, [model.target_b.index(value) for value in wanted]]
        out.append(from_network(y.float().cpu()[..., :h, :w], imax).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(wanted), *inputs.shape[2:]), np.float32)


def _volumes_at(dwi: np.ndarray, bvals, wanted, subject: str) -> np.ndarray:
    bvals = [float(b) for b in bvals]
    missing = [b for b in wanted if b not in bvals]
    if missing:
        raise DwisynthError(f"sub-{subject}: the model needs b = {', '.join(f'{b:g}' for b in missing)} as input, "
                            f"the image has b = {', '.join(f'{b:g}' for b in bvals)}")
    return dwi[..., [bvals.index(b) for b in wanted]]


def synthesize_volume(model: SynthesisModel, dwi: np.ndarray, bvals, subject: str = "?", b=None) -> np.ndarray:
    """Normalized 4D DWI (X, Y, Z, B) -> synthetic (X, Y, Z, len(b)), slice by slice along Z (b: as
    `synthesize_slices`)."""
    inputs = _volumes_at(dwi, bvals, model.input_b, subject)  # (X, Y, Z, n_in)
    slices = np.transpose(inputs, (2, 3, 0, 1))  # (Z, n_in, X, Y): the slice shards' layout
    return np.transpose(synthesize_slices(model, slices, b), (2, 3, 0, 1)).astype(np.float32)


def cdwi_volume(dwi: np.ndarray, bvals, input_b, target_b, mask=None) -> np.ndarray:
    """Computed DWI at target_b from the input b-values only: (X, Y, Z, n_targets)."""
    inputs = _volumes_at(dwi, bvals, [float(b) for b in input_b], "?")
    return computed_dwi(inputs, np.asarray(input_b, float), input_b, target_b, mask=mask).astype(np.float32)


def noise_free_reference(noise_free: np.ndarray, truth_bvals, raw_b0: np.ndarray, normalized_b0: np.ndarray,
                         target_b) -> np.ndarray:
    """The demo's noise-free signal at target_b on the acquisition's normalized scale.

    Normalization divided each voxel by a smooth bias field and the median b0; the
    ratio raw b0 / normalized b0 is exactly that factor, voxel by voxel.
    """
    truth_bvals = [float(b) for b in truth_bvals]
    factor = np.where(normalized_b0 > 0, raw_b0 / np.where(normalized_b0 > 0, normalized_b0, 1), np.nan)
    factor = np.where(np.isfinite(factor) & (factor > 0), factor, np.nanmedian(factor))
    picked = noise_free[..., [truth_bvals.index(float(b)) for b in target_b]]
    return (picked / factor[..., None]).astype(np.float32)
