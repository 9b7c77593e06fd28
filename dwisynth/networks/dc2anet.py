"""DC²Anet (Jin et al., Appl. Sci. 2019): dual cycle-consistent adversarial network, semi-supervised.

Low-b stack x (N, n_inputs, H, W) -> high-b stack y (N, n_targets, H, W) by G, and back by F.
Paired terms (voxel L1, gradient difference, SSIM, perceptual) use only the target
channels a subject acquired (`present`); the cycle and unpaired adversarial terms need
no pairing, so subjects that lack some b-values still train.

The hybrid discriminator judges single-b images (one b drawn per sample and step): its supervised branch sees the
[input stack, image at b] pair, its unsupervised branch the image alone; each branch
has one PatchGAN logit map per target b and the map of the image's own b is scored.
A third PatchGAN judges the low-b stacks F produces.

`paired_warmup` trains G alone on the paired terms first (phase "paired"), then everything (phase "dual-cycle"):
a full step runs G and F four times and the discriminators nine times, so at equal wall-clock the joint
training from scratch got about an eighth of pix2pix's steps and stayed behind it (`bench/quality.py`).
The dual-cycle phase starts from the paired phase's best validated step when validation fell after it
(`Network.warm_start`): a long paired phase overfits small cohorts, and only dual-cycle steps are exported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from dwisynth.networks.base import Network, NetworkConfig
from dwisynth.networks.blocks import ImagePool, ResnetGenerator, patch_discriminator, per_b_logits, one_b_per_sample
from dwisynth.networks.losses import PerceptualLoss, gradient_difference, lsgan, masked_l1, ssim_loss


def _weight(default: float, description: str = "") -> float:
    return field(default=default, metadata={"minimum": 0, **({"description": description} if description else {})})


@dataclass
class DC2AnetLossWeights:
    adversarial: float = _weight(1.0, "LSGAN of both discriminators")
    cycle: float = _weight(10.0, "cycle L1, per direction")
    voxel: float = _weight(100.0, "voxel L1 on acquired target b-values")
    gradient: float = _weight(100.0, "gradient difference")
    ssim: float = _weight(0.05, "-log SSIM")
    perceptual: float = _weight(0.0, "VGG16 perceptual; needs perceptual_weights (no download here)")


@dataclass
class DC2AnetConfig(NetworkConfig):
    ngf: int = field(default=64, metadata={"minimum": 4, "description": "generator base channels"})
    ndf: int = field(default=64, metadata={"minimum": 4, "description": "discriminator base channels"})
    n_residual: int = field(default=6, metadata={"minimum": 1,
                                                 "description": "residual blocks (6 up to 128 px, 9 above)"})
    pool_size: int = field(default=50, metadata={"minimum": 0, "description": "image pool per discriminator"})
    norm: Literal["none", "instance"] = field(default="none", metadata={
        "description": "generator normalization; instance (the published design) discards the absolute S/S0 level"})
    upsample: Literal["bilinear", "resize", "transposed"] = field(default="bilinear", metadata={
        "description": "generator upsampling: bilinear (aligned to the encoder's grid + 3x3 conv: no checkerboard, no "
                       "shift), resize (nearest + conv: content half a pixel off per level) or transposed (published; "
                       "checkerboard)"})
    skips: bool = field(default=False, metadata={"description": (
        "generator: add the encoder's full- and half-resolution features to the decoder's (no extra weights); "
        "false is the published ResNet generator, whose quarter-resolution bottleneck learns small lesions "
        "and the cortex last")})
    log_ratios: bool = field(default=False, metadata={"description": (
        "generator G also sees ln(S_b / S_b0) of its inputs (`blocks.signal_log_ratios`): the decay between the "
        "input b-values, which tells restricted diffusion (a tumour) from fluid; false is the published input")})
    gradient_form: Literal["signed", "magnitude"] = field(default="signed", metadata={"description": (
        "gradient difference term: signed |grad G(x) - grad y| (no reward for copying noise) or magnitude "
        "| |grad G(x)| - |grad y| | (published; on low-SNR targets it paints row and column stripes)")})
    paired_warmup: float = field(default=0.0, metadata={"minimum": 0, "exclusiveMaximum": 1, "description": (
        "share of the steps trained first as a paired regression (phase 'paired': G alone on the voxel, "
        "gradient and SSIM terms, a fifth of a full step's time), then the whole dual-cycle adversarial "
        "objective (phase 'dual-cycle'), started from the paired phase's best validated step when validation "
        "fell after it; 0 is the published joint training")})
    weights: DC2AnetLossWeights = field(default_factory=DC2AnetLossWeights,
                                        metadata={"description": "loss weights (0 drops a term)"})
    perceptual_weights: str | None = field(default=None, metadata={
        "format": "file-path", "description": "torchvision vgg16 state dict (.pth) for the perceptual loss"})


class HybridDiscriminator(nn.Module):
    """Supervised branch: [x, image at b] -> logits; unsupervised branch: image at b -> logits.

    Both output (N, n_targets, h, w); `per_b_logits` picks the map of each image's b.
    """

    def __init__(self, n_inputs: int, n_targets: int, ndf: int = 64):
        super().__init__()
        self.supervised = patch_discriminator(n_inputs + 1, n_targets, ndf)
        self.unsupervised = patch_discriminator(1, n_targets, ndf)

    def forward(self, image: torch.Tensor, b_index: torch.Tensor, condition: torch.Tensor | None = None):
        if condition is None:
            return per_b_logits(self.unsupervised(image), b_index)
        return per_b_logits(self.supervised(torch.cat([condition, image], 1)), b_index)


class DC2Anet(Network):
    """The trainable DC²Anet: networks, losses and one optimisation step (the trainer's hooks)."""

    name = "dc2anet"
    label = "DC²Anet"
    task = "multib"
    Config = DC2AnetConfig
    # the backward of its full-resolution 7x7 and residual convolutions: CPU step 27.6 -> 21.9 ms in the
    # brain's calibration (pix2pix's U-Net unchanged, JMMDA-GAN's 12% slower), dual-cycle step 106 -> 86 ms
    channels_last = True

    def __init__(self, config: DC2AnetConfig, n_inputs: int, n_targets: int):
        super().__init__(config, n_inputs, n_targets)
        c = config
        self.G = ResnetGenerator(n_inputs, n_targets, c.ngf, c.n_residual, c.norm, c.upsample, c.skips, c.log_ratios)
        self.F = ResnetGenerator(n_targets, n_inputs, c.ngf, c.n_residual, c.norm, c.upsample, c.skips)
        self.D_high = HybridDiscriminator(n_inputs, n_targets, c.ndf)
        self.D_low = patch_discriminator(n_inputs, 1, c.ndf)
        self.pools = {name: ImagePool(c.pool_size) for name in ("unsupervised", "supervised", "low")}
        self.perceptual = None
        if c.weights.perceptual > 0:
            self.perceptual = PerceptualLoss(c.perceptual_weights or "")

    # --- trainer hooks -------------------------------------------------------------------
    def voxel_l1_weight(self) -> float:
        return float(self.config.weights.voxel)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generators": [*self.G.parameters(), *self.F.parameters()],
                "discriminators": [*self.D_high.parameters(), *self.D_low.parameters()]}

    def inference_network(self) -> nn.Module:
        return self.G

    def inference_spec(self) -> dict:
        c = self.config
        return {"kwargs": {"in_channels": self.n_inputs, "out_channels": self.n_targets, "ngf": c.ngf,
                           "n_blocks": c.n_residual, "norm": c.norm, "upsample": c.upsample,
                           "skips": c.skips, "log_ratios": c.log_ratios}, "pad_multiple": 4}

    @classmethod
    def build_inference_network(cls, **kwargs) -> nn.Module:
        return ResnetGenerator(**kwargs)

    def extra_state(self) -> dict:
        return {name: pool.state_dict() for name, pool in self.pools.items()}

    def load_extra_state(self, state: dict) -> None:
        for name, pool in self.pools.items():
            pool.load_state_dict(state[name])

    def paired_steps(self) -> int:
        return int(self.config.paired_warmup * self.config.steps)

    def phase(self, step: int) -> str:
        return "paired" if step < self.paired_steps() else "dual-cycle"

    def selectable(self, step: int) -> bool:
        return self.phase(step) == "dual-cycle"  # the exported model is always trained on the whole objective

    def warm_start(self, phase: str) -> bool:
        # full size on a GPU, the paired regression overfit the demo's 8 abdomen subjects: validation peaked
        # near step 7000 of 19000 paired steps, and the dual-cycle phase, which alone may be exported, never
        # climbed back from where the warm-up left it
        return phase == "dual-cycle"

    def lr_decay_start(self) -> int | None:
        # the dual-cycle phase gets the whole schedule (constant, then linear to zero), not its tail
        if self.config.decay_start is None and self.paired_steps():
            return self.paired_steps() + (self.config.steps - self.paired_steps()) // 2
        return self.config.decay_start

    def _paired_terms(self, fake_y, y, present) -> dict[str, torch.Tensor]:
        """The terms that compare G's images with the acquired ones (both phases)."""
        return {"voxel_l1": masked_l1(fake_y, y, present),
                "gradient": gradient_difference(fake_y, y, present, self.config.gradient_form),
                "ssim": ssim_loss(fake_y, y, present)}

    def _add_perceptual(self, losses: dict, total: torch.Tensor, fake_y, y, present) -> torch.Tensor:
        if self.perceptual is None:
            return total
        losses["perceptual"] = self.perceptual(fake_y, y, present)
        return total + self.config.weights.perceptual * losses["perceptual"]

    def training_step(self, batch, optimizers, generator: torch.Generator, step: int) -> dict[str, float]:
        x, y, present = batch.inputs, batch.targets, batch.present
        w = self.config.weights
        opt_g, opt_d = optimizers["generators"], optimizers["discriminators"]
        if self.phase(step) == "paired":  # a warm start for the adversarial game, at a fifth of the cost
            fake_y = self.G(x)
            losses = self._paired_terms(fake_y, y, present)
            total = w.voxel * losses["voxel_l1"] + w.gradient * losses["gradient"] + w.ssim * losses["ssim"]
            total = self._add_perceptual(losses, total, fake_y, y, present)
            total = self.add_lesion_l1(losses, total, fake_y, y, present, batch.lesion)
            opt_g.zero_grad(set_to_none=True)
            total.backward()
            opt_g.step()
            losses["g_total"] = total
            return {k: float(v.detach()) for k, v in losses.items()}

        fake_y = self.G(x)
        rec_x = self.F(fake_y)
        # Channels a subject lacks are filled with G's (detached) guess so F sees a full stack;
        # the backward cycle is scored on acquired channels only.
        y_filled = torch.where(present[:, :, None, None], y, fake_y.detach())
        fake_x = self.F(y_filled)
        rec_y = self.G(fake_x)

        single_fake, sample, b_index = one_b_per_sample(fake_y, None, generator)
        self.D_high.requires_grad_(False)
        self.D_low.requires_grad_(False)
        losses = {
            "adv_unsupervised": lsgan(self.D_high(single_fake, b_index), True),
            "adv_supervised": lsgan(self.D_high(single_fake, b_index, condition=x[sample]), True),
            "adv_low": lsgan(self.D_low(fake_x), True),
            "cycle_low": masked_l1(rec_x, x),
            "cycle_high": masked_l1(rec_y, y_filled, present),
            **self._paired_terms(fake_y, y, present),
        }
        total = (w.adversarial * (losses["adv_unsupervised"] + losses["adv_supervised"] + losses["adv_low"])
                 + w.cycle * (losses["cycle_low"] + losses["cycle_high"]) + w.voxel * losses["voxel_l1"]
                 + w.gradient * losses["gradient"] + w.ssim * losses["ssim"])
        total = self._add_perceptual(losses, total, fake_y, y, present)
        total = self.add_lesion_l1(losses, total, fake_y, y, present, batch.lesion)
        opt_g.zero_grad(set_to_none=True)
        total.backward()
        opt_g.step()

        self.D_high.requires_grad_(True)
        self.D_low.requires_grad_(True)
        real_single, real_sample, real_b = one_b_per_sample(y, present, generator)
        pooled, pooled_b = self.pools["unsupervised"].query(single_fake, b_index, generator)
        pairs, pairs_b = self.pools["supervised"].query(torch.cat([x[sample], single_fake], 1), b_index, generator)
        pooled_x, _ = self.pools["low"].query(fake_x, torch.zeros(len(fake_x), dtype=torch.long), generator)
        n_in = x.shape[1]
        d_losses = {
            "d_unsupervised": 0.5 * (lsgan(self.D_high(real_single, real_b), True)
                                     + lsgan(self.D_high(pooled.detach(), pooled_b), False)),
            "d_supervised": 0.5 * (lsgan(self.D_high(real_single, real_b, condition=x[real_sample]), True)
                                   + lsgan(self.D_high(pairs[:, n_in:].detach(), pairs_b,
                                                       condition=pairs[:, :n_in].detach()), False)),
            "d_low": 0.5 * (lsgan(self.D_low(x), True) + lsgan(self.D_low(pooled_x.detach()), False)),
        }
        opt_d.zero_grad(set_to_none=True)
        sum(d_losses.values()).backward()
        opt_d.step()

        losses.update(d_losses)
        losses["g_total"] = total
        return {k: float(v.detach()) for k, v in losses.items()}
