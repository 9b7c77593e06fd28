"""Stream slice shards into torch, one shard in memory at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class SliceDataset(torch.utils.data.IterableDataset):
    """Streams (input, target, target_present, mask) slices from shards, one shard in memory at a time.

    input_b: b-values fed to the network; target_b: b-values to predict. Subjects
    whose shard lacks an input b-value are skipped. With zero_shot=True, held-out
    b-values are never marked present (nothing at those b can train).
    """

    def __init__(self, shards, input_b, target_b, heldout_b=(), zero_shot=True, shuffle_seed=None):
        super().__init__()
        self.shards = [Path(s) for s in shards]
        self.input_b = [float(b) for b in input_b]
        self.target_b = [float(b) for b in target_b]
        self.heldout_b = {float(b) for b in heldout_b}
        self.zero_shot = zero_shot
        self.shuffle_seed = shuffle_seed

    def _slices(self, shard_path):
        with np.load(shard_path) as shard:
            grid = [float(b) for b in shard["bvals"]]
            present = shard["present"]
            if not all(b in grid and present[grid.index(b)] for b in self.input_b):
                return
            images, mask = shard["images"], shard["mask"]
        inputs = images[:, [grid.index(b) for b in self.input_b]]
        targets = np.zeros((images.shape[0], len(self.target_b), *images.shape[2:]), np.float32)
        flags = np.zeros(len(self.target_b), bool)
        for j, b in enumerate(self.target_b):
            if b in grid and present[grid.index(b)] and not (self.zero_shot and b in self.heldout_b):
                targets[:, j] = images[:, grid.index(b)]
                flags[j] = True
        for i in range(images.shape[0]):
            yield inputs[i], targets[i], flags, mask[i]

    def __iter__(self):
        order = list(self.shards)
        if self.shuffle_seed is not None:
            np.random.default_rng(self.shuffle_seed).shuffle(order)
        worker = torch.utils.data.get_worker_info()
        if worker is not None:  # each DataLoader worker streams its own shards, so no slice repeats
            order = order[worker.id :: worker.num_workers]
        for shard in order:
            for item in self._slices(shard):
                yield tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in item)
