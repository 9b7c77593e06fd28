"""TinyConv trained in two phases: the tests of the trainer's phase hook register it by import."""

from plugins.tiny_conv import TinyConv


class PhasedTinyConv(TinyConv):
    """TinyConv in two phases (the second freezes the first layer), as MineGAN trains in phases."""

    name = "phasedtinyconv"
    label = "phased tiny conv (test plugin)"
    phases_seen: list

    def phase(self, step):
        return "pretrain" if step < self.config.steps // 2 else "finetune"

    def start_phase(self, phase, optimizers):
        self.G[0].requires_grad_(phase == "pretrain")
        type(self).phases_seen.append(phase)


PhasedTinyConv.phases_seen = []
