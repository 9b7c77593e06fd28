"""Method name + its config block -> a trainable network; model.pt spec -> the inference generator."""

from __future__ import annotations

import torch
from torch import nn

from dwisynth.errors import ConfigError

TRAINABLE = ("dc2anet", "pix2pix")


def build_model(method: str, block: dict, n_inputs: int, n_targets: int, seed: int) -> nn.Module:
    """A freshly initialised network (weights drawn from `seed`) from its config block."""
    torch.manual_seed(seed)
    if method == "dc2anet":
        from dwisynth.networks.dc2anet import DC2Anet, DC2AnetConfig, DC2AnetLossWeights

        return DC2Anet(DC2AnetConfig(n_inputs, n_targets, ngf=block["ngf"], ndf=block["ndf"],
                                     n_residual=block["n_residual"], pool_size=block["pool_size"], norm=block["norm"],
                                     weights=DC2AnetLossWeights(**block["weights"]),
                                     perceptual_weights=block.get("perceptual_weights")))
    if method == "pix2pix":
        from dwisynth.networks.pix2pix import Pix2Pix, Pix2PixConfig

        return Pix2Pix(Pix2PixConfig(n_inputs, n_targets, ngf=block["ngf"], ndf=block["ndf"],
                                     levels=block["levels"], l1_weight=block["l1_weight"], norm=block["norm"]))
    raise ConfigError(f"unknown method {method!r}; trainable methods are {', '.join(TRAINABLE)}")


def build_generator(spec: dict) -> nn.Module:
    """The inference generator described by model.pt's `architecture` and `kwargs`."""
    if spec["architecture"] == "resnet":
        from dwisynth.networks.blocks import ResnetGenerator

        return ResnetGenerator(**spec["kwargs"])
    if spec["architecture"] == "unet":
        from dwisynth.networks.pix2pix import unet_generator

        return unet_generator(**spec["kwargs"])
    raise ConfigError(f"model file has unknown architecture {spec['architecture']!r}")
