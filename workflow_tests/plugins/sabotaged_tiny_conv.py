"""TinyConv that wrecks itself from a given step: noise on its weights (a collapse the validation must
catch) or NaN (a blow-up the loss check must catch)."""

from dataclasses import dataclass, field

import torch

from plugins.tiny_conv import TinyConv, TinyConvConfig


@dataclass
class SabotagedTinyConvConfig(TinyConvConfig):
    sabotage_step: int = field(default=20, metadata={"minimum": 0, "description": "first wrecked step"})
    sabotage: str = field(default="noise", metadata={"enum": ["noise", "nan"], "description": "how"})


class SabotagedTinyConv(TinyConv):
    name = "sabotagedtinyconv"
    label = "sabotaged tiny conv (test plugin)"
    Config = SabotagedTinyConvConfig

    def training_step(self, batch, optimizers, generator, step):
        losses = super().training_step(batch, optimizers, generator, step)
        if step + 1 >= self.config.sabotage_step:
            with torch.no_grad():
                for p in self.G.parameters():
                    if self.config.sabotage == "nan":
                        p.fill_(float("nan"))
                    else:
                        p.add_(torch.randn(p.shape, generator=generator) * 0.5)
            if self.config.sabotage == "nan":
                losses["voxel_l1"] = float("nan")
        return losses
