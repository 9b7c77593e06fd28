"""The config's `device` resolved in a job: a GPU job never trains on the CPU without a word.

No GPU here: torch's answers (is CUDA usable, why not) and the job's environment are set per test."""

import warnings

import pytest
import torch

from dwisynth import device
from dwisynth.device import CudaUnusableWarning, gpus_given, inference_device, training_device
from dwisynth.errors import ConfigError
from dwisynth.preprocess.steps import torch_device

NO_DRIVER = "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU"


@pytest.fixture(autouse=True)
def job_environment(monkeypatch):
    """A job given no GPUs, outside Slurm, on a torch with CUDA support but no driver under it."""
    for name in (*device.GPU_ALLOCATION_VARIABLES, "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)

    def init():
        raise RuntimeError(NO_DRIVER + "\nand installed a driver from http://www.nvidia.com/Download/index.aspx")

    monkeypatch.setattr(torch.cuda, "init", init)
    return monkeypatch


def cuda_usable(monkeypatch, usable):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: usable)


def slurm_gpu_job(monkeypatch):
    """The variables Slurm sets in a job step given one GPU (sbatch/srun --gpus=1)."""
    for name, value in {"SLURM_JOB_ID": "4242", "SLURM_STEP_GPUS": "0", "SLURM_JOB_GPUS": "0",
                        "SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0"}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("resolve", [training_device, inference_device])
def test_cuda_is_taken_when_usable_unless_device_is_cpu(job_environment, resolve):
    cuda_usable(job_environment, True)
    assert resolve("auto") == resolve("cuda") == torch.device("cuda")
    assert resolve("cpu") == torch.device("cpu")


def test_auto_without_cuda_in_a_job_given_no_gpu_uses_the_cpu_silently(job_environment):
    cuda_usable(job_environment, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert training_device("auto") == inference_device("auto") == torch.device("cpu")


def test_cuda_for_training_without_usable_cuda_fails_naming_the_job_the_cause_and_the_fix(job_environment):
    cuda_usable(job_environment, False)
    slurm_gpu_job(job_environment)
    with pytest.raises(ConfigError) as error:
        training_device("cuda", job="training of results/models/pix2pix/brain")
    message = str(error.value)
    assert message.startswith("device: cuda (config key `device`), but training of results/models/pix2pix/brain "
                              "(Slurm job 4242 on ")
    assert "given GPUs: SLURM_STEP_GPUS=0" in message
    assert NO_DRIVER in message and "nvidia.com" not in message  # torch's reason, its first line
    assert "Run training on a GPU node" in message and "set device: auto" in message and "device: cpu" in message


def test_cuda_names_a_cpu_only_torch_build_as_the_cause(job_environment):
    cuda_usable(job_environment, False)
    job_environment.setattr(torch.backends.cuda, "is_built", lambda: False)
    with pytest.raises(ConfigError, match=r"given no GPU\).*is a CPU-only build; install a CUDA build of torch"):
        training_device("cuda")


@pytest.mark.parametrize("variable, value", [("CUDA_VISIBLE_DEVICES", "0"), ("SLURM_JOB_GPUS", "2,3"),
                                             ("SLURM_GPUS_ON_NODE", "1"), ("SLURM_STEP_GPUS", "1")])
def test_auto_in_a_job_given_gpus_without_usable_cuda_warns_and_uses_the_cpu(job_environment, variable, value):
    cuda_usable(job_environment, False)
    job_environment.setenv(variable, value)
    with pytest.warns(CudaUnusableWarning) as warned:
        assert training_device("auto", job="training of results/models/unet/abdomen") == torch.device("cpu")
    message = str(warned[0].message)
    assert message.startswith("device: auto runs training of results/models/unet/abdomen (")
    assert f"given GPUs: {variable}={value}) on the CPU, as CUDA is unusable: " in message
    assert NO_DRIVER in message and "set device: cuda to make this an error" in message


def test_synthesis_and_masking_never_require_cuda_they_ask_slurm_for_no_gpu(job_environment):
    cuda_usable(job_environment, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inference_device("cuda") == torch.device("cpu")
        assert torch_device("cuda") == torch_device("auto") == torch_device("cpu") == "cpu"  # HD-BET's spelling
    cuda_usable(job_environment, True)
    assert torch_device("cuda") == torch_device("auto") == 0
    assert torch_device("cpu") == "cpu"


def test_synthesis_given_gpus_it_cannot_use_warns_too(job_environment):
    cuda_usable(job_environment, False)
    slurm_gpu_job(job_environment)
    with pytest.warns(CudaUnusableWarning, match=r"^device: cuda runs synthesis \(Slurm job 4242 on .*, given GPUs: "
                                                 r"SLURM_STEP_GPUS=0\) on the CPU, .*the \.venv's torch$"):
        assert inference_device("cuda") == torch.device("cpu")


@pytest.mark.parametrize("environ", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"},
                                     {"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, {"SLURM_GPUS_ON_NODE": "0"},
                                     {"SLURM_JOB_ID": "7", "SLURM_CPUS_ON_NODE": "4"}])
def test_no_gpu_given(environ):
    assert gpus_given(environ) is None


def test_gpu_number_zero_is_a_gpu_given():
    assert gpus_given({"CUDA_VISIBLE_DEVICES": "0"}) == "CUDA_VISIBLE_DEVICES=0"
    assert gpus_given({"SLURM_GPUS_ON_NODE": "2", "CUDA_VISIBLE_DEVICES": "0,1"}) == "SLURM_GPUS_ON_NODE=2"


def test_an_unknown_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda, not 'gpu'"):
        training_device("gpu")
