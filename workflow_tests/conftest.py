import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dwisynth.config import validate_config
from dwisynth.dicom import PatientInfo, series_uids
from dwisynth.geometry import Grid

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "workflow_tests" / "config" / "config.yaml"


@pytest.fixture
def tiny_config(tmp_path):
    config = validate_config(yaml.safe_load(TINY_CONFIG.read_text()))
    config = copy.deepcopy(config)
    config["demo"]["outdir"] = str(tmp_path / "demo")
    return config


@pytest.fixture
def patient():
    return PatientInfo("Testpatient^Herbert", "MRN7654321", "19571103", "Saint Ludger Clinic 42",
                       "77 Kestrel Road, Fairhaven 4455")


@pytest.fixture
def small_grid():
    return Grid.centred((10, 12, 4), (2.0, 2.5, 5.0))


@pytest.fixture
def small_dwi(small_grid):
    """(n_b, x, y, z) integer volumes whose every voxel differs, and their b-values."""
    bvals = [0, 100, 500, 1000]
    rng = np.random.default_rng(3)
    volumes = rng.integers(1, 4000, size=(len(bvals), *small_grid.shape)).astype(np.uint16)
    return volumes, bvals


@pytest.fixture
def uids():
    return series_uids("pytest-series", 5)


def snakemake(*args, workdir, check=True, configfile=TINY_CONFIG):
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The whole workflow on the tiny config, once per test session."""
    workdir = tmp_path_factory.mktemp("run")
    snakemake("--cores", "2", workdir=workdir)
    return workdir
