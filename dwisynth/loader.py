"""Training slices from the per-subject shards, held in memory as arrays.

A map-style dataset, so the trainer can draw any sample by index: that is what
makes a resumed run draw exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch

from dwisynth.networks.blocks import to_network

# How an input channel reaches the network range [-1, 1]: diffusion signal (S/S0) on the square-root scale
# of `blocks.to_network`, CT in a HU window, or a binary mask. model.pt records the list, so inference
# scales each channel exactly as training did.
SIGNAL = {"kind": "signal"}


def hu_window_scaling(window) -> dict:
    return {"kind": "hu", "window": [float(window[0]), float(window[1])]}


MASK = {"kind": "mask"}


def inputs_to_network(x: torch.Tensor, scaling: list[dict] | None, intensity_max: float) -> torch.Tensor:
    """(N, C, H, W) input channels -> the network range, channel by channel (scaling None: all signal)."""
    if scaling is None:
        return to_network(x, intensity_max)
    if len(scaling) != x.shape[1]:
        raise ValueError(f"{x.shape[1]} input channels, but a scaling for {len(scaling)}")
    out = []
    for c, rule in enumerate(scaling):
        channel = x[:, c:c + 1]
        if rule["kind"] == "signal":
            out.append(to_network(channel, intensity_max))
        elif rule["kind"] == "hu":
            low, high = rule["window"]
            out.append(2.0 * (torch.clamp(channel, low, high) - low) / (high - low) - 1.0)
        elif rule["kind"] == "mask":
            out.append(torch.where(channel > 0.5, 1.0, -1.0).to(channel.dtype))
        else:
            raise ValueError(f"unknown input scaling {rule!r}")
    return torch.cat(out, 1)


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
        self.input_scaling: list[dict] | None = None  # None: every input is diffusion signal
        self.lesions: np.ndarray | None = None  # (N, H, W) bool lesion masks (CT -> DWI training only)
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
        part.input_scaling = self.input_scaling
        part.subjects = [s for s, keep in zip(self.subjects, rows) if keep]
        part.slice_index = [i for i, keep in zip(self.slice_index, rows) if keep]
        for name in ("inputs", "targets", "present", "masks"):
            setattr(part, name, getattr(self, name)[rows])
        part.lesions = None if self.lesions is None else self.lesions[rows]
        return part

    @classmethod
    def from_ct(cls, shards, target_b: float, hu_window, lesion_masks: dict | None = None) -> "SliceDataset":
        """CT -> DWI slices: inputs [CT (HU), CT brain mask], target the DWI at target_b, mask the DWI's
        organ mask (crops and validation only, never an input). Every shard must hold `ct` and `ct_mask`
        (stroke subjects); a shard without target_b is skipped. lesion_masks: {(cohort, subject): (Z, H, W)
        bool volume in the shard's slice order, i.e. indexed by slice_index} for the lesion-weighted loss."""
        data = object.__new__(cls)
        torch.utils.data.Dataset.__init__(data)
        data.input_b, data.target_b, data.heldout_b = [], [float(target_b)], []
        data.shards, data.skipped, data.pinned = [str(p) for p in shards], [], set()
        data.input_scaling = [hu_window_scaling(hu_window), MASK]
        inputs, targets, masks, lesions, data.subjects, data.slice_index = [], [], [], [], [], []
        for path in shards:
            with np.load(path) as shard:
                if "ct" not in shard.files or "ct_mask" not in shard.files:
                    raise ValueError(f"{path}: no CT slices in this shard; CT -> DWI training needs the stroke "
                                     "subjects' shards (a DWI subject with a CT row in the sample sheet)")
                grid = [float(b) for b in shard["bvals"]]
                if float(target_b) not in grid or not shard["present"][grid.index(float(target_b))]:
                    data.skipped.append(str(path))
                    continue
                meta = json.loads(str(shard["metadata"]))
                key = (meta["cohort"], meta["subject"])
                index = shard["slice_index"]
                inputs.append(np.stack([shard["ct"], shard["ct_mask"]], 1).astype(np.float32))
                targets.append(shard["images"][:, [grid.index(float(target_b))]].astype(np.float32))
                masks.append(shard["mask"].astype(bool))
            if lesion_masks is not None:
                lesions.append(np.asarray(lesion_masks[key], bool)[index])
            data.subjects += [key] * len(index)
            data.slice_index += [int(i) for i in index]
        data.inputs = np.concatenate(inputs) if inputs else np.zeros((0, 2, 0, 0), np.float32)
        data.targets = np.concatenate(targets) if targets else np.zeros((0, 1, 0, 0), np.float32)
        data.present = np.ones((len(data.inputs), 1), bool)
        data.masks = np.concatenate(masks) if masks else np.zeros((0, 0, 0), bool)
        data.lesions = np.concatenate(lesions) if lesion_masks is not None and lesions else None
        return data

    def signal_reference(self) -> np.ndarray:
        """Voxels (inside the masks) whose range sets the network's S/S0 scale: the first signal input,
        or the targets when no input is diffusion signal (CT -> DWI)."""
        kinds = [r["kind"] for r in self.input_scaling] if self.input_scaling else ["signal"] * self.inputs.shape[1]
        if "signal" in kinds:
            return self.inputs[:, kinds.index("signal")][self.masks]
        return self.targets[:, 0][self.masks & self.present[:, 0][:, None, None]]

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
        h = hashlib.sha256(json.dumps([self.input_b, self.target_b, self.subjects, sorted(self.pinned),
                                       self.input_scaling]).encode())
        for array in (self.inputs, self.targets, self.present, self.masks,
                      *(() if self.lesions is None else (self.lesions,))):
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
