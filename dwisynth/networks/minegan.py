"""Stage 2: a b-conditioned generator and a MineGAN-style miner that synthesize any b in a range.

The abstract (seed 000) names MineGAN (Wang et al., CVPR 2020) and judges it at b = 75 and 850, never
trained on; architecture, losses and schedule are ours:

- Input: what a test subject has, the acquired `bvalues.inputs` plus stage 1's (DC²Anet's) images at
  `bvalues.targets`, from that organ's stage-1 model.pt, which the inference network embeds (one file
  synthesizes from the acquired inputs). The same stack in training (stage 1 run on the training slices).
- b enters continuously: Fourier features of b/1000 -> FiLM (scale, shift) per residual block. A stack
  channel at the requested b is blanked (set to the network's zero), in training and at inference, so the
  generator learns to interpolate between neighbours, not to copy.
- The miner M(z, b), a 2-layer MLP, adds to the FiLM parameters of the pretrained generator (its last layer
  starts at zero, so mining starts from the pretrained conditioning). z = 0 at inference.
- Phases: pretrain (G and its b-embedding, with D), mine (M and D; G frozen), finetune (M, G, D). In the
  mining phases the generator is also judged, unpaired, at b drawn uniformly from `b_range`: the projection
  discriminator's b-embedding is continuous, so it has an opinion at b it holds no image of.
- Losses (`networks/losses.py`): LSGAN, L1 (100), -log SSIM (0.05) at acquired b. The bridge (L1, 100, half
  the batch), in every phase: at a b drawn between two neighbouring stage-1 target b-values (400-1000 in the
  demo), the generator, with no stack channel blanked (as at a held-out b), is judged against the log-linear
  reading of the sample's acquired images at those two b-values. Above b ~ 400 perfusion has decayed and the
  signal is close to mono-exponential between neighbours, so the reading is a fair label. It uses no image at
  the b it judges. Validation scores held-out b between stage-1 targets
  against the same reading of the validation subjects' images (`val_bridged_psnr_b850`), so the exported
  step sees a held-out b drift.

Variants (sharing the `minegan` config block): `mineganfewshot` starts from the organ's zero-shot model and
mines and fine-tunes again with `fewshot.k` slices per held-out b from train-split subjects; `bcond` (the
ablation) is the same generator and b-embedding trained for the same total steps with no miner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from dwisynth.errors import ConfigError
from dwisynth.networks.base import Network, NetworkConfig, build_inference_network
from dwisynth.networks.blocks import (FiLMCode, FiLMResnetGenerator, ProjectionDiscriminator, fourier_features,
                                      one_b_per_sample)
from dwisynth.networks.losses import lsgan, masked_l1, ssim_loss

BLANK = -1.0  # a blanked stack channel: the network-scale zero intensity
MONOTONE_STEP = 25.0  # s/mm²: the lattice of `BValueSynthesizer.synthesize`'s monotone envelope
EXTRAPOLATION_STEP_FACTOR = 4  # beyond the stack's largest b the lattice steps 4x wider (100 s/mm²): b 2000 costs
                               # 51 generator passes, not 81


def _weight(default: float, description: str) -> float:
    return field(default=default, metadata={"minimum": 0, "description": description})


@dataclass
class MineGANWeights:
    adversarial: float = _weight(1.0, "LSGAN at acquired b")
    voxel: float = _weight(100.0, "L1 at acquired b")
    ssim: float = _weight(0.05, "-log SSIM at acquired b")
    unseen: float = _weight(1.0, "LSGAN at b drawn from b_range (mining phases; no image needed)")
    bridge: float = _weight(100.0, (
        "L1, on half the batch, at a b drawn between two neighbouring stage-1 target b-values a sample acquired, "
        "against the log-linear reading of its images there: no image at that b is "
        "needed. Without it the generator's answer between trained b-values was never judged, and ten times the "
        "demo steps let it drift: held-out b 850 fell to 9.9 dB (CPU, brain) and 16.9 dB (GPU, full size, "
        "abdomen) while b 800 and 1000 rose"))


@dataclass
class FewShotConfig:
    k: int = field(default=4, metadata={"minimum": 1, "description": "slices per held-out b (mineganfewshot)"})
    subjects: list[str] = field(default_factory=list, metadata={
        "description": "cohort/subject keys to draw them from (train split); [] = every train subject that "
                       "acquired the b"})
    mine_steps: int = field(default=500, metadata={"minimum": 0, "description": "mining steps on the few shots"})
    finetune_steps: int = field(default=500, metadata={"minimum": 0, "description": "fine-tuning steps on them"})
    share: float = field(default=0.25, metadata={
        "exclusiveMinimum": 0, "maximum": 0.9,
        "description": "share of training slices that are few-shot images (repeated to reach it)"})
    lr: float | None = field(default=None, metadata={
        "exclusiveMinimum": 0, "description": (
            "learning rate of the few-shot phases (null: 10 x the block's lr). The miner's offset starts at zero "
            "and has a few hundred steps: at the block's lr, 100 mining steps moved a toy's b 850 19% of the way "
            "to its shots, at 10x 54% (both without the bridge)")})
    bridge: float = field(default=0.0, metadata={
        "minimum": 0, "description": (
            "bridge weight in the few-shot phases. The bridge labels b between trained stage-1 b-values with "
            "their log-linear reading, which is what the shots at a held-out b there (850) are to correct: with "
            "the zero-shot weight (100), 100 mining steps at 10x the lr moved a toy's b 850 16% of the way to its "
            "shots, without it 54%")})


@dataclass
class MineGANConfig(NetworkConfig):
    steps: int | None = field(default=None, metadata={
        "description": "leave unset: pretrain_steps + mine_steps + finetune_steps set the length"})
    pretrain_steps: int = field(default=20000, metadata={"minimum": 1, "description": "phase A: G on seen b"})
    mine_steps: int = field(default=5000, metadata={"minimum": 0, "description": "phase B: miner and D, G frozen"})
    finetune_steps: int = field(default=5000, metadata={"minimum": 0, "description": "phase C: miner, G and D"})
    ngf: int = field(default=64, metadata={"minimum": 4, "description": "generator base channels"})
    ndf: int = field(default=64, metadata={"minimum": 4, "description": "discriminator base channels"})
    n_residual: int = field(default=6, metadata={"minimum": 1, "description": "FiLM residual blocks"})
    norm: str = field(default="none", metadata={"enum": ["none", "instance"], "description": "generator norm"})
    upsample: str = field(default="bilinear", metadata={"enum": ["bilinear", "resize", "transposed"], "description":
                          "generator upsampling: bilinear (aligned + 3x3 conv), resize (nearest + conv, half a pixel "
                          "off per level) or transposed conv"})
    activation: str = field(default="leaky", metadata={"enum": ["leaky", "relu"], "description": (
        "generator activation. relu (the published generators) died at ten times the demo steps (CPU, "
        "abdomen): after one loss spike every unit of the generator's last layer was zero on every input, the "
        "correction a constant, and validation fell 3 dB for good; LeakyReLU 0.2 cannot die")})
    grad_clip: float | None = field(default=10.0, metadata={
        "exclusiveMinimum": 0, "description": (
            "max global gradient norm per step (null: training.grad_clip). At ten times the demo steps on a GPU "
            "the brain's LeakyReLU generator blew up without it (validation 26.0 -> 3.9 dB at step 1600); with "
            "10, validation at the trained b rose in every run (CPU and GPU, abdomen and brain)")})
    n_frequencies: int = field(default=2, metadata={"minimum": 1, "description": (
        "Fourier features of b/1000 (periods 2000 / 2^k s/mm²). Periods shorter than the spacing of the trained "
        "b-values give an unseen b a code unlike any trained one: with 6 (down to 62 s/mm²), ten times the demo "
        "steps turned b 850 into noise (brain, train-split subjects: 22.3 -> 7.7 dB); with 2 it held (22.0)")})
    embed_width: int = field(default=64, metadata={"minimum": 4, "description": "b-embedding MLP width"})
    z_dim: int = field(default=8, metadata={"minimum": 1, "description": "miner noise (0 at inference)"})
    miner_width: int = field(default=64, metadata={"minimum": 4, "description": "miner MLP width"})
    correction: str = field(default="node", metadata={
        "enum": ["node", "free"],
        "description": "node: the share of the generator's correction that corrects a reading between acquired "
                       "b-values is scaled by the reading's error factor (b - b_lower)(b_upper - b), so it shrinks "
                       "between close acquired b-values (75 between 0 and 100), while a reading of stage-1 images "
                       "(850 between 800 and 1000) keeps the whole correction; free: unscaled (stop 18's design)"})
    extrapolation: str = field(default="fit", metadata={
        "enum": ["fit", "two-point"],
        "description": "the reading beyond the stack's largest available b (inference beyond b 1000; training at "
                       "a blanked 1000): fit, from the largest along the least-squares log-slope of the stage-1 "
                       "channels (capped at 0); two-point, the line through the two largest (issue 41: x 6 their "
                       "errors at 2000, and rising where the last is the brighter)"})
    b_range: tuple[float, float] = field(default=(0.0, 2000.0), metadata={
        "description": "b-values (s/mm²) the model may be asked for"})
    weights: MineGANWeights = field(default_factory=MineGANWeights,
                                    metadata={"description": "loss weights (0 drops a term)"})
    fewshot: FewShotConfig = field(default_factory=FewShotConfig, metadata={
        "description": "mineganfewshot: adapt the miner on k acquired slices per held-out b (train subjects only)"})

    def __post_init__(self):
        if self.steps is not None:
            raise ConfigError("minegan.steps: the phases set the length; set pretrain_steps, mine_steps and "
                              "finetune_steps instead")
        lo, hi = self.b_range
        if not 0 <= lo < hi:
            raise ConfigError(f"minegan.b_range must be [low, high] with 0 <= low < high, not {list(self.b_range)}")


class BValueSynthesizer(nn.Module):
    """The inference network: acquired inputs (N, n_in, H, W) and b (N,) -> the image at b (N, 1, H, W).

    Holds the frozen stage-1 generator, the FiLM generator, its b-embedding and (mined models) the miner.
    """

    def __init__(self, stage1: dict, stack_b: list[float], ngf: int, n_residual: int, norm: str, upsample: str,
                 n_frequencies: int, embed_width: int, z_dim: int, miner_width: int, mined: bool,
                 correction: str = "free", n_acquired: int | None = None, activation: str = "relu",
                 extrapolation: str = "two-point"):
        super().__init__()
        self.correction, self.n_acquired = correction, n_acquired
        # model files written before the option read on with two points
        self.fit_above = (float(min(stack_b[n_acquired:])) if extrapolation == "fit" and n_acquired is not None
                          and len(stack_b) - n_acquired >= 2 else None)
        self.stage1 = build_inference_network(stage1).requires_grad_(False)
        self.n_frequencies, self.z_dim = n_frequencies, z_dim
        self.register_buffer("stack_b", torch.tensor(stack_b, dtype=torch.float32), persistent=False)
        # input: the stack plus its log-linear reading at b; output: a correction to that reading
        self.G = FiLMResnetGenerator(len(stack_b) + 1, 1, ngf, n_residual, norm, upsample, activation)
        last = self.G.up[-2]
        nn.init.zeros_(last.weight)  # a fresh generator returns the interpolation itself
        nn.init.zeros_(last.bias)
        code = 1 + 2 * n_frequencies
        self.embed = FiLMCode(code, embed_width, n_residual, self.G.channels)
        self.miner = FiLMCode(code + z_dim, miner_width, n_residual, self.G.channels) if mined else None

    def stack(self, x: torch.Tensor) -> torch.Tensor:
        """[acquired inputs, stage-1 images]: the stack a test subject has."""
        with torch.no_grad():
            self.stage1.eval()
            return torch.cat([x, self.stage1(x).to(x.dtype)], 1)

    def film(self, b: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        code = fourier_features(b, self.n_frequencies)
        film = self.embed(code)
        if self.miner is not None:
            z = torch.zeros(len(b), self.z_dim, device=b.device) if z is None else z
            film = film + self.miner(torch.cat([code, z], 1))
        return film

    def generate(self, stack: torch.Tensor, b: torch.Tensor, z: torch.Tensor | None = None,
                 blanking: bool = True) -> torch.Tensor:
        """The image at b (network scale); the training path. blanking: the stack channel at b itself is blanked
        (training, and the trained outputs at the stack's b-values); False: every channel is read, the
        continuous curve between them (`synthesize`)."""
        blank = (self.stack_b[None, :] - b[:, None]).abs() < 0.5  # (N, channels): the channel at b itself
        if not blanking:
            blank = torch.zeros_like(blank)
        guess = loglinear_reading(stack, self.stack_b, b, ~blank, self.fit_above)
        stack = torch.where(blank[:, :, None, None], torch.full_like(stack, BLANK), stack)
        correction = self.G(torch.cat([stack, guess], 1), self.film(b, z))
        if self.correction == "node":
            factor = node_factor(self.stack_b, b, ~blank, self.n_acquired)
            correction = correction * factor[:, None, None, None].to(correction.dtype)
        return torch.clamp(guess + correction, -1.0, 1.0)

    def synthesize(self, stack: torch.Tensor, b_values, b_max: float | None = None,
                   step: float = MONOTONE_STEP, envelope: str = "max") -> torch.Tensor:
        """Images at b_values (N, len(b_values), H, W), network scale: the inference rule, non-increasing in b
        in every voxel by construction (issue 38).

        `generate` blanks a stack channel only at exactly its b-value, so its output jumps there: the trained
        (blanked) answer at 0, 100, 400, 1000 against the reading of the channel itself a step beside them; on a
        25 s/mm² grid 53-70% of tissue voxels rose by over 0.5% of S0 somewhere (100-125, 375-425, 975-1000,
        0-25). Here:
        1. the continuous curve: `generate` with nothing blanked (continuous in b: the reading and the node
           factor are), plus at each stack b-value the offset that makes it equal the trained (blanked) output
           there, offsets read linearly between the stack b-values (held beyond the ends); so the trained
           b-values keep their outputs, and 75 gets the trained answers at 0 and 100, not the noisy inputs;
        2. that curve on a fixed lattice: every `step` s/mm² from 0 to the largest stack b, every 4 `step`
           beyond it up to b_max (default: the largest stack b) and on up to the largest requested b, and the
           stack b-values;
        3. a monotone envelope of it on the lattice up to the largest stack b (where the curve already falls, each
           equals it): "max" (default), its running maximum from the top down (a rise lifts the lower b-values,
           the high b keep their outputs); "min", its running minimum upwards; "mid", their mean. In the organ
           mask's noise-only voxels (b0 SNR < 10) the curve can rise as a whole; there "min"/"mid" pulled b 800-850
           down to the lowest low-b value (pelvis, noise-free truth: -2 to -4 dB at 800), "max" cost 0.3-0.8 dB.
           Beyond the largest stack b, the running minimum upwards from it: an extrapolation that rose lifted
           every b below it under "max" (issue 41: pelvis b 850 23.9 -> 13.3 dB against the truth with b_range
           up to 2000); so the images up to the largest stack b never depend on the lattice beyond it;
        4. a requested b is read linearly in log u (u = (t + 1) / 2, log S / 2) between the lattice points
           around it, so every b in between is monotone too.
        The lattice depends on the request only beyond b_max, so a b's image does not depend on what else is
        asked for (inference passes b_range's top as b_max)."""
        wanted = [float(b) for b in b_values]
        n, device = len(stack), stack.device
        nodes = sorted(float(b) for b in self.stack_b.tolist())
        top = max(wanted + [nodes[-1] if b_max is None else float(b_max), 0.0])
        lattice = _lattice(0.0, min(top, nodes[-1]), step)
        if top > lattice[-1]:  # beyond the stack: one extrapolation, no seams to catch; a coarser lattice
            lattice += _lattice(lattice[-1], top, EXTRAPOLATION_STEP_FACTOR * step)[1:]
        lattice = sorted(set(lattice) | {b for b in nodes if 0 <= b <= lattice[-1]})

        def at(b: float, blanking: bool) -> torch.Tensor:
            return self.generate(stack, torch.full((n,), b, device=device), blanking=blanking).float()

        continuous = {b: at(b, False) for b in lattice}
        offsets = {b: at(b, True) - (continuous[b] if b in continuous else at(b, False)) for b in nodes}
        curve = torch.cat([continuous[b] + _node_offset(offsets, b) for b in lattice], 1)  # (N, L, H, W)
        curve = torch.clamp(curve, -1.0, 1.0)
        inside = lattice.index(nodes[-1]) + 1 if nodes[-1] in lattice else len(lattice)
        interior = curve[:, :inside]
        down = torch.cummin(interior, 1).values  # running minimum upwards in b
        up = torch.flip(torch.cummax(torch.flip(interior, [1]), 1).values, [1])  # running maximum downwards
        envelopes = {"mid": lambda: (down + up) / 2, "min": lambda: down, "max": lambda: up}
        if envelope not in envelopes:
            raise ValueError(f"envelope must be one of {sorted(envelopes)}, not {envelope!r}")
        monotone = envelopes[envelope]()
        if inside < len(lattice):  # beyond the stack: only down from its largest b, never lifting what is below
            monotone = torch.cat([monotone, torch.cummin(torch.cat([monotone[:, -1:], curve[:, inside:]], 1),
                                                         1).values[:, 1:]], 1)
        log_u = torch.log(torch.clamp((monotone + 1) / 2, min=1e-6))
        grid = torch.tensor(lattice, dtype=torch.float64)
        out = []
        for b in wanted:
            k = int(torch.searchsorted(grid, torch.tensor(b, dtype=torch.float64), right=True)) - 1
            k = min(max(k, 0), len(lattice) - 1)
            if k == len(lattice) - 1 or lattice[k] == b:
                out.append(monotone[:, k:k + 1])
                continue
            w = (b - lattice[k]) / (lattice[k + 1] - lattice[k])
            out.append(2 * torch.exp((1 - w) * log_u[:, k:k + 1] + w * log_u[:, k + 1:k + 2]) - 1)
        return torch.clamp(torch.cat(out, 1), -1.0, 1.0).to(stack.dtype)

    def forward(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.generate(self.stack(x), b)


def _lattice(start: float, stop: float, step: float) -> list[float]:
    """start, start + step, ... up to the first point at or beyond stop."""
    points = np.arange(start, stop + step, step)
    return points[: int(np.searchsorted(points, stop - 1e-6)) + 1].tolist()


def _node_offset(offsets: dict[float, torch.Tensor], b: float) -> torch.Tensor:
    """The offsets {stack b: (N, 1, H, W)} read at b: linearly between the stack b-values around it, the
    nearest one's beyond the ends."""
    nodes = sorted(offsets)
    if b <= nodes[0]:
        return offsets[nodes[0]]
    if b >= nodes[-1]:
        return offsets[nodes[-1]]
    upper = next(x for x in nodes if x >= b)
    lower = max(x for x in nodes if x < b) if upper != b else upper
    if upper == lower:
        return offsets[upper]
    w = (b - lower) / (upper - lower)
    return (1 - w) * offsets[lower] + w * offsets[upper]


def bracketing_channels(stack_b: torch.Tensor, b: torch.Tensor, available: torch.Tensor):
    """Per sample, the stack channels a b is read between: the nearest available at or below b and above it,
    or the two nearest beyond the ends; (lower index (N,), upper index (N,), the reading's weight on the upper
    channel (N,), outside 0-1 beyond the ends)."""
    n, big = len(b), 1e9
    values = stack_b.float()[None].expand(n, -1)
    b = b.float()[:, None]
    lower = torch.where(available & (values <= b), values, -big).argmax(1)
    upper = torch.where(available & (values > b), values, big).argmin(1)
    has_lower = (available & (values <= b)).any(1)
    has_upper = (available & (values > b)).any(1)
    ascending = torch.where(available, values, big).argsort(1)
    descending = torch.where(available, values, -big).argsort(1, descending=True)
    lower = torch.where(has_lower, lower, ascending[:, 0])
    upper = torch.where(has_lower, upper, ascending[:, 1])
    upper = torch.where(has_upper, upper, descending[:, 0])
    lower = torch.where(has_upper, lower, descending[:, 1])
    b_lower, b_upper = stack_b.float()[lower], stack_b.float()[upper]
    return lower, upper, (b[:, 0] - b_lower) / (b_upper - b_lower)


def loglinear_reading(stack: torch.Tensor, stack_b: torch.Tensor, b: torch.Tensor,
                      available: torch.Tensor, fit_above: float | None = None) -> torch.Tensor:
    """Each sample's stack read at its b: log-linear between the nearest available channels below and above b
    (extrapolated from the two nearest beyond the ends); (N, C, H, W) network scale -> (N, 1, H, W).

    fit_above: beyond the largest available channel, read on from it along the least-squares log-slope of the
    available channels at b >= fit_above (at least two; the slope capped at 0), as
    `diffusion.loglinear_interpolation` does for the baseline: the two-point slope from 800 and 1000 multiplies
    their errors by 6 at b 2000 and rises wherever the 1000 image is the brighter.

    On the network scale t = 2 sqrt(S / imax) - 1, log S is 2 log((t + 1) / 2) plus a constant, so the
    interpolation needs no intensity range. The generator corrects this reading (IVIM curvature, noise):
    at b = 75 it is the interpolation of the acquired b 0 and 100, a strong start a network must not lose.
    """
    log_u = torch.log(torch.clamp((stack.float() + 1) / 2, min=1e-3))
    lower, upper, w = bracketing_channels(stack_b, b, available)
    rows = torch.arange(len(stack), device=stack.device)
    reading = torch.exp((1 - w[:, None, None]) * log_u[rows, lower] + w[:, None, None] * log_u[rows, upper])
    if fit_above is not None:
        values = stack_b.float()[None].expand(len(b), -1)
        fit = available & (values >= fit_above)  # (N, C)
        top = torch.where(available, values, torch.full_like(values, -1e9)).max(1)
        beyond = (b.float() > top.values) & (fit.sum(1) >= 2)
        if beyond.any():
            weight = fit.float()
            mean_b = (weight * values).sum(1) / weight.sum(1).clamp(min=1)
            centred = (values - mean_b[:, None]) * weight  # (N, C), zero off the fit
            slope = (centred[:, :, None, None] * log_u).sum(1) / (centred**2).sum(1).clamp(min=1e-6)[:, None, None]
            slope = torch.clamp(slope, max=0.0)
            anchored = torch.exp(log_u[rows, top.indices] + slope * (b.float() - top.values)[:, None, None])
            reading = torch.where(beyond[:, None, None], anchored, reading)
    reading = 2 * reading - 1
    return torch.clamp(reading[:, None], -1.0, 1.0).to(stack.dtype)


NODE_SCALE = 250.0 ** 2  # s²/mm⁴: the midpoint of a 500-wide bracket of acquired b-values has factor 1


def node_factor(stack_b: torch.Tensor, b: torch.Tensor, available: torch.Tensor, n_acquired: int) -> torch.Tensor:
    """The scale of the generator's correction per sample: s + (1 - s) |b - b_lower| |b_upper - b| / NODE_SCALE,
    with s the share of the log-linear reading drawn from stage-1 channels (the stack's channels from
    n_acquired on).

    A reading of stage-1 images needs their errors corrected wherever it is taken (850 between 800 and 1000:
    factor 1). A reading between acquired images errs only by the curve's curvature, which Lagrange's
    interpolation error puts at f''/2 (b - b_lower)(b - b_upper): a correction learned across gaps of 100-300
    shrinks to 1/16 at b 75 between the acquired 0 and 100, where the generator, which in training always
    had one channel blanked, would otherwise apply corrections meant for wide gaps."""
    lower, upper, w = bracketing_channels(stack_b, b, available)
    weight_lower, weight_upper = (1 - w).abs(), w.abs()
    stage1 = weight_lower * (lower >= n_acquired) + weight_upper * (upper >= n_acquired)
    stage1 = stage1 / (weight_lower + weight_upper)
    b, b_lower, b_upper = b.float(), stack_b.float()[lower], stack_b.float()[upper]
    node = ((b - b_lower) * (b_upper - b)).abs() / NODE_SCALE
    return stage1 + (1 - stage1) * node


def draw_bridges(images: torch.Tensor, present: torch.Tensor, image_b: torch.Tensor, bridgeable: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample, a b between two neighbouring bridgeable channels it acquired (the pair drawn uniformly among
    its pairs, b uniformly between them) and the log-linear reading of its images there: the bridge's label.

    images (N, T, H, W) network scale, present (N, T), image_b (T,), bridgeable (T,) bool -> (sample index (M,),
    b (M,), reading (M, 1, H, W)); a sample with fewer than two bridgeable channels acquired is dropped."""
    available = present & bridgeable[None]
    draws = torch.rand(len(images), 2, generator=generator)
    order = image_b.cpu().argsort().tolist()
    rows, b_lower, b_upper = [], [], []
    for i, acquired in enumerate(available.cpu().tolist()):
        channels = [j for j in order if acquired[j]]
        pairs = list(zip(channels, channels[1:]))
        if not pairs:
            continue
        a, c = pairs[min(int(draws[i, 0] * len(pairs)), len(pairs) - 1)]
        rows.append(i)
        b_lower.append(float(image_b[a]))
        b_upper.append(float(image_b[c]))
    rows_t = torch.tensor(rows, dtype=torch.long, device=images.device)
    if not rows:
        return rows_t, torch.zeros(0, device=images.device), images[:0, :1]
    lower, upper = torch.tensor(b_lower), torch.tensor(b_upper)
    b = (lower + draws[rows, 1] * (upper - lower)).to(images.device)
    return rows_t, b, loglinear_reading(images[rows_t], image_b, b, available[rows_t])


def bvalue_stack_inputs(record: dict, inputs: list[float]) -> list[float]:
    """The stack's b-values from a stage-1 record, checking that it reads the inputs this model gets."""
    stage1_inputs = [float(b) for b in record["input_b"]]
    if stage1_inputs != [float(b) for b in inputs]:
        raise ConfigError(f"stage-1 model ({record['method']}, {record.get('organ')}) reads b = {stage1_inputs}, "
                          f"but bvalues.inputs is {list(inputs)}; retrain stage 1 with the same inputs")
    return stage1_inputs + [float(b) for b in record["target_b"]]


class MineGAN(Network):
    """Zero-shot MineGAN: every phase on the seen b-values; held-out b are never shown."""

    name = "minegan"
    label = "MineGAN"
    task = "multib"
    Config = MineGANConfig
    channels_last = True  # its FiLM ResNet generator, like DC²Anet's: demo brain step 158 -> 131 ms on the CPU
    upstream: ClassVar[dict[str, str]] = {"stage1": "dc2anet"}
    mined: ClassVar[bool] = True

    @classmethod
    def dataset_bvalues(cls, bvalues: dict) -> tuple[list[float], list[float]]:
        # every b of the stack is a training target, the inputs too (blanked when asked for): b 0 and 100
        # bracket 75, so it is read between trained b-values, not beyond them
        inputs = [float(b) for b in bvalues["inputs"]]
        wanted = set(inputs) | {float(b) for b in bvalues["targets"]}
        wanted |= {float(b) for b in bvalues.get("heldout", ())}
        return inputs, sorted(wanted)

    def prepare(self, upstream: dict[str, dict], bvalues: dict, seed: int) -> None:
        record = upstream["stage1"]
        self.input_b, self.target_b = self.dataset_bvalues(bvalues)
        self.heldout_b = [float(b) for b in bvalues.get("heldout", ())]
        self.stack_b = bvalue_stack_inputs(record, self.input_b)
        self.stage1_fingerprint = record["fingerprint"]
        c = self.config
        torch.manual_seed(seed)
        self.synthesizer = BValueSynthesizer({"method": record["method"], "kwargs": record["kwargs"]}, self.stack_b,
                                             c.ngf, c.n_residual, c.norm, c.upsample, c.n_frequencies,
                                             c.embed_width, c.z_dim, c.miner_width, self.mined, c.correction,
                                             len(self.input_b), c.activation, c.extrapolation)
        self.synthesizer.stage1.load_state_dict(record["state_dict"])
        self.D = ProjectionDiscriminator(self.n_inputs + 1, c.ndf, n_frequencies=c.n_frequencies)
        self.stage1_intensity_max = float(record["intensity_max"])
        self.stage1_spec = {"method": record["method"], "kwargs": record["kwargs"]}

    def fixed_intensity_max(self) -> float:
        return self.stage1_intensity_max  # the stack mixes the inputs and stage-1 images: one scale

    # --- phases ------------------------------------------------------------------------------
    def phase_plan(self) -> list[tuple[str, int]]:
        c = self.config
        return [("pretrain", c.pretrain_steps), ("mine", c.mine_steps), ("finetune", c.finetune_steps)]

    def training_steps(self) -> int:
        return sum(n for _, n in self.phase_plan())

    def phase(self, step: int) -> str:
        end = 0
        for name, n in self.phase_plan():
            end += n
            if step < end:
                return name
        return self.phase_plan()[-1][0]

    def start_phase(self, phase: str, optimizers: dict) -> None:
        s = self.synthesizer
        s.G.requires_grad_(self._trains("generator", phase))
        s.embed.requires_grad_(self._trains("generator", phase))
        if s.miner is not None:
            s.miner.requires_grad_(self._trains("miner", phase))

    # --- trainer hooks -------------------------------------------------------------------
    def voxel_l1_weight(self) -> float:
        return float(self.config.weights.voxel)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        s = self.synthesizer
        groups = {"generator": [*s.G.parameters(), *s.embed.parameters()], "discriminator": list(self.D.parameters())}
        if s.miner is not None:
            groups["miner"] = list(s.miner.parameters())
        return groups

    def inference_network(self) -> nn.Module:
        return self.synthesizer

    def inference_spec(self) -> dict:
        c = self.config
        s = self.synthesizer
        kwargs = {"stage1": self.stage1_spec, "stack_b": self.stack_b,
                  "ngf": c.ngf, "n_residual": c.n_residual, "norm": c.norm, "upsample": c.upsample,
                  "n_frequencies": c.n_frequencies, "embed_width": c.embed_width, "z_dim": c.z_dim,
                  "miner_width": c.miner_width, "mined": s.miner is not None, "correction": c.correction,
                  "n_acquired": len(self.input_b), "activation": c.activation, "extrapolation": c.extrapolation}
        return {"kwargs": kwargs, "pad_multiple": 4, "b_conditioned": True, "b_range": [float(b) for b in c.b_range]}

    @classmethod
    def build_inference_network(cls, **kwargs) -> nn.Module:
        return BValueSynthesizer(**kwargs)

    def describe(self) -> dict:
        return {"stage1_fingerprint": self.stage1_fingerprint, "trained_b": self.trained_b(),
                "synthesize_b": sorted(set(self.target_b) - {b for b in self.input_b})}

    def trained_b(self) -> list[float]:
        """b-values with training images (the ticks of a b slider)."""
        return [b for b in self.target_b if b not in self.heldout_b]

    def predict(self, network: nn.Module, inputs: torch.Tensor, target_b: list[float]) -> torch.Tensor:
        stack = network.stack(inputs)
        return torch.cat([network.generate(stack, torch.full((len(inputs),), float(b), device=inputs.device))
                          for b in target_b], 1)

    def bridge_channels(self, image_b: list[float]) -> torch.Tensor:
        """Per channel, whether a bridge may end on it: the trained stage-1 targets (400-1000), where perfusion
        has decayed, so the log-linear reading of the acquired images between neighbours is a fair label. Not
        the acquired inputs: from 100 to 400 perfusion bends the curve; and a bridge between 0 and 100 changed
        nothing at 75 on the train-split subjects that acquired it, ten times the demo steps (brain 30.98 dB
        with it, 31.00 without; abdomen 26.52, 26.64), while 850 was 0.1 dB lower with it."""
        stage1 = set(self.stack_b[len(self.input_b):]) & set(self.trained_b())
        return torch.tensor([b in stage1 for b in map(float, image_b)])

    def bridged_references(self, targets: torch.Tensor, present: torch.Tensor,
                           target_b: list[float]) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
        """{held-out b: (rows, reference)}: the log-linear reading of each row's acquired stage-1 target images
        at a held-out b they bracket (850), for rows not acquired at it; the label-free score the trainer
        validates. Not 75: there the reading is the stack's own, a score of the correction's size, not of it."""
        image_b = torch.tensor([float(b) for b in target_b])
        available = present & self.bridge_channels(target_b)[None]
        values = image_b[None].expand(len(targets), -1)
        references = {}
        for b in self.heldout_b:
            if b not in target_b:
                continue
            inside = ((available & (values < b)).any(1) & (available & (values > b)).any(1)
                      & ~present[:, target_b.index(b)])
            rows = inside.nonzero().flatten()
            if len(rows):
                b_rows = torch.full((len(rows),), b)
                references[b] = rows, loglinear_reading(targets[rows], image_b, b_rows, available[rows])
        return references

    def bridge_weight(self) -> float:
        return float(self.config.weights.bridge)

    def preferred_b(self, device) -> torch.Tensor | None:
        """Target b-values a sample is judged at whenever it holds one (None: every acquired b alike)."""
        return None

    def _mining(self, phase: str) -> bool:
        return self.synthesizer.miner is not None and phase != "pretrain"

    def training_step(self, batch, optimizers, generator: torch.Generator, step: int) -> dict[str, float]:
        x, y, present = batch.inputs, batch.targets, batch.present
        w, s, phase = self.config.weights, self.synthesizer, self.phase(step)
        device = x.device
        target_b = torch.tensor(self.target_b, device=device)
        real, sample, b_index = one_b_per_sample(y, present, generator, self.preferred_b(device))  # none acquired: dropped
        if len(sample) == 0:
            return {}
        x, b = x[sample], target_b[b_index]
        mining = self._mining(phase)
        z = torch.randn(len(x), self.config.z_dim, generator=generator).to(device) if mining else None
        stack = s.stack(x)
        fake = s.generate(stack, b, z)
        ones = torch.ones(len(x), 1, dtype=torch.bool, device=device)

        self.D.requires_grad_(False)
        losses = {"adv": lsgan(self.D(fake, b, x), True), "voxel_l1": masked_l1(fake, real),
                  "ssim": ssim_loss(fake, real, ones)}
        total = w.adversarial * losses["adv"] + w.voxel * losses["voxel_l1"] + w.ssim * losses["ssim"]
        total = self.add_lesion_l1(losses, total, fake, real, None,
                                   batch.lesion[sample] if batch.lesion is not None else None)
        if mining and w.unseen > 0:
            lo, hi = self.config.b_range
            b_any = lo + (hi - lo) * torch.rand(len(x), generator=generator).to(device)
            fake_any = s.generate(stack, b_any, z)
            losses["adv_any_b"] = lsgan(self.D(fake_any, b_any, x), True)
            total = total + w.unseen * losses["adv_any_b"]
        if self.bridge_weight() > 0:  # on half the batch: a third more time per step on all of it
            half = sample[: (len(sample) + 1) // 2]
            acquired = present[half] if present is not None else torch.ones_like(y[half, :, 0, 0], dtype=torch.bool)
            rows, b_bridge, reading = draw_bridges(y[half], acquired, target_b, self.bridge_channels(self.target_b)
                                                   .to(device), generator)
            if len(rows):
                fake_bridge = s.generate(stack[rows], b_bridge, z[rows] if z is not None else None)
                losses["bridge_l1"] = masked_l1(fake_bridge, reading)
                total = total + self.bridge_weight() * losses["bridge_l1"]
        stepping = [name for name in ("generator", "miner") if name in optimizers and self._trains(name, phase)]
        for name in stepping:
            optimizers[name].zero_grad(set_to_none=True)
        total.backward()
        for name in stepping:
            optimizers[name].step()

        self.D.requires_grad_(True)
        d_loss = 0.5 * (lsgan(self.D(real, b, x), True) + lsgan(self.D(fake.detach(), b, x), False))
        if "adv_any_b" in losses:
            d_loss = d_loss + 0.5 * lsgan(self.D(fake_any.detach(), b_any, x), False)
        optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["discriminator"].step()
        losses.update(d_loss=d_loss, g_total=total)
        return {k: float(v.detach()) for k, v in losses.items()}

    def _trains(self, group: str, phase: str) -> bool:
        if group == "generator":
            return phase in ("pretrain", "finetune", "fewshot_finetune")
        return phase != "pretrain"


class BCond(MineGAN):
    """Ablation: the same b-conditioned generator and b-embedding, no miner, trained for MineGAN's total steps."""

    name = "bcond"
    label = "b-conditioned G (no miner)"
    config_block = "minegan"
    mined = False

    def phase(self, step: int) -> str:
        return "pretrain"


class MineGANFewShot(MineGAN):
    """Few-shot MineGAN: the organ's zero-shot model, mined and fine-tuned again with `fewshot.k` slices per
    held-out b from train-split subjects (the images are listed in model.pt)."""

    name = "mineganfewshot"
    label = "MineGAN few-shot"
    config_block = "minegan"
    upstream: ClassVar[dict[str, str]] = {"zeroshot": "minegan"}

    def prepare(self, upstream: dict[str, dict], bvalues: dict, seed: int) -> None:
        record = upstream["zeroshot"]
        self.input_b, self.target_b = self.dataset_bvalues(bvalues)
        self.heldout_b = [float(b) for b in bvalues.get("heldout", ())]
        kwargs = record["kwargs"]
        self.stack_b = [float(b) for b in kwargs["stack_b"]]
        self.stage1_fingerprint = record["stage1_fingerprint"]
        c = self.config
        torch.manual_seed(seed)
        self.synthesizer = BValueSynthesizer(**kwargs)
        self.synthesizer.load_state_dict(record["state_dict"])
        self.D = ProjectionDiscriminator(self.n_inputs + 1, c.ndf, n_frequencies=c.n_frequencies)
        self.stage1_intensity_max = float(record["intensity_max"])  # the zero-shot model's scale is stage 1's
        self.stage1_spec = kwargs["stage1"]
        self.zeroshot_fingerprint = record["fingerprint"]
        self.fewshot_images: list[list] = []

    def phase_plan(self) -> list[tuple[str, int]]:
        f = self.config.fewshot
        return [("fewshot_mine", f.mine_steps), ("fewshot_finetune", f.finetune_steps)]

    def training_data(self, data, seed: int):
        """The zero-shot slices plus `fewshot.k` slices per held-out b (repeated to `fewshot.share`)."""
        from dwisynth.loader import SliceDataset

        full = SliceDataset(data.shards, data.input_b, data.target_b, data.heldout_b, zero_shot=False)
        picked, self.fewshot_images = select_fewshot(full, self.heldout_b, self.config.fewshot, seed)
        return data.with_extra(full, picked, self.config.fewshot.share)

    def describe(self) -> dict:
        return {**super().describe(), "zeroshot_fingerprint": self.zeroshot_fingerprint,
                "fewshot_images": self.fewshot_images}

    def trained_b(self) -> list[float]:
        return list(self.target_b)  # the held-out b too: the few shots trained on them

    def learning_rate(self) -> float:
        f = self.config.fewshot
        return float(f.lr) if f.lr is not None else 10.0 * float(self.config.lr)

    def bridge_weight(self) -> float:
        return float(self.config.fewshot.bridge)

    def preferred_b(self, device) -> torch.Tensor:
        """A few-shot slice is judged at its held-out b: drawn uniformly among its 6-8 acquired b-values, the
        shots' own b came up in one step of seven, and 100 mining steps moved a toy's b 850 by 3% of the way
        to its shots."""
        return torch.tensor([b in self.heldout_b for b in self.target_b], device=device)


def select_fewshot(data, heldout_b: list[float], config: FewShotConfig,
                   seed: int) -> tuple[dict[float, np.ndarray], list[list]]:
    """{held-out b: slice rows of `data`} (k per b, drawn with the seed from the train subjects that acquired
    it) and the list [cohort, subject, slice, b] for model.pt."""
    rng = np.random.default_rng([seed, 31337])
    allowed = None
    if config.subjects:
        allowed = {tuple(s.split("/", 1)) for s in config.subjects}
        known = set(data.subject_keys())
        outside = sorted("/".join(s) for s in allowed - known)
        if outside:
            raise ConfigError(f"minegan.fewshot.subjects: {', '.join(outside)} not among this organ's train-split "
                              "subjects (test subjects never train; check the sheet's split column)")
    picked, listed = {}, []
    for b in heldout_b:
        j = data.target_b.index(b)
        rows = [i for i, s in enumerate(data.subjects) if data.present[i, j] and data.masks[i].any()
                and (allowed is None or tuple(s) in allowed)]
        if not rows:
            raise ConfigError(f"few-shot MineGAN: no train-split subject of this organ acquired b = {b:g}; acquire "
                              "it in a train subject (demo: demo.heldout_fewshot_subjects >= 1; real data: the "
                              "sheet's split column) or drop mineganfewshot from methods")
        if config.k > len(rows):
            raise ConfigError(f"minegan.fewshot.k = {config.k}, but the train split holds {len(rows)} slices at "
                              f"b = {b:g} for this organ; lower fewshot.k to at most {len(rows)}")
        chosen = np.sort(rng.choice(rows, size=config.k, replace=False))
        picked[b] = chosen
        for i in chosen:
            cohort, subject = data.subjects[i]
            listed.append([cohort, subject, int(data.slice_index[i]), b])
    return picked, listed
