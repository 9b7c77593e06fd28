"""The workflow on a real (one-node) Slurm cluster through the profile `make slurm-profile` installs:
every job goes through sbatch, training jobs get the GPUs `training.gpus` asks for and no other job does,
and Slurm's own refusal (an unknown partition, more GPUs than there are, a controller that does not answer)
stops the run with its words.

A small target keeps it to a few minutes on 2 cores: one abdomen subject, its preprocessing, the split and
one training job (pix2pix) on it."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from helpers import REPO, TINY_CONFIG, snakemake
from slurm_cluster import free_port

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

TARGET = "results/models/pix2pix/abdomen/model.pt"
RULES = {"demo_cohort", "convert_dwi", "split_manifest", "register_dwi", "organ_mask", "normalize_dwi",
         "slice_shard", "train"}
# This node has 2 CPUs and ~20 GB: larger requests could never start here.
NODE_THREADS, NODE_MEM_MB = 1, 2000


def _config(tmp_path, gpus):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["organs"] = ["abdomen"]
    config["demo"]["centers"] = [c for c in config["demo"]["centers"] if c["code"] == "HB"]
    config["demo"]["stroke"] = {"subjects_per_center": 0, "centers": []}
    config["ct2dwi"]["cohorts"] = []
    config["training"]["gpus"] = gpus
    config["training"]["validation_subjects"] = 0  # the one subject trains
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def config_home(tmp_path_factory):
    """An XDG_CONFIG_HOME with the profile installed by `make slurm-profile` (the real home is untouched)."""
    home = tmp_path_factory.mktemp("xdg")
    subprocess.run(["make", "-s", "slurm-profile"], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "XDG_CONFIG_HOME": str(home)})
    return home


def _node_sized(profile: dict, partition: str) -> list[str]:
    """Arguments that send the profile's jobs to `partition` and shrink them to this node. On the command line
    an option replaces the profile's entry whole, so every other value of it is carried over unchanged."""
    def fit(name, value):
        return min(value, NODE_MEM_MB) if name == "mem_mb" else value

    default = {**profile["default-resources"], "slurm_partition": partition}
    return ["--default-resources", *(f"{k}={fit(k, v)!r}" for k, v in default.items()),
            "--set-resources", *(f"{rule}:{k}={fit(k, v)!r}" for rule, res in profile["set-resources"].items()
                                 for k, v in res.items()),
            "--set-threads", *(f"{rule}={min(n, NODE_THREADS)}" for rule, n in profile["set-threads"].items())]


def _slurm_run(cluster, config_home, workdir, configfile, *args, partition=None, slurm_conf=None):
    """`snakemake --profile slurm` as a user types it from the repo root, on the test cluster."""
    profile = yaml.safe_load((config_home / "snakemake" / "slurm" / "config.yaml").read_text())
    return snakemake(
        "--profile", "slurm", *_node_sized(profile, partition or cluster.partition),
        # the first status query after 5 s, not 40: only to keep the test short
        "--slurm-init-seconds-before-status-checks", "5",
        *args, TARGET, workdir=workdir, configfile=configfile, check=False,
        env={**cluster.env, "XDG_CONFIG_HOME": str(config_home), "SLURM_CONF": str(slurm_conf or cluster.conf)})


def _submitted(output: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def _rule(job: dict) -> str:
    """The rule a Slurm job ran, from the comment the plugin gives it (rule_<name>[_wildcards_...])."""
    return re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", job["Comment"]).group(1)


@pytest.fixture(scope="module")
def gpu_run(slurm_cluster, config_home, tmp_path_factory):
    """The small target on Slurm with `training.gpus: 1`: (workdir, snakemake's output)."""
    workdir = tmp_path_factory.mktemp("slurm_run")
    proc = _slurm_run(slurm_cluster, config_home, workdir, _config(workdir, gpus=1))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return workdir, output


def test_make_slurm_profile_links_the_repos_profile_where_snakemake_looks(config_home, tmp_path):
    installed = config_home / "snakemake" / "slurm"
    assert installed.is_symlink() and installed.resolve() == REPO / "profiles" / "slurm"
    proc = snakemake("-n", "--profile", "slurm", workdir=tmp_path,
                     env={**os.environ, "XDG_CONFIG_HOME": str(config_home)})
    assert "Using profiles slurm and workflow specific profile" in proc.stderr
    assert "convert_ct" in proc.stdout


def test_profile_slurm_without_make_slurm_profile_fails_with_snakemakes_message_the_readme_quotes(tmp_path):
    proc = snakemake("-n", "--profile", "slurm", workdir=tmp_path, check=False,
                     env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "empty")})
    assert proc.returncode != 0
    message = "profile directory given (slurm), but no profile.yaml (or config.yaml) found"
    assert message in proc.stderr
    assert message in " ".join((REPO / "README.md").read_text().split())


