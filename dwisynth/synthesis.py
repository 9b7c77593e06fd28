"""Path-level synthesis steps: what the training and synthesis rules and `dwisynth synthesize` run.

Synthetic outputs are 4D NIfTI in the grid and geometry of the normalized input,
holding the input b-values (copied) followed by the synthesized targets, with a
.bval beside them, so the one ADC function reads them like an acquisition.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from dwisynth.errors import ConfigError
from dwisynth.io import load_dwi, load_mask, save_nifti, write_bval
from dwisynth.preprocess.steps import adc as write_adc


def train_model(method: str, organ: str, shards, out_dir, block: dict, training: dict, bvalues: dict, seed: int,
                device: str = "auto", progress: bool = True, upstream: dict | None = None,
                lesion_masks: dict | None = None) -> Path:
    """Train one network for one organ on the given (train-split) shards; returns model.pt's path.

    block: the network's config block; training: the `training` block; bvalues: the `bvalues` block;
    upstream: {role: model.pt path} of the models this network is built from (`Network.upstream`);
    lesion_masks: {(cohort, subject): (X, Y, Z) bool on the DWI grid} of training subjects, for
    `training.lesion_oversample` (every network alike).
    """
    from dwisynth.inference import load_model
    from dwisynth.loader import SliceDataset
    from dwisynth.networks.base import build_network, network_class
    from dwisynth.training import Trainer, weights_digest

    cls = network_class(method)
    inputs, targets = cls.dataset_bvalues(bvalues)
    missing = sorted(set(cls.upstream) - set(upstream or {}))
    if missing:
        raise ConfigError(f"{method} is built from the {organ} models {', '.join(cls.upstream[r] for r in missing)}; "
                          "train those first (the workflow does it)")
    records = {role: load_model(path, "cpu").record for role, path in (upstream or {}).items()}
    by_slice = None if lesion_masks is None else {tuple(k): np.moveaxis(np.asarray(v, bool), -1, 0)
                                                  for k, v in lesion_masks.items()}
    data = SliceDataset(shards, inputs, targets, bvalues.get("heldout", ()), zero_shot=True, lesion_masks=by_slice)
    if data.skipped:
        print(f"[train] skipped (no input b-values {inputs}): {', '.join(Path(s).name for s in data.skipped)}")
    subjects = data.subject_keys()
    model = build_network(method, block, len(inputs), len(targets), seed)
    model.prepare(records, bvalues, seed)
    data = model.training_data(data, seed)
    print(f"[train] {method} {organ}: {len(data)} slices from {len(subjects)} subjects; "
          f"target b {targets} acquired in {np.round(100 * data.present.mean(0), 1).tolist() if len(data) else []} "
          "% of slices")
    intensity_max = model.fixed_intensity_max() or training.get("intensity_max")
    config = trainer_config(training, model, intensity_max, seed, device, progress)
    meta = {"method": method, "task": model.task, "organ": organ, "input_b": [float(b) for b in inputs],
            "target_b": [float(b) for b in targets], "heldout_b": [float(b) for b in bvalues.get("heldout", ())],
            "train_subjects": [[cohort, subject] for cohort, subject in subjects], "seed": seed,
            "upstream": {role: r["fingerprint"] for role, r in records.items()},
            # the upstream model's weights, not only its recipe: a retrain with the same settings (a GPU run
            # is not bit-reproducible) must not let this network resume on what the old one taught it
            "upstream_weights": {role: weights_digest(r["state_dict"]) for role, r in records.items()},
            **model.describe()}
    return Trainer(model, data, config, out_dir, meta).fit()


def training_lesion_masks(spec: dict) -> dict[tuple[str, str], np.ndarray]:
    """{"cohort/subject": {"mask": path, "reference": normalized DWI}} -> {(cohort, subject): (X, Y, Z) bool}: each
    mask brought onto its subject's DWI grid through the affines (a mask saved by another tool, in another voxel
    order or on another grid, lands on the same anatomy)."""
    from dwisynth.io import load_on_grid

    return {tuple(key.split("/", 1)): load_on_grid(v["mask"], v["reference"], order=0) > 0.5 for key, v in spec.items()}


def trainer_config(training: dict, model, intensity_max, seed: int, device: str = "auto", progress: bool = True):
    """The one trainer's settings from the `training` block and a network (its lr, betas and schedule)."""
    from dwisynth.training import TrainerConfig

    c = model.config
    return TrainerConfig(steps=model.training_steps(), batch_size=training["batch_size"], crop=training["crop"],
                         lr=model.learning_rate(), betas=tuple(c.betas), decay_start=model.lr_decay_start(),
                         checkpoint_every=training["checkpoint_every"], log_every=training["log_every"],
                         intensity_max=intensity_max, seed=seed, device=device, threads=training.get("threads"),
                         progress=progress, validation_subjects=training.get("validation_subjects", 1),
                         validate_every=training.get("validate_every", 50),
                         warmup_steps=(c.warmup_steps if c.warmup_steps is not None
                                       else training.get("warmup_steps", 0)),
                         grad_clip=c.grad_clip if c.grad_clip is not None else training.get("grad_clip"),
                         collapse_db=training.get("collapse_db", 6.0),
                         lesion_oversample=training.get("lesion_oversample", 0.0),
                         lesion_weight=training.get("lesion_weight", 0.0))


