"""The dwisynth command line: single-subject entry points to the same functions the workflow uses."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dwisynth.errors import DwisynthError


def _convert(args) -> None:
    from dwisynth.convert import convert_series

    convert_series(args.dicom_dir, args.output, args.subject, args.modality, b0_max=args.b0_max)


def _demo_cohort(args) -> None:
    from dwisynth.config import load_config
    from dwisynth.demo.cohort import generate_demo_cohort

    config = load_config(args.config)
    if args.output:
        config["demo"]["outdir"] = str(args.output)
    sheet = generate_demo_cohort(config)
    print(f"[demo-cohort] {len(sheet)} series written; sample sheet {Path(config['demo']['outdir']) / 'samples.tsv'}")


def _adc(args) -> None:
    import numpy as np

    from dwisynth.diffusion import fit_mono_exponential
    from dwisynth.io import load_dwi, load_mask, save_like

    dwi, bvals = load_dwi(args.dwi, args.bval)
    mask = load_mask(args.mask) if args.mask else None
    _, adc = fit_mono_exponential(dwi, bvals, mask=mask)
    save_like(np.clip(adc, 0, args.max_adc), args.dwi, args.output)
    print(f"[adc] {args.output} (x10^-3 mm²/s)")


def _scan(args) -> None:
    from dwisynth.scan import scan_dicom_tree

    sheet = scan_dicom_tree(args.dicom_root, cohort=args.cohort)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.to_csv(args.output, sep="\t", index=False)
    print(f"[scan] {len(sheet)} series -> {args.output}; check the columns marked for review")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dwisynth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="one DICOM series folder -> NIfTI + JSON (+ bval/bvec), checked and de-identified")
    p.add_argument("dicom_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--subject", required=True, help="study pseudonym (letters and digits), used in file names")
    p.add_argument("--modality", choices=["DWI", "CT"], default="DWI")
    p.add_argument("--b0-max", type=float, default=10.0, help="largest b-value that counts as b0 (s/mm²)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("demo-cohort", help="write the embedded demo cohort (vendor DICOM + truth)")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("-o", "--output", type=Path, help="overrides demo.outdir")
    p.set_defaults(func=_demo_cohort)

    p = sub.add_parser("adc", help="ADC map (x10^-3 mm²/s) from a DWI NIfTI and its .bval")
    p.add_argument("dwi", type=Path)
    p.add_argument("--bval", type=Path, required=True)
    p.add_argument("--mask", type=Path)
    p.add_argument("--max-adc", type=float, default=4.0, help="clip ADC to [0, max] x10^-3 mm²/s")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_adc)

    p = sub.add_parser("scan", help="draft a sample sheet from a DICOM tree, one row per series")
    p.add_argument("dicom_root", type=Path)
    p.add_argument("--cohort", default="study")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(func=_scan)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DwisynthError as exc:
        print(f"dwisynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
