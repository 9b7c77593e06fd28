"""The config's `device` (auto | cpu | cuda), resolved inside the job that runs the network.

On Slurm only the training rules ask for GPUs (config training.gpus); synthesis and HD-BET masking are
seconds to minutes per subject and run on CPU nodes. So `device` binds training strictly and the rest loosely:
- training (`training_device`): `cuda` fails when CUDA is unusable, rather than train for a day on the CPUs
  of a GPU node whose driver or torch build cannot use its GPU; `auto` takes CUDA when usable, else the CPU,
  and warns when the job was given GPUs it cannot use; `cpu` the CPU.
- synthesis and masking (`inference_device`): CUDA when usable unless `device: cpu`. They ask Slurm for no
  GPU, so `cuda` cannot be required of them; it means `auto` there.
"""

from __future__ import annotations

import os
import socket
import warnings

import torch

from dwisynth.errors import ConfigError

DEVICE_SETTINGS = ("auto", "cpu", "cuda")
# Set in a job that was given GPUs: by Slurm (sbatch/srun --gpus, --gres) or by whoever started the job.
GPU_ALLOCATION_VARIABLES = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES")
# Values of those that give no GPU (Slurm writes NoDevFiles on a GPU node for a job without GPUs).
NO_GPU_VALUES = ("", "0", "-1", "NoDevFiles")


class CudaUnusableWarning(UserWarning):
    """A job was given GPUs but runs on the CPU (device: auto): it is slow and holds GPUs it does not use."""


def gpus_given(environ=None) -> str | None:
    """`NAME=value` of the variable that shows this job was given GPUs, or None when it was given none."""
    environ = os.environ if environ is None else environ
    for name in GPU_ALLOCATION_VARIABLES:
        value = environ.get(name, "").strip()
        # "0" is GPU number 0 in the lists, no GPU in SLURM_GPUS_ON_NODE (a count)
        if value not in NO_GPU_VALUES or (value == "0" and name != "SLURM_GPUS_ON_NODE"):
            return f"{name}={value}"
    return None


def cuda_unusable_reason() -> str:
    """Why torch cannot use CUDA in this process, in torch's words where it has them."""
    if not torch.backends.cuda.is_built():
        return f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch into the .venv"
    try:
        torch.cuda.init()  # raises with the cause: no NVIDIA driver, one too old for this torch's CUDA, ...
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer sought
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}): {str(exc).strip().splitlines()[0]}"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device"


def training_device(setting: str = "auto", job: str = "training") -> torch.device:
    """The device a training job runs on; `device: cuda` without usable CUDA is a ConfigError."""
    return _resolve(setting, job, training=True)


def inference_device(setting: str = "auto", job: str = "synthesis") -> torch.device:
    """The device synthesis or masking runs on: CUDA when usable unless `device: cpu` (never required)."""
    return _resolve(setting, job, training=False)


def _resolve(setting: str, job: str, training: bool) -> torch.device:
    if setting not in DEVICE_SETTINGS:
        raise ConfigError(f"device must be one of {', '.join(DEVICE_SETTINGS)}, not {setting!r}")
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    given = gpus_given()
    slurm_job = os.environ.get("SLURM_JOB_ID")
    host = f"Slurm job {slurm_job} on {socket.gethostname()}" if slurm_job else socket.gethostname()
    where = f"{job} ({host}, {'given GPUs: ' + given if given else 'given no GPU'})"
    if training and setting == "cuda":
        raise ConfigError(
            f"device: cuda (config key `device`), but {where} cannot use CUDA: {cuda_unusable_reason()}. "
            "Run training on a GPU node (Slurm: training.gpus > 0, and the GPU partition or gpu_model under "
            "`train`/`train_ct2dwi` in profiles/slurm/config.yaml), or set device: auto (CPU when CUDA is "
            "unusable) or device: cpu")
    if given:
        warnings.warn(
            f"device: {setting} runs {where} on the CPU, as CUDA is unusable: {cuda_unusable_reason()}. It is "
            "many times slower and holds GPUs it cannot use: fix the node's driver or the .venv's torch"
            + (", or set device: cuda to make this an error" if training else ""), CudaUnusableWarning, stacklevel=3)
    return torch.device("cpu")
