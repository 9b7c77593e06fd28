"""The network contract: one base class, and the one list of methods.

Every synthesis network subclasses `Network`, names itself (`name`, `label`, `task`)
and brings a `Config` dataclass, which *is* its config block: the schema check, the
defaults and the documentation of that block are generated from the dataclass, so a
new network needs no schema or rule edit. Subclassing registers the network; the
workflow (`rules/common.smk`), the config schema, the report and the Slurm profile
read the method list from here.

Networks live in modules of this package (found by import) or in modules named in
the environment variable DWISYNTH_PLUGINS (comma-separated module names or .py
paths), so a study can add a network without touching dwisynth.

The trainer calls the hooks below; it owns the device, data order, checkpoints and
logging. Tensor shapes: inputs (N, n_inputs, H, W), targets (N, n_targets, H, W),
both in the network range [-1, 1].
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import types
import typing
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import nn

from dwisynth.errors import ConfigError
from dwisynth.networks.losses import lesion_l1

TASKS = ("multib", "ct2dwi")
# Image sources scored beside the networks; they are rules of their own, not trained.
BASELINES = {"cdwi": "cDWI (physics)", "dc2anetinterp": "DC²Anet + log-linear interpolation",
             "noisefree": "noise-free reference"}
PLUGINS_VARIABLE = "DWISYNTH_PLUGINS"
_SHARED_MODULES = ("base", "blocks", "losses")

_REGISTRY: dict[str, type[Network]] = {}
_loaded = False


@dataclass
class NetworkConfig:
    """Settings every network block carries: the length of training and its optimizer."""

    steps: int = field(default=200000, metadata={"minimum": 1, "description": "optimisation steps"})
    lr: float = field(default=2e-4, metadata={"exclusiveMinimum": 0, "description": "Adam learning rate"})
    betas: tuple[float, float] = field(default=(0.5, 0.999), metadata={"description": "Adam betas"})
    decay_start: int | None = field(default=None, metadata={
        "minimum": 0, "description": "lr constant until this step, then linear to 0; null = steps / 2"})
    grad_clip: float | None = field(default=None, metadata={
        "exclusiveMinimum": 0, "description": "max global gradient norm per step for this network; "
                                              "null: training.grad_clip"})
    warmup_steps: int | None = field(default=None, metadata={
        "minimum": 0, "description": "lr rises linearly from 0 over these first steps for this network; "
                                     "null: training.warmup_steps"})


class Network(nn.Module, ABC):
    """A trainable synthesis network: its modules, losses and one optimisation step."""

    name: ClassVar[str]  # the method name in config, paths and tables
    label: ClassVar[str]  # how reports name it
    task: ClassVar[str] = "multib"  # the task it was built for (the one its multi-organ models serve)
    # Every task it can be trained on: a generic image-to-image network (pix2pix) is also a CT -> DWI baseline.
    tasks: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type[NetworkConfig]] = NetworkConfig
    # Variants of one network (MineGAN's few-shot and ablation) share its config block: name it here.
    config_block: ClassVar[str | None] = None
    # Models of the same organ this one is built from: {role: method}; their model.pt files are inputs
    # of its training job and `prepare` gets their records.
    upstream: ClassVar[dict[str, str]] = {}
    # Train with channels-last weights and activations: a measured choice per network, as the gain depends
    # on its convolutions (`bench/quality.py` calibration, CPU, one thread).
    channels_last: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if "tasks" not in cls.__dict__:
                cls.tasks = (cls.task,)
            wrong = [t for t in (cls.task, *cls.tasks) if t not in TASKS]
            if wrong or cls.task not in cls.tasks:
                raise TypeError(f"{cls.__qualname__}: task {cls.task!r} and tasks {cls.tasks} must be among {TASKS} "
                                "(and tasks must hold task)")
            if cls.name in BASELINES:
                raise TypeError(f"{cls.__qualname__}: {cls.name!r} is the name of a baseline")
            _REGISTRY[cls.name] = cls

    def __init__(self, config: NetworkConfig, n_inputs: int, n_targets: int):
        super().__init__()
        self.config, self.n_inputs, self.n_targets = config, n_inputs, n_targets
        # training.lesion_weight, set by the trainer: a training setting, the same for every network compared
        self.lesion_weight = 0.0

    # --- hooks the training job calls before the trainer -------------------------------------
    @classmethod
    def dataset_bvalues(cls, bvalues: dict) -> tuple[list[float], list[float]]:
        """(input b-values, target b-values) of the training slices, from the `bvalues` block."""
        return [float(b) for b in bvalues["inputs"]], [float(b) for b in bvalues["targets"]]

    def training_data(self, data, seed: int):
        """The `SliceDataset` to train on, given the zero-shot one (held-out b never present). Few-shot
        networks add images here and pin their subjects (`data.pinned`: never held out for validation)."""
        return data

    def prepare(self, upstream: dict[str, dict], bvalues: dict, seed: int) -> None:
        """Build what depends on upstream models (their model.pt records, by role) or the b-values."""

    def fixed_intensity_max(self) -> float | None:
        """The network scale's S/S0 range when an upstream model fixes it (its images enter this network)."""
        return None

    def training_steps(self) -> int:
        """Total optimisation steps (networks trained in phases sum them)."""
        return self.config.steps

    def learning_rate(self) -> float:
        """The Adam learning rate of every parameter group (the block's lr)."""
        return float(self.config.lr)

    def lr_decay_start(self) -> int | None:
        """The step where the lr starts its linear decay to zero (None: half way, the trainer's default)."""
        return self.config.decay_start

    def describe(self) -> dict:
        """What model.pt records about this network's training besides the trainer's metadata."""
        return {}

    # --- hooks the trainer calls -----------------------------------------------------------
    def predict(self, network: nn.Module, inputs: torch.Tensor, target_b: list[float]) -> torch.Tensor:
        """The inference network's prediction at target_b (N, len(target_b), H, W), for validation."""
        return network(inputs)

    def bridged_references(self, targets: torch.Tensor, present: torch.Tensor,
                           target_b: list[float]) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
        """Label-free validation at b-values without images: {b: (rows (M,), reference (M, 1, H, W))}, from the
        validation targets on the network scale (N, T, H, W) and their `present` mask; none by default."""
        return {}

    def add_lesion_l1(self, losses: dict, total: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                      present: torch.Tensor | None, lesion: torch.Tensor | None) -> torch.Tensor:
        """total + training.lesion_weight x the network's voxel-L1 weight x L1 inside the lesion mask (acquired
        channels), logged as lesion_l1; total unchanged when the weight is 0 or the batch carries no lesion mask.
        Every network calls it on its paired prediction, and the weight is relative to its own voxel L1, so the
        lesion supervision of a comparison is one setting that weighs the lesion against the image alike in all
        of its networks (a GAN's L1 at 100 and an L1-only U-Net's at 1)."""
        if not self.lesion_weight or lesion is None:
            return total
        losses["lesion_l1"] = lesion_l1(pred, target, present, lesion)
        return total + self.lesion_weight * self.voxel_l1_weight() * losses["lesion_l1"]

    def voxel_l1_weight(self) -> float:
        """The weight of the network's voxel L1 term in its generator loss (the scale of training.lesion_weight)."""
        return 1.0

    @abstractmethod
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{name: parameters}: the trainer makes one Adam optimizer (and lr schedule) per group."""

    @abstractmethod
    def training_step(self, batch, optimizers: dict, generator: torch.Generator, step: int) -> dict[str, float]:
        """One optimisation step on `batch` (a `dwisynth.training.Batch`); returns {loss name: value}.

        Every random draw comes from `generator` (seeded by the step), so a resumed run repeats it.
        """

    @abstractmethod
    def inference_network(self) -> nn.Module:
        """The module that maps inputs to targets at inference; its state dict goes into model.pt."""

    @abstractmethod
    def inference_spec(self) -> dict:
        """What model.pt needs to rebuild the inference network: `kwargs` for `build_inference_network`
        and `pad_multiple` (H and W are padded to a multiple of it)."""

    @classmethod
    @abstractmethod
    def build_inference_network(cls, **kwargs) -> nn.Module:
        """The inference network from model.pt's `kwargs` (without training-only parts)."""

    def phase(self, step: int) -> str:
        """The training phase at `step` (networks that train in phases override it)."""
        return "train"

    def start_phase(self, phase: str, optimizers: dict) -> None:
        """Called before the first step of each phase, and on resume for the phase resumed into."""

    def selectable(self, step: int) -> bool:
        """Whether the weights after `step` may be exported as the model; a phase that is only a warm start
        (DC²Anet's paired warm-up) is validated and logged but never exported."""
        return True

    def warm_start(self, phase: str) -> bool:
        """Whether `phase` starts from the best validated weights of the not-selectable phase before it (when
        validation fell after them) instead of its last weights."""
        return False

    def extra_state(self) -> dict:
        """What a resume needs besides weights and optimizers (image pools)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


# --- the registry ----------------------------------------------------------------------------
def _import_plugin(spec: str) -> None:
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{PLUGINS_VARIABLE}: {path} not found")
        name = f"dwisynth_plugin_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # so the network's source can be found (code_digest)
        module_spec.loader.exec_module(module)
    else:
        try:
            importlib.import_module(spec)
        except ImportError as exc:
            raise ConfigError(f"{PLUGINS_VARIABLE}: cannot import network module {spec!r} ({exc})") from exc


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = Path(__file__).parent
    for info in pkgutil.iter_modules([str(package)]):
        if info.name not in _SHARED_MODULES:
            importlib.import_module(f"dwisynth.networks.{info.name}")
    for spec in filter(None, (s.strip() for s in os.environ.get(PLUGINS_VARIABLE, "").split(","))):
        _import_plugin(spec)


def networks(task: str | None = None) -> dict[str, type[Network]]:
    """Registered networks (that can be trained for `task`), in registration order."""
    _load()
    return {name: cls for name, cls in _REGISTRY.items() if task is None or task in cls.tasks}


def network_class(method: str) -> type[Network]:
    known = networks()
    if method not in known:
        hint = difflib.get_close_matches(method, known, n=1)
        raise ConfigError(f"unknown network {method!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; networks: {', '.join(known)}")
    return known[method]


def method_labels() -> dict[str, str]:
    """Every method a table may hold (networks, then baselines) -> its name in reports."""
    return {**{name: cls.label for name, cls in networks().items()}, **BASELINES}


def config_block_name(method: str) -> str:
    """The config block a network reads (its own name, or the network it is a variant of)."""
    return network_class(method).config_block or method


def build_network(method: str, block: dict, n_inputs: int, n_targets: int, seed: int) -> Network:
    """A freshly initialised network (weights drawn from `seed`) from its config block."""
    cls = network_class(method)
    config = config_from_block(cls.Config, block, method)
    torch.manual_seed(seed)
    return cls(config, n_inputs, n_targets)


def build_inference_network(record: dict) -> nn.Module:
    """The inference network a model.pt record describes (method and kwargs)."""
    return network_class(record["method"]).build_inference_network(**record["kwargs"])


def weight_files(method: str, block: dict | None) -> dict[str, str]:
    """{field: path} of the files a network's config points at for fixed weights (`format: file-path`
    fields, e.g. DC²Anet's VGG16 for the perceptual loss): their bytes shape training, so they are the
    train rule's inputs and their digests part of the checkpoint fingerprint, not just their paths."""
    return config_weight_files(config_from_block(network_class(method).Config, block, method))