def _write_synthetic(reference_img, inputs: np.ndarray, input_b, synthetic: np.ndarray, target_b,
                     out: dict, mask_path, adc: dict, acquired_b, norm_record=None) -> None:
    """out: {dwi, bval, adc} paths; the ADC is fitted as the acquired ADC is, on the b-values both hold
    (adc: `dwisynth.config.adc_settings`; acquired_b: the acquisition's b-values)."""
    stack = np.concatenate([inputs, synthetic], axis=-1)
    save_nifti(stack, reference_img.affine, out["dwi"])
    write_bval(list(input_b) + list(target_b), out["bval"])
    write_adc(out["dwi"], out["bval"], mask_path, out["adc"], adc, reference_bvals=acquired_b, norm_record=norm_record)


def synthesize_subject(model_path, dwi_path, bval_path, mask_path, out: dict, adc: dict, subject: str = "?",
                       device: str = "auto", target_b=None, norm_record=None,
                       adc_as_acquired: bool = True) -> list[float]:
    """Synthesize the model's target b-values for one normalized DWI, and their ADC in the organ mask.

    out: {dwi, bval, adc} output paths (`dwisynth.layout.synth`); norm_record: the acquisition's normalization
    record (for `adc.noise_floor: repeats`); adc_as_acquired: fit the synthetic ADC only on b-values the
    acquisition also holds (to compare the two; off for a patient whose high b is what was synthesized).
    Returns the b-values written.
    """
    from dwisynth.inference import load_model, synthesize_volume

    model = load_model(model_path, device)
    check_multib_model(model.record, model_path)
    wanted = model.check_b(model.target_b if target_b is None else target_b, str(model_path))
    img = nib.load(dwi_path)
    dwi, bvals = load_dwi(dwi_path, bval_path)
    synthetic = synthesize_volume(model, dwi, bvals, subject, wanted)
    inputs = dwi[..., [list(map(float, bvals)).index(b) for b in model.input_b]]
    if not adc_as_acquired:  # the ADC of what was synthesized includes the b-values asked for (b 850 too)
        adc = {**adc, "bvalues": sorted({*map(float, adc["bvalues"]), *wanted})}
    _write_synthetic(img, inputs, model.input_b, synthetic, wanted, out, mask_path, adc,
                     bvals if adc_as_acquired else None, norm_record)
    return model.input_b + wanted


