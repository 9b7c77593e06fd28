"""`snakemake --configfile STUDY` as a user types it, from the top of a clone: the study's values and the schema's
defaults reach the run, nothing from config/config.yaml (the template) or config/demo.yaml."""

import shutil
import subprocess
import sys

import pytest
import yaml

from helpers import REPO, TINY_CONFIG

RESOLVED = "results/provenance/config.yaml"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The workflow's files in a fresh folder, run from its top as a clone is (no --directory, no --snakefile)."""
    top = tmp_path_factory.mktemp("clone")
    for name in ("Snakefile", "rules", "scripts", "config", "profiles", "requirements.lock"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, top / name)
    return top


def run_snakemake(clone, *args):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=clone, capture_output=True, text=True)


def resolved_with(clone, *args):
    (clone / RESOLVED).unlink(missing_ok=True)
    proc = run_snakemake(clone, *args, "--cores", "1", RESOLVED)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load((clone / RESOLVED).read_text())


def test_a_study_config_gets_its_own_values_and_the_schema_defaults_only(clone):
    study = yaml.safe_load(TINY_CONFIG.read_text())  # a small demo: it needs no DICOM to plan
    (clone / "study.yaml").write_text(yaml.safe_dump(study))
    resolved = resolved_with(clone, "--configfile", "study.yaml")

    # validated in a fresh interpreter, as the workflow does: tests register extra networks in this one, and
    # each registered network adds its block of defaults
    validated = subprocess.run(
        [sys.executable, "-c", "import sys, yaml; from dwisynth.config import validate_config; "
         "yaml.safe_dump(validate_config(yaml.safe_load(open(sys.argv[1])), sys.argv[1]), sys.stdout)",
         str(clone / "study.yaml")], capture_output=True, text=True, check=True)
    expected = yaml.safe_load(validated.stdout)
    assert resolved == expected
    # values the other two files set and the study does not: each differs from the default, and none arrives
    demo = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    template = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert demo["registration"]["dwi_motion"] is False and resolved["registration"]["dwi_motion"] is True
    assert demo["masking"]["brain_threads"] == 1 and resolved["masking"]["brain_threads"] == 2
    assert template["data_root"] == "/data/dicom" and resolved["data_root"] is None
    assert template["training"]["validate_every"] == 1000 and resolved["training"]["validate_every"] == 50


def test_the_demo_file_given_alone_is_the_demo(clone):
    resolved = resolved_with(clone, "--configfile", "config/demo.yaml")
    assert resolved["demo"]["enabled"] is True and resolved["registration"]["dwi_motion"] is False
    assert resolved["data_root"] is None  # the template's value does not reach the demo either


def test_without_a_configfile_the_template_is_read_and_asks_for_a_sheet(clone):
    proc = run_snakemake(clone, "-n", "--cores", "1")
    assert proc.returncode != 0
    assert "config/samples.tsv: sample sheet not found" in proc.stdout + proc.stderr
