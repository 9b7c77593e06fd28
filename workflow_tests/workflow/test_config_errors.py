"""The workflow refuses a bad sample sheet before it runs anything, naming the file."""

import subprocess
import sys

import pytest
import yaml

from helpers import REPO, write_sheet as _sheet

pytestmark = pytest.mark.workflow




def test_workflow_stops_on_sheet_with_missing_column(tmp_path):
    path = _sheet(tmp_path, drop="organ")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"samples": str(path), "bvalues": {}, "demo": {"enabled": False}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--directory", str(tmp_path),
         "--snakefile", str(REPO / "Snakefile"), "--configfile", str(config)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode != 0
    assert "missing column(s) organ" in proc.stdout + proc.stderr
    assert str(path) in proc.stdout + proc.stderr


def test_workflow_stops_on_a_sheet_path_outside_the_data_root(tmp_path):
    path = _sheet(tmp_path)  # dicom_dir /data/x, outside the run's working directory
    proc = _dry_run(tmp_path, {"samples": str(path), "bvalues": {}, "demo": {"enabled": False}})
    assert proc.returncode != 0
    assert "dicom_dir of row 2 (c1/S0001 DWI) leads outside the data root (the working directory)" in proc.stdout + proc.stderr
    assert "/data/x" not in proc.stdout + proc.stderr


def _dry_run(tmp_path, config: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--directory", str(tmp_path),
         "--snakefile", str(REPO / "Snakefile"), "--configfile", str(path)],
        capture_output=True, text=True, cwd=REPO,
    )


def test_workflow_stops_on_a_stroke_subject_without_its_ct_row(tmp_path):
    path = _sheet(tmp_path)  # one DWI row, cohort c1, no CT row
    proc = _dry_run(tmp_path, {"samples": str(path), "bvalues": {}, "demo": {"enabled": False}, "data_root": "/data",
                               "ct2dwi": {"cohorts": ["c1"]}})
    assert proc.returncode != 0
    assert "c1/S0001 in the CT -> DWI cohort(s) c1 have no CT row" in proc.stdout + proc.stderr
    assert str(path) in proc.stdout + proc.stderr


@pytest.mark.parametrize("block, message", [
    ({"jmmdagan": {"ngf": 16, "heads": 3}}, "jmmdagan.heads"),
    ({"jmmdagan": {"wavelet": "db4"}}, "jmmdagan.wavelet: 'db4' is not one of"),
])
def test_workflow_stops_on_a_bad_jmmdagan_block(tmp_path, block, message):
    proc = _dry_run(tmp_path, {"samples": str(_sheet(tmp_path)), "bvalues": {}, "demo": {"enabled": False},
                               "data_root": "/data", **block})
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
