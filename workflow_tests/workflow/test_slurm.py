"""The Slurm profile, and the workflow on a real (one-node) Slurm cluster through the profile `make slurm-profile`
installs: every job goes through sbatch with the time and memory Snakemake evaluated for it, training jobs get
the GPUs `training.gpus` asks for and no other job does (synthesis included), a training job given a GPU it
cannot use says so in its log (`device: auto`) or stops (`device: cuda`), and Slurm's own refusal (an unknown
partition, more GPUs than there are, a controller that does not answer) stops the run with its words.

The profile is used as a user gets it: it forces no partition, account or status command. What this test
cluster needs (its partition, squeue for job states since it keeps no accounting, jobs small enough for its
one node) is given on the tests' own command line.

A small target keeps it to a few minutes on 2 cores: one abdomen subject, its preprocessing, the split, one
training job (pix2pix) and that model's synthesis of the subject."""

import os
import re
import shutil
import subprocess

import pytest
import torch
import yaml

from dwisynth import layout
from helpers import REPO, TINY_CONFIG, snakemake
from slurm_cluster import free_port

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
TARGET = layout.model("pix2pix", "abdomen")
SYNTHESIS = layout.synth("pix2pix", "multicenter", "HBabdomen01")["dwi"]
RULES = {"demo_cohort", "convert_dwi", "split_manifest", "register_dwi", "organ_mask", "normalize_dwi",
         "slice_shard", "train", "synthesize"}
TRAINING_RULES = {"train", "train_ct2dwi"}
# This node has 2 CPUs and ~20 GB: larger requests could never start here.
NODE_THREADS, NODE_MEM_MB = 1, 2000
CUDA_USABLE_HERE = "CUDA is usable on this machine: a job given the test cluster's GPU (/dev/null) would use it"


def _config(tmp_path, gpus, device="auto"):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["organs"] = ["abdomen"]
    config["demo"]["centers"] = [c for c in config["demo"]["centers"] if c["code"] == "HB"]
    config["demo"]["stroke"] = {"subjects_per_center": 0, "centers": []}
    config["ct2dwi"]["cohorts"] = []
    config["training"]["gpus"] = gpus
    config["training"]["validation_subjects"] = 0  # the one subject trains
    config["device"] = device
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _resources_by_rule(output: str) -> dict[str, list[dict[str, str]]]:
    """The resources Snakemake printed for each job it ran or planned, by rule (local rules left out)."""
    jobs = {}
    for rule, resources in re.findall(r"^(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    resources: (.*)$", output, re.M):
        jobs.setdefault(rule, []).append(dict(item.split("=", 1) for item in resources.split(", ")))
    return jobs


def _time_and_memory(jobs: list[dict[str, str]]) -> set[tuple[int, int]]:
    return {(int(job["runtime"]), int(job["mem_mb"])) for job in jobs}


# --- the profile itself (no cluster) ------------------------------------------------------------------------

def test_the_profile_forces_no_partition_account_or_status_command_and_shows_them_as_options():
    text = PROFILE.read_text()
    profile = yaml.safe_load(text)
    assert "slurm-status-command" not in profile
    for resources in (profile["default-resources"], *profile["set-resources"].values()):
        assert not {"slurm_partition", "slurm_account"} & set(resources), resources
    for option in ("# slurm-status-command: squeue", "# slurm_partition: ", "# slurm_account: ", "# gpu_model: "):
        assert option in text


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """{attempt: resources by rule} of `snakemake -n --profile profiles/slurm` with training.gpus: 1, for the
    first submission and the first retry. `--attempt` is the option Snakemake gives its own job processes
    (a job's attempt number): with it a dry run evaluates the profile as a retry would."""
    workdir = tmp_path_factory.mktemp("planned")
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["training"]["gpus"] = 1
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return {attempt: _resources_by_rule(snakemake("-n", "--profile", str(PROFILE.parent), "--attempt", str(attempt),
                                                  "all", TARGET, workdir=workdir, configfile=configfile).stdout)
            for attempt in (1, 2)}


