"""JMMDA-GAN: Joint Mask and Multi-Frequency Dual Attention GAN, CT -> DWI for acute ischemic stroke.

The paper's abstract names the modules but gives no layer sizes, losses or schedule; everything below
that is not in its words (channel counts, where attention sits, the fusion, the losses and their weights)
is our reading, chosen small enough to train on a CPU. The generator, a wavelet U-Net:

- Mask-guided feature fusion (paper: "mask-guided feature fusion module"): 3x3 conv stems of the CT and of
  the brain mask, fused by a conv, then a sigmoid gate computed from the mask stem scales the fused features,
  so the anatomy is a spatial prior on every later layer.
- Multi-frequency attention encoder (paper: "multi-frequency attention encoder" with "dual-path attention"):
  per level, a Haar (or db2, sym4, coif1) DWT splits the features into LL and the LH/HL/HH details.
  Low path: multi-head self-attention over the LL tokens (global context; keys and values pooled to the
  bottleneck grid). High path: channel and spatial attention (CBAM-like) on the details (edges), its
  spatial gate also reading the low path, so global context decides which edges pass. Cross-scale: a
  stride-2 conv of the level's input (the finer scale) is a third path, the plain CNN view. Channels
  double per level.
- Adaptive fusion weighting (paper: "adaptive fusion weighting module"): a conv plus global pooling and a
  linear layer give softmax weights over the paths, per sample and channel (selective-kernel style), in
  each encoder level (low, high, CNN paths) and each decoder level (upsampled coarse and skip features).
- Decoder: inverse DWT with the decoder feature as LL and the encoder's attended details as the high
  bands, so edges return at the scale they were taken from; then the skip fusion, a 3x3 conv and tanh.

LeakyReLU throughout; group norm at the coarse levels only, never on the full-resolution path (see
`_group_norm`).

Ablation switches, each removing exactly one module (`workflow_tests/unit/test_jmmda.py` compares the built
modules): mask_fusion=False keeps the CT stem only and the mask leaves the discriminator's input too, so no
part of the model sees it; dwt=False replaces the fixed wavelet analysis and synthesis by learned stride-2
convs of the same shapes (4C bands in, 4C bands out), so the edge attention still gates a high path;
edge_attention=False passes the details ungated; adaptive_fusion=False averages the paths. Discriminator:
the conditional PatchGAN of pix2pix on [CT, mask, DWI]. Losses (ours): LSGAN + 100 L1 + SSIM; lesion
supervision (`training.lesion_weight`, the CT -> DWI comparison's `ct2dwi.guidance`) is a setting of the
comparison that every network gets alike (`Network.add_lesion_l1`), not part of this network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dwisynth.errors import ConfigError
from dwisynth.networks.base import Network, NetworkConfig
from dwisynth.networks.blocks import DWT2d, IDWT2d, patch_discriminator
from dwisynth.networks.losses import lsgan, masked_l1, ssim_loss


def _weight(default: float, description: str) -> float:
    return field(default=default, metadata={"minimum": 0, "description": description})


@dataclass
class JMMDAWeights:
    adversarial: float = _weight(1.0, "LSGAN of the conditional PatchGAN")
    l1: float = _weight(100.0, "voxel L1")
    ssim: float = _weight(1.0, "-log SSIM; 0 skips it")


@dataclass
class JMMDAConfig(NetworkConfig):
    ngf: int = field(default=32, metadata={"minimum": 4, "description": "generator base channels"})
    ndf: int = field(default=64, metadata={"minimum": 4, "description": "discriminator base channels"})
    levels: int = field(default=3, metadata={
        "minimum": 1, "maximum": 4, "description": "wavelet levels; images are padded to a multiple of 2**levels"})
    heads: int = field(default=4, metadata={
        "minimum": 1, "description": "attention heads on the low frequencies; must divide ngf"})
    wavelet: Literal["haar", "db2", "sym4", "coif1"] = field(default="haar", metadata={
        "description": "orthogonal wavelet of the DWT (the paper found Haar best)"})
    mask_fusion: bool = field(default=True, metadata={"description": "mask-guided feature fusion (else CT only)"})
    dwt: bool = field(default=True, metadata={
        "description": "fixed wavelet analysis and synthesis (else learned stride-2 convs of the same shapes)"})
    edge_attention: bool = field(default=True, metadata={
        "description": "channel and spatial attention on the high-frequency details (else they pass ungated)"})
    adaptive_fusion: bool = field(default=True, metadata={
        "description": "learned per-channel weights over the paths (else their mean)"})
    weights: JMMDAWeights = field(default_factory=JMMDAWeights,
                                  metadata={"description": "loss weights (0 drops a term)"})

    def __post_init__(self):
        if self.heads < 1 or self.ngf % self.heads:
            channels = ", ".join(str(self.ngf * 2**level) for level in range(self.levels))
            divisors = [d for d in range(1, self.ngf + 1) if self.ngf % d == 0]
            raise ConfigError(f"jmmdagan.heads = {self.heads} does not divide the attention channels ({channels}: "
                              f"ngf = {self.ngf} doubled per level); set heads to a divisor of ngf: "
                              f"{', '.join(map(str, divisors))}")


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, True)


def _group_norm(channels: int) -> nn.GroupNorm:
    """Group norm for the coarse levels. Without it, Adam can inflate the layers until the tanh saturates at
    the background value (-1), where the generator stops learning (the dwt=False ablation did so in 1 of 8
    seeds on the unit-test phantom at lr 1e-3). The full-resolution path (stem, last decoder level) stays
    unnormalized: it carries the CT's absolute HU level."""
    return nn.GroupNorm(min(8, channels // 4), channels)


def _conv(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, he_init: bool = True) -> nn.Conv2d:
    """A conv with zero padding (reflection's CUDA backward is not deterministic; the wavelets wrap anyway).

    he_init, for convs that feed a LeakyReLU: PyTorch's default init shrinks the signal at every layer, and
    the unnormalized full-resolution path would start near zero."""
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2)
    if he_init:
        nn.init.kaiming_normal_(conv.weight, a=0.2, nonlinearity="leaky_relu")
        nn.init.zeros_(conv.bias)
    return conv


class MaskGuidedFusion(nn.Module):
    """(N, ct_channels + 1, H, W), the brain mask last (-1 outside, +1 inside) -> (N, channels, H, W)."""

    def __init__(self, ct_channels: int, channels: int, mask_fusion: bool = True):
        super().__init__()
        self.mask_fusion = mask_fusion
        self.ct_stem = nn.Sequential(_conv(ct_channels, channels), _act())
        if mask_fusion:
            self.mask_stem = nn.Sequential(_conv(1, channels), _act())
            self.fuse = nn.Sequential(_conv(2 * channels, channels), _act())
            self.gate = _conv(channels, channels, he_init=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ct_features = self.ct_stem(x[:, :-1])
        if not self.mask_fusion:
            return ct_features
        mask_features = self.mask_stem(x[:, -1:])
        fused = self.fuse(torch.cat([ct_features, mask_features], 1))
        # 1 + gate, not gate: the mask may emphasise features, never erase them. A CT brain mask misses
        # tissue (a swollen infarct at the skull), and the DWI outside it must still be drawn.
        return fused * (1 + torch.sigmoid(self.gate(mask_features)))


class LowFrequencyAttention(nn.Module):
    """Multi-head self-attention over the LL tokens: (N, C, h, w) -> (N, C, h, w), residual.

    Keys and values are average-pooled by `kv_stride` onto the bottleneck grid (H / 2**levels), which cuts
    the cost kv_stride^2-fold; a fixed ratio (not a fixed token count) makes a training crop and a whole
    slice attend alike.
    """

    def __init__(self, channels: int, heads: int, kv_stride: int = 1):
        super().__init__()
        self.kv_stride = kv_stride
        # depthwise conv as position signal (conditional positional encoding): works at any image size
        self.position = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, ll: torch.Tensor) -> torch.Tensor:
        n, c, h, w = ll.shape
        x = ll + self.position(ll)
        queries = self.norm(x.flatten(2).transpose(1, 2))
        pooled = F.avg_pool2d(x, self.kv_stride) if self.kv_stride > 1 else x
        keys = self.norm(pooled.flatten(2).transpose(1, 2))
        attended, _ = self.attention(queries, keys, keys, need_weights=False)
        return x + attended.transpose(1, 2).reshape(n, c, h, w)


class EdgeAttention(nn.Module):
    """Channel, then spatial attention on the wavelet details (N, 3C, h, w), the spatial gate also seeing
    the low path (N, C, h, w): the dual-path link. Returns the gated details (N, 3C, h, w)."""

    def __init__(self, channels: int):
        super().__init__()
        detail_channels = 3 * channels
        hidden = max(detail_channels // 4, 4)
        self.channel_mlp = nn.Sequential(nn.Conv2d(detail_channels, hidden, 1), nn.ReLU(True),
                                         nn.Conv2d(hidden, detail_channels, 1))
        self.spatial = nn.Conv2d(4, 1, 7, padding=3)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        # details are signed and average to ~0: their magnitude is the edge strength
        magnitude = high.abs()
        channel_gate = torch.sigmoid(self.channel_mlp(magnitude.mean((2, 3), keepdim=True))
                                     + self.channel_mlp(magnitude.amax((2, 3), keepdim=True)))
        high = high * channel_gate
        maps = torch.cat([high.abs().mean(1, keepdim=True), high.abs().amax(1, keepdim=True),
                          low.mean(1, keepdim=True), low.amax(1, keepdim=True)], 1)
        return high * torch.sigmoid(self.spatial(maps))


class AdaptiveFusion(nn.Module):
    """Weighted sum of K paths (each (N, C, h, w)) with softmax weights over K per sample and channel,
    from a conv of their sum (CNN), global pooling and a linear layer (attention); adaptive=False: the mean."""

    def __init__(self, channels: int, n_paths: int, adaptive: bool = True):
        super().__init__()
        self.adaptive = adaptive
        if adaptive:
            hidden = max(channels // 4, 8)
            self.local = nn.Sequential(_conv(channels, hidden), _act())
            self.logits = nn.Linear(hidden, n_paths * channels)
            # zero logits: a fresh module is the mean, the same start as adaptive_fusion=False
            nn.init.zeros_(self.logits.weight)
            nn.init.zeros_(self.logits.bias)

    def forward(self, paths: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(paths, 1)  # (N, K, C, h, w)
        if not self.adaptive:
            return stacked.mean(1)
        n, k, c = stacked.shape[:3]
        summary = self.local(stacked.sum(1)).mean((2, 3))
        weights = self.logits(summary).view(n, k, c).softmax(1)
        return (weights[..., None, None] * stacked).sum(1)


class LearnedAnalysis(nn.Module):
    """The dwt=False ablation's split: a learned 2x2 stride-2 conv, (N, C, H, W) -> ll (N, C, H/2, W/2) and
    high (N, 3C, H/2, W/2), the shapes of `DWT2d` (the Haar analysis is one fixed choice of these weights)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bands = self.conv(x)
        channels = x.shape[1]
        return bands[:, :channels], bands[:, channels:]


class LearnedSynthesis(nn.Module):
    """The dwt=False ablation's merge: ll (N, C, h, w), high (N, 3C, h, w) -> (N, C, 2h, 2w) by a learned
    2x2 stride-2 transposed conv, the shapes of `IDWT2d`."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(4 * channels, channels, 2, stride=2)

    def forward(self, ll: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([ll, high], 1))


class EncoderLevel(nn.Module):
    """(N, C, h, w) -> features (N, 2C, h/2, w/2) and the (attended) details (N, 3C, h/2, w/2), the decoder's
    high bands at this scale."""

    def __init__(self, channels: int, heads: int, kv_stride: int, wavelet: str, dwt: bool, adaptive_fusion: bool,
                 edge_attention: bool = True):
        super().__init__()
        out_channels = 2 * channels
        self.cnn = _conv(channels, out_channels, stride=2)  # the local view of the finer scale
        self.split = DWT2d(wavelet) if dwt else LearnedAnalysis(channels)
        self.low_attention = LowFrequencyAttention(channels, heads, kv_stride)
        self.low_out = _conv(channels, out_channels)
        self.edge_attention = EdgeAttention(channels) if edge_attention else None
        self.high_out = _conv(3 * channels, out_channels)
        self.fusion = AdaptiveFusion(out_channels, 3, adaptive_fusion)
        self.out = nn.Sequential(_group_norm(out_channels), _act())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ll, high = self.split(x)
        low = self.low_attention(ll)
        edges = self.edge_attention(high, low) if self.edge_attention is not None else high
        paths = [self.low_out(low), self.cnn(x), self.high_out(edges)]
        return self.out(self.fusion(paths)), edges


class DecoderLevel(nn.Module):
    """Coarse features (N, 2C, h, w), skip features (N, C, 2h, 2w) and details (N, 3C, h, w)
    -> (N, C, 2h, 2w); group-normalized unless it is the full-resolution level."""

    def __init__(self, channels: int, wavelet: str, dwt: bool, adaptive_fusion: bool, normalize: bool = True):
        super().__init__()
        self.to_ll = nn.Conv2d(2 * channels, channels, 1)
        self.idwt = IDWT2d(wavelet) if dwt else LearnedSynthesis(channels)
        self.from_coarse = _conv(channels, channels)
        self.from_skip = _conv(channels, channels)
        self.fusion = AdaptiveFusion(channels, 2, adaptive_fusion)
        self.out = nn.Sequential(_group_norm(channels) if normalize else nn.Identity(), _act())

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
        up = self.idwt(self.to_ll(coarse), details)
        return self.out(self.fusion([self.from_coarse(up), self.from_skip(skip)]))


class JMMDAGenerator(nn.Module):
    """(N, in_channels, H, W): CT channel(s) in [-1, 1], the brain mask last (-1 / +1) -> DWI (N, out_channels,
    H, W) in [-1, 1], tanh. H and W must be multiples of 2**levels."""

    def __init__(self, in_channels: int = 2, out_channels: int = 1, ngf: int = 32, levels: int = 3, heads: int = 4,
                 wavelet: str = "haar", mask_fusion: bool = True, dwt: bool = True, adaptive_fusion: bool = True,
                 edge_attention: bool = True):
        super().__init__()
        if in_channels < 2:
            raise ValueError(f"JMMDAGenerator needs CT and brain-mask channels, not {in_channels} channel(s)")
        self.levels = levels
        self.stem = MaskGuidedFusion(in_channels - 1, ngf, mask_fusion)
        channels = [ngf * 2**level for level in range(levels)]
        self.encoder = nn.ModuleList(
            EncoderLevel(c, heads, 2 ** (levels - 1 - level), wavelet, dwt, adaptive_fusion, edge_attention)
            for level, c in enumerate(channels))
        self.decoder = nn.ModuleList(DecoderLevel(c, wavelet, dwt, adaptive_fusion, normalize=level > 0)
                                     for level, c in reversed(list(enumerate(channels))))
        self.head = nn.Sequential(_conv(ngf, out_channels, he_init=False), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        multiple = 2**self.levels
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(f"JMMDAGenerator: H and W must be multiples of {multiple}, not "
                             f"{x.shape[-2]}x{x.shape[-1]}; pad the image (blocks.pad_to_multiple)")
        features = self.stem(x)
        skips, details = [], []
        for level in self.encoder:
            skips.append(features)
            features, edges = level(features)
            details.append(edges)
        for level, skip, edges in zip(self.decoder, reversed(skips), reversed(details)):
            features = level(features, skip, edges)
        return self.head(features)


class JMMDAGAN(Network):
    name = "jmmdagan"
    label = "JMMDA-GAN"
    task = "ct2dwi"
    Config = JMMDAConfig

    def __init__(self, config: JMMDAConfig, n_inputs: int, n_targets: int):
        super().__init__(config, n_inputs, n_targets)
        self.G = self.build_inference_network(**self.inference_spec()["kwargs"])
        # without mask fusion the discriminator does not see the mask either: the ablation removes it entirely
        self.D = patch_discriminator(self._discriminator_inputs(n_inputs) + n_targets, 1, config.ndf)

    def _discriminator_inputs(self, n_inputs: int) -> int:
        return n_inputs if self.config.mask_fusion else n_inputs - 1

    def _condition(self, x: torch.Tensor) -> torch.Tensor:
        """What the discriminator is conditioned on: CT and mask, or the CT alone without mask fusion."""
        return x if self.config.mask_fusion else x[:, :-1]

    def voxel_l1_weight(self) -> float:
        return float(self.config.weights.l1)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.G.parameters()), "discriminator": list(self.D.parameters())}

    def inference_network(self) -> nn.Module:
        return self.G

    def inference_spec(self) -> dict:
        c = self.config
        return {"kwargs": {"in_channels": self.n_inputs, "out_channels": self.n_targets, "ngf": c.ngf,
                           "levels": c.levels, "heads": c.heads, "wavelet": c.wavelet, "mask_fusion": c.mask_fusion,
                           "dwt": c.dwt, "adaptive_fusion": c.adaptive_fusion, "edge_attention": c.edge_attention},
                "pad_multiple": 2**c.levels}

    @classmethod
    def build_inference_network(cls, **kwargs) -> nn.Module:
        return JMMDAGenerator(**kwargs)

    def training_step(self, batch, optimizers, generator: torch.Generator, step: int) -> dict[str, float]:
        x, y, present = batch.inputs, batch.targets, batch.present
        weights = self.config.weights
        fake = self.G(x)
        self.D.requires_grad_(False)
        condition = self._condition(x)
        adv = lsgan(self.D(torch.cat([condition, fake], 1)), True)
        l1 = masked_l1(fake, y, present)
        total = weights.adversarial * adv + weights.l1 * l1
        losses = {"adv": adv, "voxel_l1": l1}
        if weights.ssim > 0:
            losses["ssim"] = ssim_loss(fake, y, present)
            total = total + weights.ssim * losses["ssim"]
        total = self.add_lesion_l1(losses, total, fake, y, present, getattr(batch, "lesion", None))
        optimizers["generator"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["generator"].step()

        # D sees [inputs, all targets]: a real stack needs every target acquired
        self.D.requires_grad_(True)
        complete = present.all(1)
        d_loss = torch.zeros((), device=x.device)
        if complete.any():
            x_real = condition[complete]
            d_loss = 0.5 * (lsgan(self.D(torch.cat([x_real, y[complete]], 1)), True)
                            + lsgan(self.D(torch.cat([x_real, fake.detach()[complete]], 1)), False))
            optimizers["discriminator"].zero_grad(set_to_none=True)
            d_loss.backward()
            optimizers["discriminator"].step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "g_total": float(total.detach()),
                "d_loss": float(d_loss.detach())}