def test_every_job_runs_as_a_slurm_job_of_the_profiles_partition(slurm_cluster, gpu_run):
    workdir, output = gpu_run
    assert (workdir / TARGET).exists()
    assert (workdir / "results/multicenter/slices/sub-HBabdomen01_slices.npz").exists()
    assert not re.search(r"^local(rule|checkpoint) ", output, re.M)  # nothing ran on the submit host
    job_ids = _submitted(output)
    jobs = [slurm_cluster.job(j) for j in job_ids]
    assert {_rule(j) for j in jobs} == RULES
    assert len(job_ids) == int(re.search(r"(\d+) of \1 steps \(100%\) done", output).group(1))
    for job in jobs:
        assert (job["JobState"], job["Partition"]) == ("COMPLETED", slurm_cluster.partition), job
    history = slurm_cluster.job_history.read_text()
    assert all(f"JobId={j} " in history for j in job_ids)


def test_training_jobs_get_a_gpu_and_no_other_job_does_when_training_gpus_is_1(slurm_cluster, gpu_run):
    _, output = gpu_run
    jobs = [slurm_cluster.job(j) for j in _submitted(output)]
    train = [j for j in jobs if _rule(j) == "train"]
    others = [j for j in jobs if _rule(j) != "train"]
    assert train and others
    for job in train:  # asked for (sbatch --gpus=1) and given (the node's one GPU)
        assert (job.get("TresPerJob"), job.get("JOB_GRES")) == ("gres:gpu:1", "gpu:1"), job
    for job in others:
        assert "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", ""), job
        assert job.get("JOB_GRES") == "(null)", job


def test_an_unknown_partition_stops_the_run_with_slurms_error(slurm_cluster, config_home, tmp_path):
    proc = _slurm_run(slurm_cluster, config_home, tmp_path, _config(tmp_path, gpus=1), partition="nosuchpart")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "SLURM sbatch failed" in output
    assert "invalid partition specified: nosuchpart" in output
    assert not _submitted(output)


def test_an_unreachable_controller_stops_the_run_with_slurms_error(slurm_cluster, config_home, tmp_path):
    # the cluster's slurm.conf with the controller on a port nobody listens on; clients give up on it after
    # MessageTimeout (10 s by default, 2 here) and the profile's retries are left out, to keep the test short
    conf = tmp_path / "slurm.conf"
    conf.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", slurm_cluster.conf.read_text())
                    + "MessageTimeout=2\n")
    proc = _slurm_run(slurm_cluster, config_home, tmp_path, _config(tmp_path, gpus=1), "--retries", "0",
                      slurm_conf=conf)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "SLURM sbatch failed" in output
    assert "Unable to contact slurm controller" in output
    assert not _submitted(output)


def test_more_gpus_than_the_cluster_has_stops_training_with_slurms_error(slurm_cluster, config_home, gpu_run,
                                                                        tmp_path):
    # the finished run with training.gpus raised to 2: only the training job is redone (its params changed)
    workdir = tmp_path / "run"
    shutil.copytree(gpu_run[0], workdir, symlinks=True)
    proc = _slurm_run(slurm_cluster, config_home, workdir, _config(workdir, gpus=2))
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error in rule train" in output
    assert "Requested node configuration is not available" in output
    assert not _submitted(output)