def test_a_retry_asks_for_twice_the_memory_and_time_and_training_keeps_its_time_limit(planned):
    first, retry = planned[1], planned[2]
    assert {"split_manifest", "register_dwi", "organ_mask", "register_ct", "train", "train_ct2dwi"} <= set(first)
    assert set(retry) == set(first)
    for rule, jobs in first.items():
        # a training job resumes from its checkpoint: the same time goes on from there
        time_factor = 1 if rule in TRAINING_RULES else 2
        assert _time_and_memory(retry[rule]) == {(time_factor * runtime, 2 * mem)
                                                 for runtime, mem in _time_and_memory(jobs)}, rule


def test_masking_and_registration_get_more_than_the_defaults_and_only_training_asks_for_gpus(planned):
    first = planned[1]
    [(default_time, default_memory)] = _time_and_memory(first["split_manifest"])  # the profile's defaults
    for rule in ("register_dwi", "organ_mask", "register_ct"):
        [(_, memory)] = _time_and_memory(first[rule])
        assert memory > default_memory, rule
    for rule, jobs in first.items():
        assert {job.get("gpu") for job in jobs} == ({"1"} if rule in TRAINING_RULES else {None}), rule


# --- the workflow on the test cluster ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def config_home(tmp_path_factory):
    """An XDG_CONFIG_HOME with the profile installed by `make slurm-profile` (the real home is untouched)."""
    home = tmp_path_factory.mktemp("xdg")
    subprocess.run(["make", "-s", "slurm-profile"], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "XDG_CONFIG_HOME": str(home)})
    return home


def _node_sized(profile: dict, partition: str) -> list[str]:
    """Arguments that send the profile's jobs to `partition` and fit them to this node: the profile's resources
    as it writes them (expressions over `attempt` included), memory capped at what the node has. On the command
    line an option replaces the profile's entry whole, so every other value of it is carried over unchanged."""
    def fit(name, value):
        return f"min({value}, {NODE_MEM_MB})" if name == "mem_mb" else value

    default = {**profile["default-resources"], "slurm_partition": repr(partition)}
    return ["--default-resources", *(f"{k}={fit(k, v)}" for k, v in default.items()),
            "--set-resources", *(f"{rule}:{k}={fit(k, v)}" for rule, res in profile["set-resources"].items()
                                 for k, v in res.items()),
            "--set-threads", *(f"{rule}={min(n, NODE_THREADS)}" for rule, n in profile["set-threads"].items())]


def _slurm_run(cluster, config_home, workdir, configfile, *args, partition=None, slurm_conf=None):
    """`snakemake --profile slurm` as a user types it from the repo root, plus what the test cluster needs."""
    profile = yaml.safe_load((config_home / "snakemake" / "slurm" / "config.yaml").read_text())
    return snakemake(
        "--profile", "slurm", *_node_sized(profile, partition or cluster.partition),
        # no accounting here: sacct answers "accounting storage is disabled"; squeue keeps finished jobs an hour
        "--slurm-status-command", "squeue",
        # the first status query after 5 s, not 40: only to keep the test short
        "--slurm-init-seconds-before-status-checks", "5",
        *args, TARGET, SYNTHESIS, workdir=workdir, configfile=configfile, check=False,
        env={**cluster.env, "XDG_CONFIG_HOME": str(config_home), "SLURM_CONF": str(slurm_conf or cluster.conf)})


