"""The dwisynth command line: single-subject entry points to the same functions the workflow uses."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from dwisynth import __version__
from dwisynth.errors import DwisynthError

STUDY_CONFIG = Path("config/config.yaml")
CONFIG_HELP = "default: config/config.yaml, the study config; for the demo's models use config/demo.yaml"
SUBJECT_LABEL = re.compile(r"[A-Za-z0-9]+")  # the sample sheet's subject rule: a BIDS label
# What `dwisynth scan` names the one patient of a folder; a folder or file name is never used (it can hold a
# patient's name)
FIRST_PSEUDONYM = "S0001"
SUBJECT_HELP = ("study pseudonym used in the output names (letters and digits); default: <id> of an input named "
                f"sub-<id>_..., else {FIRST_PSEUDONYM} (as `dwisynth scan` names a folder's one patient)")


def _convert(args) -> None:
    from dwisynth.convert import convert_series

    convert_series(args.dicom_dir, args.output, args.subject, args.modality, b0_max=args.b0_max,
                   bval=args.bval, bvec=args.bvec)


def _demo_cohort(args) -> None:
    from dwisynth.config import load_config
    from dwisynth.demo.cohort import generate_demo_cohort

    config = load_config(args.config)
    if args.output:
        config["demo"]["outdir"] = str(args.output)
    sheet = generate_demo_cohort(config)
    print(f"[demo-cohort] {len(sheet)} series written; sample sheet {Path(config['demo']['outdir']) / 'samples.tsv'}")


def _adc(args) -> None:
    from dwisynth.diffusion import fit_adc
    from dwisynth.io import load_dwi, load_mask, save_like, written_whole

    dwi, bvals = load_dwi(args.dwi, args.bval)
    mask = load_mask(args.mask) if args.mask else None
    adc = fit_adc(dwi, bvals, mask=mask, max_adc=args.max_adc, use_b=args.bvalues)
    with written_whole(args.output) as partial:
        save_like(adc, args.dwi, partial)
    print(f"[adc] {args.output} (x10^-3 mm²/s)")


def _preprocess(args) -> None:
    from dwisynth.config import load_config
    from dwisynth.preprocess.steps import preprocess_subject

    preprocess_subject(args.dwi, args.bval, args.subject, args.organ, load_config(args.config),
                       args.output / f"sub-{args.subject}", args.ct)
    print(f"[preprocess] sub-{args.subject} -> {args.output}")


def _subject(args) -> str:
    """--subject, else the <id> of an input file named sub-<id>_..., else the first pseudonym of `dwisynth scan`."""
    if args.subject is not None:
        if not SUBJECT_LABEL.fullmatch(args.subject):  # not shown: a patient ID typed by mistake must not be echoed
            raise DwisynthError("--subject (not shown) must be a study pseudonym of letters and digits only, "
                                "as in the sample sheet; never a patient ID")
        return args.subject
    named = re.match(r"sub-([A-Za-z0-9]+)_", args.input.name)
    return named[1] if named and args.input.is_file() else FIRST_PSEUDONYM


def _output_folder(out: Path) -> Path:
    """-o names a folder: the commands write several files into it."""
    if out.name.endswith((".nii", ".nii.gz")) or (out.exists() and not out.is_dir()):
        raise DwisynthError(f"{out}: -o is an output folder (it receives the synthetic DWI, its .bval and the "
                            "files made on the way, each named sub-<id>_...); give a folder, e.g. -o out/")
    return out


def _keep_synthesized(stack: dict, n_synthesized: int) -> None:
    """Cut a written stack (the inputs, then the synthesized volumes) and its .bval to the synthesized volumes:
    the user gets what they asked for. The workflow keeps the inputs (its evaluation reads them)."""
    import nibabel as nib
    import numpy as np

    from dwisynth.io import save_nifti, write_bval

    img = nib.load(stack["dwi"])
    save_nifti(np.asarray(img.dataobj)[..., -n_synthesized:], img.affine, stack["dwi"])
    write_bval(np.loadtxt(stack["bval"], ndmin=1)[-n_synthesized:], stack["bval"])


def _synthesize(args) -> None:
    from dwisynth.config import adc_settings, load_config
    from dwisynth.inference import load_model
    from dwisynth.layout import synth_folder_files
    from dwisynth.preprocess.steps import preprocess_subject
    from dwisynth.synthesis import synthesize_subject

    out = _output_folder(args.output)
    subject = _subject(args)
    config = load_config(args.config)
    if args.normalized and not args.mask:
        raise DwisynthError("--normalized needs --mask (the organ mask of that image, desc-organ_mask): "
                            "the synthetic ADC is fitted inside it")
    from dwisynth.synthesis import check_multib_model

    model = load_model(args.model, "cpu")  # a missing or damaged model.pt is refused before converting anything
    record = model.record
    check_multib_model(record, args.model)
    organ = args.organ or record.get("organ")
    if not organ:
        raise DwisynthError(f"{args.model}: the model does not name its organ; pass --organ")
    wanted = model.check_b(args.b or model.target_b, str(args.model))  # refused before converting anything
    dwi, bval = args.input, args.bval
    if args.input.is_dir():  # a DICOM series: convert it first, as the workflow does
        from dwisynth.convert import convert_series

        convert_series(args.input, out, subject, "DWI", b0_max=config["bvalues"]["b0_max"])
        dwi, bval = out / f"sub-{subject}_dwi.nii.gz", out / f"sub-{subject}_dwi.bval"
    elif bval is None:
        raise DwisynthError(f"{args.input}: a NIfTI input needs --bval (or give a DICOM series folder)")
    if args.normalized:
        norm_dwi, norm_bval, mask = dwi, bval, args.mask
    else:
        files = preprocess_subject(dwi, bval, subject, organ, config, out / f"sub-{subject}")
        norm_dwi, norm_bval, mask = files["dwi"], files["bval"], files["mask"]
    method = record.get("method", "model")
    outputs = synth_folder_files(out, method, subject)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".synthesize-", dir=out) as scratch:  # out gets whole files only
        # the workflow's stack (inputs, then the synthesized b-values): its ADC is fitted on both, as the
        # viewer's is; then only the synthesized volumes are kept
        stack = synth_folder_files(scratch, method, subject)
        synthesize_subject(args.model, norm_dwi, norm_bval, mask, stack, adc_settings(config), subject,
                           device=config["device"], target_b=wanted, adc_as_acquired=False)
        _keep_synthesized(stack, len(wanted))
        for name in ("dwi", "bval", "adc"):
            Path(stack[name]).replace(outputs[name])
    print(f"[synthesize] sub-{subject}: b = {', '.join(f'{b:g}' for b in wanted)} -> {outputs['dwi']}; "
          f"ADC -> {outputs['adc']}")


def _ct2dwi(args) -> None:
    import nibabel as nib

    from dwisynth.config import load_config
    from dwisynth.ct2dwi import check_ct2dwi_model, check_voxel_size, synthesize_ct2dwi
    from dwisynth.inference import load_model
    from dwisynth.io import save_nifti
    from dwisynth.preprocess.steps import ct_brain_mask

    out = _output_folder(args.output)
    subject = _subject(args)
    config = load_config(args.config)
    model = load_model(args.model, "cpu")  # refuse a multi-b model before converting anything
    check_ct2dwi_model(model, str(args.model))
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:  # everything is written in a scratch folder and moved to out only when the DWI exists
        with tempfile.TemporaryDirectory(prefix=".ct2dwi-", dir=out) as scratch:
            work = Path(scratch)
            ct_path = args.input
            if args.input.is_dir():  # a CT DICOM series: convert it first (HU, de-identified), as the workflow does
                from dwisynth.convert import convert_series

                convert_series(args.input, work, subject, "CT")
                ct_path = work / f"sub-{subject}_ct.nii.gz"
            img = nib.load(ct_path)
            if args.grid:  # onto the grid the model was trained on (e.g. the patient's DWI), same scanner space
                from nibabel.processing import resample_from_to

                grid = nib.load(args.grid)  # a 4D DWI gives its 3D grid
                img = resample_from_to(img, (grid.shape[:3], grid.affine), order=1, cval=-1000.0)
            img = nib.as_closest_canonical(img)  # RAS voxel order, as every image under results/
            check_voxel_size(model, img.header.get_zooms(), f"sub-{subject} {args.grid or args.input}")
            stem = work / f"sub-{subject}"
            grid_ct = f"{stem}_space-synth_ct.nii.gz"
            save_nifti(img.get_fdata(dtype="float32"), img.affine, grid_ct)
            mask = f"{stem}_space-synth_desc-ctbrain_mask.nii.gz"
            ct_brain_mask(grid_ct, mask, f"{stem}_space-synth_desc-ctbrain_mask.json", subject,
                          config["ct2dwi"]["brain_hu"])
            method = model.record["method"]
            outputs = {"dwi": f"{stem}_desc-{method}_dwi.nii.gz", "bval": f"{stem}_desc-{method}_dwi.bval"}
            b = synthesize_ct2dwi(args.model, grid_ct, mask, outputs, subject, config["device"])
            for path in sorted(work.iterdir()):
                path.replace(out / path.name)
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    print(f"[ct2dwi] sub-{subject}: DWI b = {b:g} from CT -> {out / Path(outputs['dwi']).name}")


def _view(args) -> None:
    from dwisynth.config import load_config
    from dwisynth.viewer.server import serve

    roots = args.root or [Path.cwd()]
    # the settings the run in --results was made with, so a new study is preprocessed as its subjects were
    config = args.config or next((p for p in (args.results / "provenance/config.yaml", STUDY_CONFIG) if p.is_file()),
                                 STUDY_CONFIG)
    print(f"[view] settings from {config}")
    serve(args.models, args.results, load_config(config), [*roots, args.results], args.host, args.port,
          args.max_upload_mb, args.study)


def _scan(args) -> None:
    from dwisynth.scan import scan_tree, summary, write_drafted_sheet

    scan = scan_tree(args.dicom_root, cohort=args.cohort)
    write_drafted_sheet(scan, args.dicom_root, args.output)
    for line in summary(scan, args.dicom_root, args.output):  # counts only: folder names can name a patient
        print(line, file=sys.stderr)
    print(f"[scan] {len(scan.sheet)} series -> {args.output}; check the columns marked for review")


def _compare_runs(args) -> int:
    from dwisynth.reproduce import compare_runs

    for folder in (args.reference, args.rerun):
        if not (folder / "tables").is_dir():
            raise ValueError(f"{folder}: no tables/ here; give a workflow's results/ folder (run `make demo` first)")
    differences, counts = compare_runs(args.reference, args.rerun, args.rtol)
    for d in differences:
        print(f"DIFFERS {d.path}: {d.what}")
    verdict = "identical" if args.rtol == 0 else f"equal within rtol {args.rtol:g}"
    print(f"[compare-runs] {counts['tables']} tables, {counts['models']} models compared: "
          + (f"{len(differences)} differences" if differences else verdict)
          + " (wall-time columns are not compared)")
    return 1 if differences else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dwisynth", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dwisynth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="one DICOM series folder -> NIfTI + JSON (+ bval/bvec), checked and de-identified")
    p.add_argument("dicom_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--subject", required=True, help="study pseudonym (letters and digits), used in file names")
    p.add_argument("--modality", choices=["DWI", "CT"], default="DWI")
    p.add_argument("--b0-max", type=float, default=10.0, help="largest b-value that counts as b0 (s/mm²)")
    p.add_argument("--bval", type=Path, help="for a DWI series whose DICOM carries no b-value tag: its b-values "
                   "(s/mm²), one per volume in acquisition order, FSL's .bval format")
    p.add_argument("--bvec", type=Path, help="with --bval: the gradient directions, 3 rows (FSL's .bvec format); "
                   "default zeros (trace-weighted images)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("demo-cohort", help="write the embedded demo cohort (vendor DICOM + truth)")
    p.add_argument("--config", type=Path, default=Path("config/demo.yaml"),
                   help="the demo's settings (demo block); default: config/demo.yaml")
    p.add_argument("-o", "--output", type=Path, help="overrides demo.outdir")
    p.set_defaults(func=_demo_cohort)

    p = sub.add_parser("adc", help="ADC map (x10^-3 mm²/s) from a DWI NIfTI and its .bval")
    p.add_argument("dwi", type=Path)
    p.add_argument("--bval", type=Path, required=True)
    p.add_argument("--mask", type=Path)
    p.add_argument("--max-adc", type=float, default=4.0, help="clip ADC to [0, max] x10^-3 mm²/s")
    p.add_argument("--bvalues", type=float, nargs="+",
                   help="b-values to fit on (default: all); compare two ADC maps only when fitted on the same")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_adc)

    p = sub.add_parser("preprocess", help="register, mask, normalize and fit ADC for one subject (as the workflow does)")
    p.add_argument("dwi", type=Path, help="DWI NIfTI from dwisynth convert")
    p.add_argument("--bval", type=Path, required=True)
    p.add_argument("--subject", required=True)
    p.add_argument("--organ", required=True, choices=["brain", "breast", "abdomen", "neck", "pelvis"])
    p.add_argument("--ct", type=Path, help="CT NIfTI to register onto the DWI (stroke)")
    p.add_argument("--config", type=Path, default=STUDY_CONFIG,
                   help=f"b-value grid, masking, normalization and ADC settings; {CONFIG_HELP}")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_preprocess)

    p = sub.add_parser("synthesize", help="synthesize high-b images for one subject with a trained model (model.pt)",
                       description="Writes into the folder -o: sub-<id>_desc-<method>_dwi.nii.gz holding the "
                                   "requested b-values only (--b, in that order), its .bval, the ADC map "
                                   "sub-<id>_desc-<method>_adc.nii.gz (fitted on those and the input b-values in "
                                   "adc.bvalues), and the converted and preprocessed input.")
    p.add_argument("model", type=Path, help="results/models/<method>/<organ>/model.pt")
    p.add_argument("input", type=Path, help="a DWI DICOM series folder, or a DWI NIfTI (with --bval)")
    p.add_argument("--bval", type=Path, help=".bval of a NIfTI input")
    p.add_argument("--subject", help=SUBJECT_HELP)
    p.add_argument("--organ", choices=["brain", "breast", "abdomen", "neck", "pelvis"],
                   help="defaults to the model's organ")
    p.add_argument("--b", type=float, nargs="+",
                   help="the b-values to synthesize, the only ones the output DWI holds (default: the model's targets)")
    p.add_argument("--normalized", action="store_true",
                   help="the NIfTI is already normalized by dwisynth (desc-norm): skip registration, masking, normalization")
    p.add_argument("--mask", type=Path, help="organ mask for the ADC of a --normalized input")
    p.add_argument("--config", type=Path, default=STUDY_CONFIG,
                   help=f"preprocessing, ADC and device settings; {CONFIG_HELP}")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (created; not a .nii.gz name: several files are written)")
    p.set_defaults(func=_synthesize)

    p = sub.add_parser("ct2dwi", help="synthesize DWI (b 1000) from a head CT with a CT -> DWI model (stroke)")
    p.add_argument("model", type=Path, help="results/models/ct2dwi/<experiment>/<method>/model.pt")
    p.add_argument("input", type=Path, help="a CT DICOM series folder, or a CT NIfTI in Hounsfield units")
    p.add_argument("--grid", type=Path,
                   help="NIfTI whose grid to synthesize on (same scanner space, e.g. the patient's DWI); default: "
                        "the CT's own grid, which should have about the voxel size the model was trained on")
    p.add_argument("--subject", help=SUBJECT_HELP)
    p.add_argument("--config", type=Path, default=STUDY_CONFIG, help=f"ct2dwi and device settings; {CONFIG_HELP}")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output folder (created; not a .nii.gz name: the DWI, its .bval, the CT on the grid and its "
                        "brain mask are written)")
    p.set_defaults(func=_ct2dwi)

    p = sub.add_parser("view", help="a local web viewer: open a study, synthesize any b-value, compare with the "
                                     "acquisition, export NIfTI or DICOM")
    p.add_argument("study", nargs="?", help="open at start: a DICOM series folder, a NIfTI (with .bval beside it) "
                                             "or COHORT/SUBJECT of the results folder")
    p.add_argument("--models", type=Path, default=Path("results/models"), help="folder searched for model.pt files")
    p.add_argument("--results", type=Path, default=Path("results"), help="a workflow's results/ (its subjects)")
    p.add_argument("--config", type=Path,
                   help="preprocessing, ADC b-values and device settings; default: the config the run in --results "
                        "used (results/provenance/config.yaml), else config/config.yaml")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--root", type=Path, action="append",
                   help="a folder the page may open files from (repeatable; default: the current folder); "
                        "the results folder is always allowed")
    p.add_argument("--max-upload-mb", type=int, default=1024, help="largest upload accepted (and unpacked zip)")
    p.set_defaults(func=_view)

    p = sub.add_parser("compare-runs", help="compare every table and model of two results/ folders (make reproduce)")
    p.add_argument("reference", type=Path, help="the results/ folder to check")
    p.add_argument("rerun", type=Path, help="the results/ folder of a rerun from scratch")
    p.add_argument("--rtol", type=float, default=0.0,
                   help="relative tolerance for numbers (default 0: bit-identical, expected on the same CPU type)")
    p.set_defaults(func=_compare_runs)

    p = sub.add_parser("scan", help="draft a sample sheet from a DICOM tree, one row per series")
    p.add_argument("dicom_root", type=Path)
    p.add_argument("--cohort", default="study")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_scan)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0  # a command may return 1 for "ran, and found a difference"
    except (DwisynthError, ValueError) as exc:
        print(f"dwisynth {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