def config_weight_files(config) -> dict[str, str]:
    """`weight_files` of a built config dataclass."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if f.metadata.get("format") == "file-path" and getattr(config, f.name)}


def code_digest(method: str) -> str:
    """Digest of the source that shapes a network's training: its module, the shared network modules, the
    trainer and the data loader with every package module those import, and the source of the drivers that
    build its data and metadata (synthesis, ct2dwi). A change retrains (the train rule's params, the
    checkpoint fingerprint). Not part of it: another network's module, unless this one imports it, and what
    the drivers import for scoring and synthesis (an edit to evaluate.py must not discard checkpoints)."""
    from dwisynth.provenance import module_file, source_digest

    cls = network_class(method)
    modules = [f"{__package__}.{m}" for m in _SHARED_MODULES] + ["dwisynth.training", "dwisynth.loader"]
    if module_file(cls.__module__) == Path(inspect.getfile(cls)):  # in dwisynth, or a plugin found by its name
        digest = hashlib.sha256(source_digest(cls.__module__, *modules).encode())
    else:  # a plugin loaded from a file (DWISYNTH_PLUGINS)
        digest = hashlib.sha256(source_digest(*modules, script=inspect.getfile(cls)).encode())
    for driver in ("dwisynth.synthesis", "dwisynth.ct2dwi"):
        digest.update(module_file(driver).read_bytes())
    return digest.hexdigest()[:16]


# --- config blocks from dataclasses ----------------------------------------------------------
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _type_schema(hint) -> dict:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        schema = _type_schema(inner[0])
        if type(None) in args:
            schema["type"] = [schema["type"], "null"] if isinstance(schema.get("type"), str) else schema["type"]
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
        return schema
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin in (tuple, list):
        item = args[0] if args else float
        schema = {"type": "array", "items": _type_schema(item)}
        if origin is tuple and args and args[-1] is not Ellipsis:
            schema["minItems"] = schema["maxItems"] = len(args)
        return schema
    if dataclasses.is_dataclass(hint):
        return block_schema(hint)
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if hint in simple:
        return {"type": simple[hint]}
    raise TypeError(f"config field type {hint!r} has no JSON schema")


def block_schema(cls) -> dict:
    """JSON schema of a config dataclass: types, defaults, bounds and descriptions from field metadata."""
    hints, properties = _hints(cls), {}
    for f in dataclasses.fields(cls):
        schema = _type_schema(hints[f.name])
        schema.update(f.metadata)
        if f.default is not dataclasses.MISSING:
            schema["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            schema["default"] = {} if dataclasses.is_dataclass(value) else value
        properties[f.name] = schema
    return {"type": "object", "default": {}, "properties": properties, "additionalProperties": False}


def config_from_block(cls, block: dict | None, where: str):
    """The config dataclass from a (validated or hand-written) block; unknown keys name the nearest valid one."""
    block = dict(block or {})
    hints, names = _hints(cls), [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in block if k not in names]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; valid keys: {', '.join(names)}")
    values = {}
    for name, value in block.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = config_from_block(hint, value, f"{where}.{name}")
        elif typing.get_origin(hint) is tuple and value is not None:
            value = tuple(value)
        values[name] = value
    return cls(**values)
