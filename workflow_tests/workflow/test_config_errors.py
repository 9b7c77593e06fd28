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
