"""What several test modules share: paths, the Snakemake runner, readers of a finished run."""

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "workflow_tests" / "config" / "config.yaml"


def snakemake(*args, workdir, check=True, configfile=TINY_CONFIG, env=None):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def canonical(path):
    img = nib.as_closest_canonical(nib.load(path))
    return img, np.asarray(img.dataobj)


def truth_stem(run, cohort, subject):
    return run / "data/demo/truth" / cohort / f"sub-{subject}" / f"sub-{subject}"


def preproc_stem(run, cohort, subject):
    return run / "results" / cohort / "preproc" / f"sub-{subject}" / f"sub-{subject}"


def write_sheet(tmp_path, drop=None):
    """A one-row sample sheet (optionally without one column) in tmp_path."""
    import pandas as pd

    df = pd.DataFrame([{"cohort": "c1", "center": "h1", "subject": "S0001", "organ": "brain",
                        "modality": "DWI", "dicom_dir": "/data/x"}])
    if drop:
        df = df.drop(columns=[drop])
    path = tmp_path / "samples.tsv"
    df.to_csv(path, sep="\t", index=False)
    return path