def _submitted(output: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def _rule(job: dict) -> str:
    """The rule a Slurm job ran, from the comment the plugin gives it (rule_<name>[_wildcards_...])."""
    return re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", job["Comment"]).group(1)


def _slurm_time(minutes: int) -> str:
    """Minutes as scontrol writes a time limit: [days-]hh:mm:ss."""
    days, minutes = divmod(minutes, 1440)
    clock = f"{minutes // 60:02d}:{minutes % 60:02d}:00"
    return f"{days}-{clock}" if days else clock


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


def test_every_job_runs_as_a_slurm_job_of_the_partition_the_command_line_names(slurm_cluster, gpu_run):
    workdir, output = gpu_run
    assert (workdir / TARGET).exists() and (workdir / SYNTHESIS).exists()
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


def test_every_job_is_submitted_with_the_time_and_memory_the_profile_gives_its_first_attempt(slurm_cluster,
                                                                                            gpu_run):
    # What Snakemake makes of the profile as typed ("30 * attempt", ...) for the jobs of the finished run (dry
    # runs), against what Slurm was asked for; the test's command line caps memory at the node's. --forceall
    # plans the split (a checkpoint) anew and so none of the jobs after it: those come from redoing one subject.
    workdir, output = gpu_run
    planned = {}
    for redo in (["--forceall"], ["--forcerun", "register_dwi"]):
        planned |= _resources_by_rule(snakemake("-n", *redo, "--profile", str(PROFILE.parent), TARGET, SYNTHESIS,
                                                workdir=workdir, configfile=workdir / "config.yaml",
                                                env=slurm_cluster.env).stdout)
    for job in map(slurm_cluster.job, _submitted(output)):
        [(runtime, memory)] = _time_and_memory(planned[_rule(job)])
        assert (job["TimeLimit"], job["MinMemoryNode"]) == (_slurm_time(runtime), f"{min(memory, NODE_MEM_MB)}M"), job


def test_training_jobs_get_a_gpu_and_no_other_job_does_when_training_gpus_is_1(slurm_cluster, gpu_run):
    _, output = gpu_run
    jobs = [slurm_cluster.job(j) for j in _submitted(output)]
    train = [j for j in jobs if _rule(j) == "train"]
    others = [j for j in jobs if _rule(j) != "train"]
    assert train and "synthesize" in {_rule(j) for j in others}
    for job in train:  # asked for (sbatch --gpus=1) and given (the node's one GPU)
        assert (job.get("TresPerJob"), job.get("JOB_GRES")) == ("gres:gpu:1", "gpu:1"), job
    for job in others:
        assert "gpu" not in job.get("TresPerJob", "") + job.get("TresPerNode", ""), job
        assert job.get("JOB_GRES") == "(null)", job


def test_a_training_job_given_a_gpu_it_cannot_use_says_so_in_its_log_with_device_auto(gpu_run):
    if torch.cuda.is_available():
        pytest.skip(CUDA_USABLE_HERE)
    workdir, _ = gpu_run
    log = (workdir / layout.log("train", "pix2pix", "abdomen")).read_text()
    assert re.search(r"CudaUnusableWarning: device: auto runs training of results/models/pix2pix/abdomen "
                     r"\(Slurm job \d+ on .+, given GPUs: \w+=\S+\) on the CPU, as CUDA is unusable: ", log), log
    synthesis_log = (workdir / layout.log("synthesize", "pix2pix", "multicenter", "HBabdomen01")).read_text()
    assert "CudaUnusableWarning" not in synthesis_log  # given no GPU: the CPU is what it asked for


def test_device_cuda_stops_a_training_job_that_cannot_use_its_gpu_and_says_how_to_fix_it(
        slurm_cluster, config_home, gpu_run, tmp_path):
    if torch.cuda.is_available():
        pytest.skip(CUDA_USABLE_HERE)
    # the finished run with device: cuda, training forced to rerun (the device param of masking and synthesis,
    # changed too, is kept out of the rerun triggers); no retries, to keep the test short
    workdir = tmp_path / "run"
    shutil.copytree(gpu_run[0], workdir, symlinks=True)
    proc = _slurm_run(slurm_cluster, config_home, workdir, _config(workdir, gpus=1, device="cuda"),
                      "--forcerun", "train", "--rerun-triggers", "mtime", "--retries", "0")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error in rule train" in output
    assert re.search(r"device: cuda \(config key `device`\), but training of results/models/pix2pix/abdomen "
                     r"\(Slurm job \d+ on .+, given GPUs: \w+=\S+\) cannot use CUDA: ", output), output[-6000:]
    assert "Run training on a GPU node" in output and "or set device: auto" in output
    assert [_rule(slurm_cluster.job(j)) for j in _submitted(output)] == ["train"]


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
