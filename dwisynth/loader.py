"""Training slices from the per-subject shards, as arrays memory-mapped from unlinked temporary files.

A map-style dataset, so the trainer can draw any sample by index: that is what
makes a resumed run draw exactly the batches an uninterrupted one would.

The slices live on disk (and in the page cache, which the kernel may drop), not in the process's private
memory, and every pass over them goes in chunks: memory stays flat as the cohort grows (bench/scale.py
measures 5,000 against 50,000 slices).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable

import numpy as np
import torch

from dwisynth.errors import DwisynthError
from dwisynth.networks.blocks import to_network

# How an input channel reaches the network range [-1, 1]: diffusion signal (S/S0) on the square-root scale
# of `blocks.to_network`, CT in a HU window, or a binary mask. model.pt records the list, so inference
# scales each channel exactly as training did.
SIGNAL = {"kind": "signal"}


def hu_window_scaling(window) -> dict:
    return {"kind": "hu", "window": [float(window[0]), float(window[1])]}


MASK = {"kind": "mask"}

CHUNK_ROWS = 256  # slices per chunk when a pass reads or copies a whole dataset


def disk_array(shape, dtype) -> np.ndarray:
    """A zeroed array backed by a memory-mapped temporary file (TMPDIR) that is unlinked at once: the disk
    space returns when the array is gone, also after kill -9, and no file is left behind."""
    if 0 in tuple(shape):
        return np.zeros(shape, dtype)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    fd, path = tempfile.mkstemp(prefix="dwisynth-slices-")
    try:
        try:  # reserve the space now: a full disk is an error here, not a SIGBUS in the middle of a write
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise DwisynthError(f"{tempfile.gettempdir()}: no room for {nbytes / 2**30:.2f} GB of training "
                                    "slices; point TMPDIR at a disk with space") from error
        mapped = np.memmap(path, dtype=dtype, mode="w+", shape=tuple(shape))
    finally:
        os.close(fd)
        os.unlink(path)
    return np.asarray(mapped)  # a plain ndarray view: indexing it gives in-memory copies of the rows asked for


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] (an index or boolean array) copied chunk by chunk into a new disk array."""
    index = np.flatnonzero(rows) if rows.dtype == bool else np.asarray(rows)
    out = disk_array((len(index), *array.shape[1:]), array.dtype)
    for start in range(0, len(index), CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = array[index[start:start + CHUNK_ROWS]]
    return out


def stack_rows(parts: list[np.ndarray]) -> np.ndarray:
    """np.concatenate(parts) written chunk by chunk into a new disk array."""
    out = disk_array((sum(len(p) for p in parts), *parts[0].shape[1:]), parts[0].dtype)
    row = 0
    for part in parts:
        for start in range(0, len(part), CHUNK_ROWS):
            chunk = part[start:start + CHUNK_ROWS]
            out[row:row + len(chunk)] = chunk
            row += len(chunk)
    return out


def _sort_keys(values: np.ndarray) -> np.ndarray:
    """float32 -> uint32 keys in the same order as the floats (negatives flipped, sign bit set on the rest)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return np.where(bits & 0x80000000, ~bits, bits | 0x80000000).astype(np.uint32)


def _from_sort_key(key: int) -> np.float32:
    bits = key & 0x7FFFFFFF if key & 0x80000000 else ~key & 0xFFFFFFFF
    return np.array([bits], np.uint32).view(np.float32)[0]


def chunked_percentile(chunks: Callable[[], Iterable[np.ndarray]], q: float) -> float | None:
    """np.percentile(np.concatenate(list(chunks())), q), bit for bit, without holding the values: the two
    order statistics numpy interpolates between are found by a radix selection over float32 sort keys
    (high 16 bits in one pass, low 16 in a second), then interpolated by numpy itself. chunks() returns a
    fresh iterable of float32 arrays each time it is called. None when there are no values."""
    high = np.zeros(1 << 16, np.int64)
    for chunk in chunks():
        high += np.bincount(_sort_keys(chunk) >> 16, minlength=1 << 16)
    n = int(high.sum())
    if n == 0:
        return None
    # numpy's 'linear' method on float32 data, in float32 as numpy computes it: q / 100, the index (n - 1) * q
    # and the fraction past it; at or past the last index it takes the largest value
    virtual = (n - 1) * np.asanyarray(np.true_divide(q, np.float32(100)))
    below = min(int(np.floor(virtual)), n - 1)
    ranks = [below, min(below + 1, n - 1)]
    ends = np.cumsum(high)
    bins = [int(np.searchsorted(ends, r, side="right")) for r in ranks]
    low = {b: np.zeros(1 << 16, np.int64) for b in set(bins)}
    for chunk in chunks():
        keys = _sort_keys(chunk)
        for b, counts in low.items():
            counts += np.bincount(keys[(keys >> 16) == b] & 0xFFFF, minlength=1 << 16)
    values = []
    for r, b in zip(ranks, bins):
        within = r - (int(ends[b - 1]) if b else 0)
        values.append(_from_sort_key((b << 16) | int(np.searchsorted(np.cumsum(low[b]), within, side="right"))))
    if virtual >= n - 1:
        return float(values[1])
    return float(np.quantile(np.array(values, np.float32), np.float32(virtual - below)))


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

    def __init__(self, shards, input_b, target_b, heldout_b=(), zero_shot=True, lesion_masks: dict | None = None):
        super().__init__()
        self.input_b = [float(b) for b in input_b]
        self.target_b = [float(b) for b in target_b]
        self.heldout_b = [float(b) for b in heldout_b]
        self.shards = [str(p) for p in shards]
        heldout = set(self.heldout_b)
        self.subjects, self.skipped = [], []
        self.slice_index: list[int] = []  # each slice's index in its subject's shard
        self.pinned: set[tuple[str, str]] = set()  # subjects that must train (never held out for validation)
        self.input_scaling: list[dict] | None = None  # None: every input is diffusion signal
        # (N, H, W) bool lesion masks, for lesion oversampling: lesion_masks {(cohort, subject): (Z, H, W) bool
        # volume, indexed by the shard's slice_index}; a subject without one trains with no lesion slices
        self.lesions: np.ndarray | None = None
        # first pass, masks and metadata only: which shards train and how many slices, before any image is read
        plan = []
        for path in shards:
            with np.load(path) as shard:
                grid = [float(b) for b in shard["bvals"]]
                acquired = shard["present"]
                if not all(b in grid and acquired[grid.index(b)] for b in self.input_b):
                    self.skipped.append(str(path))
                    continue
                n, height, width = shard["mask"].shape
                meta = json.loads(str(shard["metadata"]))
            flags = np.array([b in grid and bool(acquired[grid.index(b)]) and not (zero_shot and b in heldout)
                              for b in self.target_b])
            plan.append((path, grid, flags, n, (height, width)))
            self.subjects += [(meta["cohort"], meta["subject"])] * n
            self.slice_index += list(range(n))
        shapes = {size for *_, size in plan}
        if len(shapes) > 1:
            raise ValueError(f"slice shards differ in in-plane size {sorted(shapes)}; one model needs one size "
                             "(resample the organ's scans to one matrix)")
        if not plan:
            empty = np.zeros((0, 0), np.float32)
            self.inputs = self.targets = self.present = self.masks = empty
            return
        total, size = len(self.subjects), shapes.pop()
        self.inputs = disk_array((total, len(self.input_b), *size), np.float32)
        self.targets = disk_array((total, len(self.target_b), *size), np.float32)
        self.masks = disk_array((total, *size), bool)
        self.present = np.zeros((total, len(self.target_b)), bool)
        self.lesions = disk_array((total, *size), bool) if lesion_masks is not None else None
        row = 0
        for path, grid, flags, n, _ in plan:
            with np.load(path) as shard:
                images, mask = shard["images"], shard["mask"]
                index = shard["slice_index"] if "slice_index" in shard.files else np.arange(n)
                key = tuple(self.subjects[row])
            rows = slice(row, row + n)
            if lesion_masks is not None and key in lesion_masks:
                self.lesions[rows] = np.asarray(lesion_masks[key], bool)[index]
            self.inputs[rows] = images[:, [grid.index(b) for b in self.input_b]]
            for j, b in enumerate(self.target_b):
                if flags[j]:
                    self.targets[rows, j] = images[:, grid.index(b)]
            self.present[rows] = flags
            self.masks[rows] = mask.astype(bool)
            row += n

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
        for name in ("inputs", "targets", "masks"):
            setattr(part, name, take_rows(getattr(self, name), rows))
        part.present = self.present[rows]
        part.lesions = None if self.lesions is None else take_rows(self.lesions, rows)
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
        data.subjects, data.slice_index, plan = [], [], []
        for path in shards:  # first pass: which shards train, and their slices
            with np.load(path) as shard:
                if "ct" not in shard.files or "ct_mask" not in shard.files:
                    raise ValueError(f"{path}: no CT slices in this shard; CT -> DWI training needs the stroke "
                                     "subjects' shards (a DWI subject with a CT row in the sample sheet)")
                grid = [float(b) for b in shard["bvals"]]
                if float(target_b) not in grid or not shard["present"][grid.index(float(target_b))]:
                    data.skipped.append(str(path))
                    continue
                meta = json.loads(str(shard["metadata"]))
                index = shard["slice_index"]
                size = shard["mask"].shape[1:]
            plan.append((path, grid.index(float(target_b)), (meta["cohort"], meta["subject"]), index))
            data.subjects += [plan[-1][2]] * len(index)
            data.slice_index += [int(i) for i in index]
        total = len(data.subjects)
        size = size if plan else (0, 0)
        data.inputs = disk_array((total, 2, *size), np.float32)
        data.targets = disk_array((total, 1, *size), np.float32)
        data.masks = disk_array((total, *size), bool)
        data.present = np.ones((total, 1), bool)
        data.lesions = disk_array((total, *size), bool) if lesion_masks is not None and plan else None
        row = 0
        for path, target, key, index in plan:
            with np.load(path) as shard:
                rows = slice(row, row + len(index))
                data.inputs[rows, 0], data.inputs[rows, 1] = shard["ct"], shard["ct_mask"]
                data.targets[rows, 0] = shard["images"][:, target]
                data.masks[rows] = shard["mask"].astype(bool)
            if lesion_masks is not None:
                data.lesions[rows] = np.asarray(lesion_masks[key], bool)[index]
            row += len(index)
        return data

    def signal_chunks(self) -> Iterable[np.ndarray]:
        """Voxels (inside the masks) whose range sets the network's S/S0 scale, a chunk of slices at a time:
        the first signal input, or the targets when no input is diffusion signal (CT -> DWI)."""
        kinds = [r["kind"] for r in self.input_scaling] if self.input_scaling else ["signal"] * self.inputs.shape[1]
        for start in range(0, len(self), CHUNK_ROWS):
            rows = slice(start, start + CHUNK_ROWS)
            if "signal" in kinds:
                yield self.inputs[rows, kinds.index("signal")][self.masks[rows]]
            else:
                yield self.targets[rows, 0][self.masks[rows] & self.present[rows, 0][:, None, None]]

    def with_extra(self, source: "SliceDataset", picked: dict[float, np.ndarray], share: float) -> "SliceDataset":
        """These slices plus rows of `source` (same b-values) showing only their picked held-out b:
        {b: source rows}. The picked rows are repeated until they are about `share` of the result,
        so a handful of few-shot images reach the batches."""
        rows = [(b, int(i)) for b, chosen in picked.items() for i in chosen]
        if not rows:
            return self
        repeat = max(1, int(round(share * len(self) / ((1 - share) * len(rows)))))
        part = copy.copy(self)  # every array is replaced below: nothing is copied twice
        part.pinned = set(self.pinned)
        extra_present = np.zeros((len(rows), len(self.target_b)), bool)
        for r, (b, _) in enumerate(rows):
            extra_present[r, self.target_b.index(b)] = True
        index = [i for _, i in rows]
        extra_targets = np.where(extra_present[:, :, None, None], source.targets[index], 0).astype(np.float32)
        part.inputs = stack_rows([part.inputs] + [source.inputs[index]] * repeat)
        part.targets = stack_rows([part.targets] + [extra_targets] * repeat)
        part.present = np.concatenate([part.present] + [extra_present] * repeat)
        part.masks = stack_rows([part.masks] + [source.masks[index]] * repeat)
        if self.lesions is not None:  # the few-shot rows are drawn for their b, not for a lesion
            part.lesions = stack_rows([self.lesions] + [np.zeros((len(index), *self.lesions.shape[1:]), bool)] * repeat)
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
            for start in range(0, len(array), CHUNK_ROWS):  # the same bytes as the whole array's, streamed
                h.update(np.ascontiguousarray(array[start:start + CHUNK_ROWS]).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return tuple(torch.from_numpy(np.ascontiguousarray(a[i]))
                     for a in (self.inputs, self.targets, self.present, self.masks))
