"""pix2pix (Isola et al., CVPR 2017): U-Net generator + conditional PatchGAN, L1 weight 100; and `unet`,
the same U-Net trained with L1 alone (the CT -> DWI comparison's non-adversarial baseline).

The baseline that a paired-only method achieves. Generator: MONAI `UNet`, input stack
(N, n_inputs, H, W) -> target stack (N, n_targets, H, W), tanh; H and W multiples of
2**(levels-1). The conditional discriminator sees [input stack, image at one b] and has
one logit map per target b (as DC²Anet's supervised branch), so subjects lacking a
b-value train on the b-values they have. Adversarial term: least squares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from dwisynth.networks.base import Network, NetworkConfig
from dwisynth.networks.blocks import NORMS, AlignedUpsample, patch_discriminator, per_b_logits, one_b_per_sample
from dwisynth.networks.losses import lsgan, masked_l1


@dataclass
class Pix2PixConfig(NetworkConfig):
    ngf: int = field(default=64, metadata={"minimum": 4, "description": "generator base channels"})
    ndf: int = field(default=64, metadata={"minimum": 4, "description": "discriminator base channels"})
    levels: int = field(default=8, metadata={"minimum": 2, "maximum": 8, "description": "U-Net resolution levels"})
    l1_weight: float = field(default=100.0, metadata={"minimum": 0, "description": "weight of the voxel L1 beside the LSGAN"})
    norm: Literal["none", "instance"] = field(default="none", metadata={
        "description": "generator normalization; instance discards the absolute S/S0 level"})
    upsample: Literal["bilinear", "transposed"] = field(default="bilinear", metadata={
        "description": "decoder upsampling: bilinear (aligned to the encoder's grid + conv, as DC²Anet and MineGAN) "
                       "or transposed (the published pix2pix, MONAI's UNet), whose uneven kernel overlap paints a "
                       "checkerboard"})


def unet_generator(in_channels: int, out_channels: int, ngf: int = 64, levels: int = 4,
                   norm: str = "instance", upsample: str = "transposed") -> nn.Module:
    """MONAI's UNet, tanh output. upsample defaults to transposed: model files written before the option have
    no `upsample` in their spec and were built that way."""
    from monai.networks.blocks import Convolution
    from monai.networks.nets import UNet

    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    if upsample not in ("bilinear", "transposed"):
        raise ValueError(f"upsample must be bilinear or transposed, not {upsample!r}")

    class AlignedUpsamplingUNet(UNet):
        """Each transposed-conv up layer replaced by `AlignedUpsample` and a stride-1 conv: no checkerboard, and
        the content stays where MONAI's stride-2 encoder convs (kernel 3, padding 1) took it from."""

        def _get_up_layer(self, in_channels: int, out_channels: int, strides: int, is_top: bool) -> nn.Module:
            conv = Convolution(self.dimensions, in_channels, out_channels, strides=1, kernel_size=self.up_kernel_size,
                               act=self.act, norm=self.norm, dropout=self.dropout, bias=self.bias,
                               conv_only=is_top and self.num_res_units == 0, adn_ordering=self.adn_ordering)
            return nn.Sequential(AlignedUpsample(), conv)

    channels = tuple(ngf * 2**i for i in range(levels))
    network = AlignedUpsamplingUNet if upsample == "bilinear" else UNet
    return nn.Sequential(network(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=channels,
                                 strides=(2,) * (levels - 1), norm="INSTANCE" if norm == "instance" else None,
                                 act=("LEAKYRELU", {"negative_slope": 0.2})),
                         nn.Tanh())


