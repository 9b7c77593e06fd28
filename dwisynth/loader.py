"""Training slices from the per-subject shards, held in memory as arrays.

A map-style dataset, so the trainer can draw any sample by index: that is what
makes a resumed run draw exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch


class SliceDataset(torch.utils.data.Dataset):
    """(input, target, target_present, mask) slices of the given shards.

    input_b: b-values fed to the network; target_b: b-values to predict. Subjects
    whose shard lacks an input b-value are skipped (listed in `skipped`). `subjects`
    holds the (cohort, subject) of every slice. With
    zero_shot=True, held-out b-values are never marked present (nothing at those b
    can train). Item shapes: (n_in, H, W), (n_target, H, W), (n_target,), (H, W).
    """

    def __init__(self, shards, input_b, target_b, heldout_b=(), zero_shot=True):
        super().__init__()
        self.input_b = [float(b) for b in input_b]
        self.target_b = [float(b) for b in target_b]
        self.heldout_b = [float(b) for b in heldout_b]
        self.shards = [str(p) for p in shards]
        heldout = set(self.heldout_b)
        inputs, targets, present, masks, self.subjects, self.skipped = [], [], [], [], [], []
        self.slice_index: list[int] = []  # each slice's index in its subject's shard
        self.pinned: set[tuple[str, str]] = set()  # subjects that must train (never held out for validation)
        for path in shards:
            with np.load(path) as shard:
                grid = [float(b) for b in shard["bvals"]]
                acquired = shard["present"]
                if not all(b in grid and acquired[grid.index(b)] for b in self.input_b):
                    self.skipped.append(str(path))
                    continue
                images, mask = shard["images"], shard["mask"]
                meta = json.loads(str(shard["metadata"]))
                subject = (meta["cohort"], meta["subject"])
            flags = np.array([b in grid and bool(acquired[grid.index(b)]) and not (zero_shot and b in heldout)
                              for b in self.target_b])
            stack = np.zeros((images.shape[0], len(self.target_b), *images.shape[2:]), np.float32)
            for j, b in enumerate(self.target_b):
                if flags[j]:
                    stack[:, j] = images[:, grid.index(b)]
            inputs.append(images[:, [grid.index(b) for b in self.input_b]].astype(np.float32))
            targets.append(stack)
            present.append(np.repeat(flags[None], images.shape[0], 0))
            masks.append(mask.astype(bool))
            self.subjects += [subject] * images.shape[0]
            self.slice_index += list(range(images.shape[0]))
        shapes = {a.shape[2:] for a in inputs}
        if len(shapes) > 1:
            raise ValueError(f"slice shards differ in in-plane size {sorted(shapes)}; one model needs one size "
                             "(resample the organ's scans to one matrix)")
        empty = np.zeros((0, 0), np.float32)
        self.inputs = np.concatenate(inputs) if inputs else empty
        self.targets = np.concatenate(targets) if targets else empty
        self.present = np.concatenate(present) if present else empty
        self.masks = np.concatenate(masks) if masks else empty

    def subject_keys(self) -> list[tuple[str, str]]:
        """The (cohort, subject) pairs the slices come from, sorted."""
        return sorted(set(self.subjects))

    def split_subjects(self, held_out: list[tuple[str, str]]) -> tuple["SliceDataset", "SliceDataset"]:
        """(the slices of every other subject, the slices of `held_out`): the trainer's validation split."""
        held = {tuple(s) for s in held_out}
        keep = np.array([tuple(s) not in held for s in self.subjects], bool)
        return self._subset(keep), self._subset(~keep)

    def _subset(self, rows: np.ndarray) -> "SliceDataset":
        part = object.__new__(SliceDataset)
        torch.utils.data.Dataset.__init__(part)
        part.input_b, part.target_b, part.skipped = self.input_b, self.target_b, self.skipped
        part.heldout_b, part.shards, part.pinned = self.heldout_b, self.shards, set(self.pinned)
        part.subjects = [s for s, keep in zip(self.subjects, rows) if keep]
        part.slice_index = [i for i, keep in zip(self.slice_index, rows) if keep]
        for name in ("inputs", "targets", "present", "masks"):
            setattr(part, name, getattr(self, name)[rows])
        return part

    def with_extra(self, source: "SliceDataset", picked: dict[float, np.ndarray], share: float) -> "SliceDataset":
        """These slices plus rows of `source` (same b-values) showing only their picked held-out b:
        {b: source rows}. The picked rows are repeated until they are about `share` of the result,
        so a handful of few-shot images reach the batches."""
        rows = [(b, int(i)) for b, chosen in picked.items() for i in chosen]
        if not rows:
            return self
        repeat = max(1, int(round(share * len(self) / ((1 - share) * len(rows)))))
        part = self._subset(np.ones(len(self), bool))
        extra_present = np.zeros((len(rows), len(self.target_b)), bool)
        for r, (b, _) in enumerate(rows):
            extra_present[r, self.target_b.index(b)] = True
        index = [i for _, i in rows]
        extra_targets = np.where(extra_present[:, :, None, None], source.targets[index], 0).astype(np.float32)
        part.inputs = np.concatenate([part.inputs] + [source.inputs[index]] * repeat)
        part.targets = np.concatenate([part.targets] + [extra_targets] * repeat)
        part.present = np.concatenate([part.present] + [extra_present] * repeat)
        part.masks = np.concatenate([part.masks] + [source.masks[index]] * repeat)
        part.subjects = part.subjects + [source.subjects[i] for i in index] * repeat
        part.slice_index = part.slice_index + [source.slice_index[i] for i in index] * repeat
        part.pinned |= {tuple(source.subjects[i]) for i in index}  # their images must reach the batches
        return part

    def digest(self) -> str:
        """Content digest of every array the trainer reads (a changed voxel changes it)."""
        h = hashlib.sha256(json.dumps([self.input_b, self.target_b, self.subjects, sorted(self.pinned)]).encode())
        for array in (self.inputs, self.targets, self.present, self.masks):
            h.update(str((array.dtype, array.shape)).encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return tuple(torch.from_numpy(np.ascontiguousarray(a[i]))
                     for a in (self.inputs, self.targets, self.present, self.masks))