def check_multib_model(record: dict, source) -> None:
    """A CT -> DWI model cannot synthesize from low-b DWI; say which command it belongs to."""
    if record.get("task") == "ct2dwi":
        raise ConfigError(f"{source} is a CT -> DWI model ({record.get('method')}): it synthesizes DWI from a CT; "
                          "use `dwisynth ct2dwi MODEL CT -o OUT`")


def cdwi_subject(dwi_path, bval_path, mask_path, out: dict, adc: dict, input_b, target_b, norm_record=None) -> None:
    """Computed DWI at target_b from the input b-values only."""
    from dwisynth.inference import cdwi_volume

    img = nib.load(dwi_path)
    dwi, bvals = load_dwi(dwi_path, bval_path)
    input_b = [float(b) for b in input_b]
    cdwi = cdwi_volume(dwi, bvals, input_b, target_b, mask=load_mask(mask_path))
    inputs = dwi[..., [list(map(float, bvals)).index(b) for b in input_b]]
    _write_synthetic(img, inputs, input_b, cdwi, [float(b) for b in target_b], out, mask_path, adc, bvals, norm_record)


def noise_free_volume(truth_dwi, truth_bval, raw_dwi, raw_bval, norm_dwi, norm_bval, target_b, b0_max: float = 10.0):
    """(noise-free truth at target_b on the normalized scale, the normalized DWI, its b-values)."""
    from dwisynth.inference import noise_free_reference

    truth, truth_b = load_dwi(truth_dwi, truth_bval, canonical=True)  # the truth keeps the DICOM's LPS order
    raw, raw_b = load_dwi(raw_dwi, raw_bval)
    norm, norm_b = load_dwi(norm_dwi, norm_bval)
    reference = noise_free_reference(truth, truth_b, raw[..., raw_b <= b0_max].mean(-1),
                                     norm[..., norm_b <= b0_max].mean(-1), [float(b) for b in target_b])
    return reference, norm, norm_b


def noise_free_subject(truth_dwi, truth_bval, raw_dwi, raw_bval, norm_dwi, norm_bval, mask_path, out: dict,
                       adc: dict, input_b, target_b, b0_max: float = 10.0, norm_record=None) -> None:
    """The demo's noise-free truth at target_b on the acquisition's normalized scale (the noise-free reference)."""
    img = nib.load(norm_dwi)
    reference, norm, norm_b = noise_free_volume(truth_dwi, truth_bval, raw_dwi, raw_bval, norm_dwi, norm_bval,
                                                target_b, b0_max)
    input_b = [float(b) for b in input_b]
    inputs = norm[..., [list(map(float, norm_b)).index(b) for b in input_b]]
    _write_synthetic(img, inputs, input_b, reference, [float(b) for b in target_b], out, mask_path, adc, norm_b,
                     norm_record)


def interpolated_subject(source_dwi, source_bval, acquired_bval, mask_path, out: dict, adc: dict, input_b, target_b,
                         norm_record=None) -> None:
    """`dc2anetinterp`: a stage-1 synthesis (inputs + its targets) read at target_b by log-linear interpolation
    between the nearest of its b-values (`diffusion.loglinear_interpolation`), beyond the largest along the
    fitted log-slope of its stage-1 images; b-values it holds are copied."""
    from dwisynth.diffusion import loglinear_interpolation

    img = nib.load(source_dwi)
    stack, stack_b = load_dwi(source_dwi, source_bval)
    input_b = [float(b) for b in input_b]
    inputs = stack[..., [list(map(float, stack_b)).index(b) for b in input_b]]
    stage1_b = [float(b) for b in stack_b if float(b) not in input_b]
    synthetic = loglinear_interpolation(stack, stack_b, target_b, fit_above=min(stage1_b, default=None))
    synthetic = synthetic.astype(np.float32)
    acquired_b = np.loadtxt(acquired_bval, ndmin=1)
    _write_synthetic(img, inputs, input_b, synthetic, [float(b) for b in target_b], out, mask_path, adc, acquired_b,
                     norm_record)
