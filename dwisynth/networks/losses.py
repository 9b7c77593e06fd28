"""Losses of the synthesis networks. Images are (N, C, H, W) in [-1, 1]; `present` (N, C) bool
marks acquired target channels, so subjects lacking some b-values still train on the rest."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dwisynth.errors import ConfigError


def lsgan(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al.), the adversarial term of CycleGAN, pix2pix and DC²Anet."""
    return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))


def _channel_weights(present: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if present is None:
        return torch.ones(like.shape[:2], device=like.device, dtype=like.dtype)
    return present.to(like.dtype)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |pred - target| over the acquired channels only."""
    weights = _channel_weights(present, pred)
    per_channel = (pred - target).abs().mean(dim=(2, 3))
    return (per_channel * weights).sum() / weights.sum().clamp(min=1)


def lesion_l1(pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None,
              lesion: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over lesion voxels (lesion (N, H, W) bool) of acquired channels; 0 without any.
    A mean over lesion voxels, not over the image: a lesion of a few voxels weighs as much as the whole crop."""
    weights = lesion[:, None].to(pred.dtype) * _channel_weights(present, pred)[:, :, None, None]
    return ((pred - target).abs() * weights).sum() / weights.sum().clamp(min=1)


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


GRADIENT_FORMS = ("signed", "magnitude")


def gradient_difference(pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None,
                        form: str = "signed") -> torch.Tensor:
    """Gradient difference per direction (Nie et al.), mean over acquired channels: keeps edges sharp.

    magnitude, the published form: | |grad pred| - |grad target| |. On a noisy target |grad target| is mostly
    noise (its mean grows with the noise even where the truth is flat), so the term pays the generator for
    texture of that size, and a small generator makes it as row and column stripes: on the demo pelvis at
    b 1000 (SNR about 3) they covered the image. signed: |grad pred - grad target|, whose minimum under
    zero-mean noise is the noise-free gradient, so edges stay sharp and noise is not copied (train-split
    validation PSNR of the demo DC²Anet rose 0.9-1.2 dB in every organ, and the stripes went).
    """
    if form not in GRADIENT_FORMS:
        raise ValueError(f"gradient difference form must be one of {GRADIENT_FORMS}, not {form!r}")
    weights = _channel_weights(present, pred)
    total = 0.0
    for gp, gt in zip(_gradients(pred), _gradients(target)):
        difference = gp - gt if form == "signed" else gp.abs() - gt.abs()
        total = total + difference.abs().mean(dim=(2, 3))
    return (total * weights).sum() / weights.sum().clamp(min=1)


def ssim_per_channel(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """SSIM (MONAI, Gaussian window 11, sigma 1.5) of each (sample, channel): (N, C)."""
    from monai.metrics.regression import compute_ssim_and_cs

    n, c = pred.shape[:2]
    # every (sample, channel) map as a channel of one image: MONAI then filters them with one grouped conv,
    # whose backward on the CPU is 13x faster than that of a batch of one-channel maps (oneDNN's slow path)
    ssim, _ = compute_ssim_and_cs(
        pred.reshape(1, n * c, *pred.shape[2:]), target.reshape(1, n * c, *target.shape[2:]), spatial_dims=2,
        kernel_size=(11, 11), kernel_sigma=(1.5, 1.5), data_range=data_range, kernel_type="gaussian",
        k1=0.01, k2=0.03)
    return ssim.reshape(n, c, -1).mean(-1)


def ssim_loss(pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None,
              data_range: float = 2.0) -> torch.Tensor:
    """-log(max(SSIM, eps)) over acquired channels (the DC²Anet SSIM term)."""
    weights = _channel_weights(present, pred)
    per_channel = -torch.log(ssim_per_channel(pred, target, data_range).clamp(min=1e-4))
    return (per_channel * weights).sum() / weights.sum().clamp(min=1)


class PerceptualLoss(nn.Module):
    """L1 between VGG16 features (up to relu3_3) of prediction and target, channel by channel.

    The ImageNet weights cannot be downloaded on the machines this runs on, so the
    user supplies them: a torchvision `vgg16` state dict (or just its `features`).
    There is no fallback: without the file the term is switched off in config.
    """

    def __init__(self, weights_path: str | Path):
        super().__init__()
        from torchvision.models import vgg16

        path = Path(weights_path)
        if not path.is_file():
            raise ConfigError(f"perceptual loss weights {path} not found; point the network's "
                              "perceptual_weights at a torchvision vgg16 state dict, or set weights.perceptual: 0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        features = vgg16(weights=None).features
        state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        features.load_state_dict(state)
        self.features = features[:16].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, pred: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        weights = _channel_weights(present, pred).reshape(-1)
        n, c = pred.shape[:2]

        def embed(x):
            x = (x.reshape(n * c, 1, *x.shape[2:]).repeat(1, 3, 1, 1) + 1) / 2
            return self.features((x - self.mean) / self.std)

        per_image = (embed(pred) - embed(target)).abs().mean(dim=(1, 2, 3))
        return (per_image * weights).sum() / weights.sum().clamp(min=1)