class UNetNetwork(Network):
    """What pix2pix and the L1 U-Net share: the U-Net generator `G` is the inference network."""

    def inference_network(self) -> nn.Module:
        return self.G

    def inference_spec(self) -> dict:
        c = self.config
        return {"kwargs": {"in_channels": self.n_inputs, "out_channels": self.n_targets, "ngf": c.ngf,
                           "levels": c.levels, "norm": c.norm, "upsample": c.upsample},
                "pad_multiple": 2 ** (c.levels - 1)}

    @classmethod
    def build_inference_network(cls, **kwargs) -> nn.Module:
        return unet_generator(**kwargs)


class Pix2Pix(UNetNetwork):
    name = "pix2pix"
    label = "pix2pix"
    task = "multib"
    tasks = ("multib", "ct2dwi")
    Config = Pix2PixConfig

    def __init__(self, config: Pix2PixConfig, n_inputs: int, n_targets: int):
        super().__init__(config, n_inputs, n_targets)
        self.G = unet_generator(n_inputs, n_targets, config.ngf, config.levels, config.norm, config.upsample)
        self.D = patch_discriminator(n_inputs + 1, n_targets, config.ndf)

    def voxel_l1_weight(self) -> float:
        return float(self.config.l1_weight)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.G.parameters()), "discriminator": list(self.D.parameters())}


    def _judge(self, x, single, sample, b_index):
        return per_b_logits(self.D(torch.cat([x[sample], single], 1)), b_index)

    def training_step(self, batch, optimizers, generator: torch.Generator, step: int) -> dict[str, float]:
        x, y, present = batch.inputs, batch.targets, batch.present
        fake = self.G(x)
        single_fake, sample, b_index = one_b_per_sample(fake, None, generator)
        self.D.requires_grad_(False)
        adv = lsgan(self._judge(x, single_fake, sample, b_index), True)
        l1 = masked_l1(fake, y, present)
        total = adv + self.config.l1_weight * l1
        losses = {"adv": adv, "voxel_l1": l1}
        total = self.add_lesion_l1(losses, total, fake, y, present, batch.lesion)
        optimizers["generator"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["generator"].step()

        self.D.requires_grad_(True)
        real_single, real_sample, real_b = one_b_per_sample(y, present, generator)
        d_loss = 0.5 * (lsgan(self._judge(x, real_single, real_sample, real_b), True)
                        + lsgan(self._judge(x, single_fake.detach(), sample, b_index), False))
        optimizers["discriminator"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["discriminator"].step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "g_total": float(total.detach()),
                "d_loss": float(d_loss.detach())}


@dataclass
class UNetConfig(NetworkConfig):
    ngf: int = field(default=64, metadata={"minimum": 4, "description": "base channels"})
    levels: int = field(default=8, metadata={"minimum": 2, "maximum": 8, "description": "U-Net resolution levels"})
    norm: Literal["none", "instance"] = field(default="none", metadata={
        "description": "normalization; instance discards the absolute S/S0 level"})
    upsample: Literal["bilinear", "transposed"] = field(default="bilinear", metadata={
        "description": "decoder upsampling: bilinear (aligned + conv) or transposed (MONAI's UNet; checkerboard)"})


class UNetL1(UNetNetwork):
    """pix2pix's U-Net trained with L1 alone: what the adversarial term adds is the difference to pix2pix."""

    name = "unet"
    label = "U-Net (L1)"
    task = "ct2dwi"
    Config = UNetConfig

    def __init__(self, config: UNetConfig, n_inputs: int, n_targets: int):
        super().__init__(config, n_inputs, n_targets)
        self.G = unet_generator(n_inputs, n_targets, config.ngf, config.levels, config.norm, config.upsample)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"generator": list(self.G.parameters())}


    def training_step(self, batch, optimizers, generator: torch.Generator, step: int) -> dict[str, float]:
        fake = self.G(batch.inputs)
        losses = {"voxel_l1": masked_l1(fake, batch.targets, batch.present)}
        total = self.add_lesion_l1(losses, losses["voxel_l1"], fake, batch.targets, batch.present, batch.lesion)
        optimizers["generator"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["generator"].step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "g_total": float(total.detach())}
