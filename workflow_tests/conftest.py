import copy

import numpy as np
import pytest
import yaml

from dwisynth.config import validate_config
from dwisynth.dicom import PatientInfo, series_uids
from dwisynth.geometry import Grid

from helpers import TINY_CONFIG, snakemake
from slurm_cluster import SlurmCluster, cannot_run_here, install_missing_packages


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


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The whole workflow on the tiny config, once per test session."""
    workdir = tmp_path_factory.mktemp("run")
    snakemake("--cores", "2", workdir=workdir)
    return workdir


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A one-node Slurm cluster (munged, slurmctld, slurmd) in a temp folder, installed with apt when missing;
    its daemons are stopped at the end, also when a test fails."""
    reason = cannot_run_here()
    if reason:
        pytest.skip(reason)
    install_missing_packages()
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
