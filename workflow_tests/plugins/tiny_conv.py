"""A network that lives outside dwisynth: the tests register it (import, or DWISYNTH_PLUGINS for the
workflow) to prove a new network needs no rule, schema or registry edit, only its config block."""

from dataclasses import dataclass, field

from torch import nn

from dwisynth.networks.base import Network, NetworkConfig
from dwisynth.networks.losses import masked_l1


@dataclass
class TinyConvConfig(NetworkConfig):
    width: int = field(default=8, metadata={"minimum": 1, "description": "hidden channels"})


def tiny_conv(in_channels: int, out_channels: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, out_channels, 3, padding=1), nn.Tanh())


class TinyConv(Network):
    """Two convolutions trained with voxel L1: a paired-only regressor."""

    name = "tinyconv"
    label = "tiny conv (test plugin)"
    task = "multib"
    Config = TinyConvConfig

    def __init__(self, config: TinyConvConfig, n_inputs: int, n_targets: int):
        super().__init__(config, n_inputs, n_targets)
        self.G = tiny_conv(n_inputs, n_targets, config.width)

    def parameter_groups(self):
        return {"generator": list(self.G.parameters())}

    def training_step(self, batch, optimizers, generator, step):
        loss = masked_l1(self.G(batch.inputs), batch.targets, batch.present)
        optimizers["generator"].zero_grad(set_to_none=True)
        loss.backward()
        optimizers["generator"].step()
        return {"voxel_l1": float(loss.detach())}

    def inference_network(self):
        return self.G

    def inference_spec(self):
        return {"kwargs": {"in_channels": self.n_inputs, "out_channels": self.n_targets,
                           "width": self.config.width}, "pad_multiple": 1}

    @classmethod
    def build_inference_network(cls, **kwargs):
        return tiny_conv(**kwargs)
