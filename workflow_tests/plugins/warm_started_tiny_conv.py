"""TinyConv with a not-selectable warm-up phase that is wrecked once near its end, then a main phase that
starts from the warm-up's best validated weights (`Network.warm_start`, as DC²Anet's dual-cycle phase)."""

from dataclasses import dataclass, field

import torch

from plugins.tiny_conv import TinyConv, TinyConvConfig


@dataclass
class WarmStartedTinyConvConfig(TinyConvConfig):
    warm_steps: int = field(default=30, metadata={"minimum": 1, "description": "steps of the warm-up phase"})
    wreck_step: int = field(default=22, metadata={"minimum": 1, "description": "the warm-up step wrecked once"})


class WarmStartedTinyConv(TinyConv):
    name = "warmstartedtinyconv"
    label = "warm-started tiny conv (test plugin)"
    Config = WarmStartedTinyConvConfig

    def phase(self, step: int) -> str:
        return "warm" if step < self.config.warm_steps else "main"

    def selectable(self, step: int) -> bool:
        return self.phase(step) == "main"

    def warm_start(self, phase: str) -> bool:
        return phase == "main"

    def training_step(self, batch, optimizers, generator, step):
        losses = super().training_step(batch, optimizers, generator, step)
        if step + 1 == self.config.wreck_step:
            with torch.no_grad():
                for p in self.G.parameters():
                    p.add_(torch.randn(p.shape, generator=generator) * 0.5)
        return losses
