"""Interrupted runs: a workflow stopped with Ctrl-C during conversion and killed outright (SIGKILL, as a node
crash) during training, then rerun, ends with the same split, tables and model as an uninterrupted run, with
no staged or partial file left behind."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dwisynth import layout
from dwisynth.reproduce import compare_runs

from helpers import REPO, TINY_CONFIG, canonical, snakemake

pytestmark = pytest.mark.workflow

TARGET = layout.model("dc2anet", "abdomen")


def _config(workdir: Path) -> Path:
    """The tiny abdomen study, trained long enough (120 steps, a checkpoint every 10) to be killed mid-way."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["organs"] = ["abdomen"]
    config["training"]["checkpoint_every"] = 10
    config["dc2anet"]["steps"] = 120
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _start(workdir: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(workdir / "config.yaml"), "--cores", "2", TARGET]
    # its own process group: a terminal's Ctrl-C and a node crash reach every job, not only Snakemake.
    # SIGINT handled as in a terminal: a test run started in the background of a non-interactive shell
    # (`make test &`, some CI runners) inherits SIGINT ignored, and Python then keeps ignoring it, so the
    # "Ctrl-C" below never reached Snakemake and the run went on to the end.
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the workflow ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < end, f"no {what} within {timeout} s"
        time.sleep(0.01)


def _mid_training(workdir: Path) -> bool:
    checkpoint = workdir / Path(TARGET).parent / "checkpoint.pt"
    return checkpoint.exists() and not (workdir / TARGET).exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    snakemake("--cores", "2", TARGET, workdir=workdir, configfile=_config(workdir))
    return workdir


def test_a_run_interrupted_in_conversion_and_killed_in_training_reruns_to_the_uninterrupted_results(
        uninterrupted, tmp_path):
    workdir, staging_root = tmp_path / "run", tmp_path / "tmp"
    workdir.mkdir()
    staging_root.mkdir()
    _config(workdir)
    env = {**os.environ, "TMPDIR": str(staging_root)}  # where conversions stage dcm2niix's raw output

    # Ctrl-C while a series is converting: jobs get SIGINT, Snakemake removes their incomplete outputs
    proc = _start(workdir, env)
    # a conversion job has started (its log) or staged dcm2niix's output: tiny series convert in a blink
    _wait_for(lambda: any(staging_root.glob("dwisynth-convert-*")) or any(workdir.glob("logs/convert_dwi/*/*.log")),
              proc, "conversion")
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=120)  # its exit status varies with where the interrupt lands; what it leaves is the point
    assert not (workdir / TARGET).exists()
    assert not list(staging_root.glob("dwisynth-convert-*")), "a stopped conversion left its staged files"

    # SIGKILL to every process once DC²Anet has checkpointed: nothing gets to clean up, the lock stays
    proc = _start(workdir, env)
    _wait_for(lambda: _mid_training(workdir), proc, "a training checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    checkpoint = workdir / Path(TARGET).parent / "checkpoint.pt"
    killed_at = torch.load(checkpoint, map_location="cpu", weights_only=False)["step"]
    assert 0 < killed_at < 120 and not (workdir / TARGET).exists()

    # the rerun a user makes: unlock, then the same command (rerun-incomplete is in the profile)
    snakemake("--unlock", workdir=workdir, configfile=workdir / "config.yaml", env=env)
    snakemake("--cores", "2", TARGET, workdir=workdir, configfile=workdir / "config.yaml", env=env)

    log = (workdir / layout.log("train", "dc2anet", "abdomen")).read_text()
    resumed = re.search(r"resumed from .*checkpoint(?:\.previous)?\.pt at step (\d+)", log)
    assert resumed and 0 < int(resumed.group(1)) <= killed_at, log[-2000:]
    differences, counts = compare_runs(uninterrupted / "results", workdir / "results")
    assert counts["models"] == 1 and counts["tables"] >= 1 and differences == [], differences
    # every converted and preprocessed volume, including those of the stopped conversion, is the same
    volumes = sorted(p.relative_to(uninterrupted) for p in (uninterrupted / "results").rglob("*.nii.gz"))
    assert volumes and volumes == sorted(p.relative_to(workdir) for p in (workdir / "results").rglob("*.nii.gz"))
    for relative in volumes:
        assert np.array_equal(canonical(uninterrupted / relative)[1], canonical(workdir / relative)[1]), relative
    leftovers = [p for p in (workdir / "results").rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert leftovers == [] and not list(staging_root.glob("dwisynth-convert-*"))
