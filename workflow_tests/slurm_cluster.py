"""A one-node Slurm cluster on this machine, for the Slurm workflow test.

Everything it writes lives in one folder: its own munge key and socket, slurm.conf, gres.conf, state,
spool and logs, and free TCP ports; clients find it through SLURM_CONF, daemons through `-f`. Nothing
system-wide is configured or started, so a machine that already runs munge or Slurm is left alone.
The node declares one GPU whose device file is a link to /dev/null, so a job that asks for a GPU is
scheduled on this CPU-only machine the way it would be on a GPU node (and one asking for two is refused).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Debian package of every program the cluster runs.
PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sbatch": "slurm-client"}
PARTITION = "dwisynth-test"
READY_TIMEOUT_S = 90


class SlurmClusterError(RuntimeError):
    """The cluster could not be installed or started; the message carries the tool's own output."""


def cannot_run_here() -> str | None:
    """Why this machine cannot host the test cluster (a skip reason), or None when it can."""
    missing = [pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None]
    if os.geteuid() != 0:
        return "the Slurm test starts munged, slurmctld and slurmd, which need root; run `make test` as root"
    if missing and shutil.which("apt-get") is None:
        return (f"the Slurm test needs the Debian packages {' '.join(missing)} and this machine has no apt-get "
                "to install them")
    return None


def install_missing_packages() -> None:
    """apt-get install what is missing; an apt failure is an error with apt's own words, not a skip."""
    missing = sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SlurmClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}"
                                    f"{proc.stderr[-2000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_hardware() -> tuple[str, str, int]:
    """(short host name, the hardware part of `slurmd -C`'s NodeName line, its RealMemory in MB)."""
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    memory = int(re.search(r"RealMemory=(\d+)", line).group(1))
    hardware = " ".join(w for w in line.split() if not w.startswith(("NodeName=", "RealMemory=")))
    return host, hardware, memory


@dataclass
class SlurmCluster:
    root: Path
    partition: str = PARTITION
    _daemons: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """os.environ pointing Slurm's clients (sbatch, squeue, srun inside jobs) at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": f"{self.root / 'bin'}:{os.environ['PATH']}"}

    def log(self, name: str) -> Path:
        return self.root / "log" / f"{name}.log"

    @property
    def job_history(self) -> Path:
        """One line per finished job (jobcomp/filetxt): accounting storage is off, this is the history."""
        return self.root / "log" / "jobcomp.log"

    def write_config(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        host, hardware, memory = _node_hardware()
        # Below what slurmd measures, or slurmd drains the node for "Low RealMemory".
        real_memory = int(memory * 0.9)
        self.conf.write_text(f"""\
ClusterName=dwisynth-test
SlurmctldHost={host}
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.root}/munge/munge.socket
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.log('slurmctld')}
SlurmdLogFile={self.log('slurmd')}
# No cgroup.conf next to this file: Slurm 22.05 cannot switch cgroups off, these plugins do not use them.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.job_history}
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Finished jobs stay in squeue/scontrol for the whole test (the plugin's squeue status query needs them).
MinJobAge=3600
GresTypes=gpu
NodeName={host} {hardware} RealMemory={real_memory} Gres=gpu:1 State=UNKNOWN
PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
        # Slurm 22.05's gres/gpu drops a GPU without File= ("Removing file-less GPU", Flags=CountOnly too)
        # and wants a character device: /dev/null is one, and task/none fences no devices off.
        device = self.root / "dev" / "nvidia0"
        device.parent.mkdir(exist_ok=True)
        device.symlink_to("/dev/null")
        (self.root / "gres.conf").write_text(f"Name=gpu File={device}\n")
        # Inside a job the slurm-jobstep plugin (0.6.1) runs `srun` with every SLURM_* variable removed,
        # SLURM_CONF too; a real cluster's srun then reads /etc/slurm/slurm.conf (or asks a configless
        # controller), this one is shown its slurm.conf by an srun first on PATH.
        srun = self.root / "bin" / "srun"
        srun.parent.mkdir(exist_ok=True)
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="${{SLURM_CONF:-{self.conf}}}" exec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)

    def _start(self, name: str, cmd: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "w") as out:  # the daemon keeps its own copy
            self._daemons.append((name, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)))

    def _wait_for(self, what: str, ready, log: Path) -> None:
        """Poll `ready()` until it holds; a daemon that died or never got ready is an error with its log."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            dead = [(n, p.returncode) for n, p in self._daemons if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = log.read_text()[-3000:] if log.exists() else "(no log)"
                state = f"{dead[0][0]} exited with {dead[0][1]}" if dead else f"not ready after {READY_TIMEOUT_S} s"
                raise SlurmClusterError(f"{what}: {state}; {log}:\n{tail}")
            time.sleep(0.5)

    def _client(self, *cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env)

    def start(self) -> None:
        self.write_config()
        m = self.root / "munge"
        self._start("munged", ["munged", "--foreground", "--force", f"--socket={m}/munge.socket",
                               f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
                               f"--seed-file={m}/munged.seed", f"--log-file={self.log('munged')}"])
        self._wait_for("munged", lambda: self._client("munge", "-n", "-S", f"{m}/munge.socket").returncode == 0,
                       self.log("munged"))
        self._start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait_for("slurmctld", lambda: "is UP" in self._client("scontrol", "ping").stdout,
                       self.log("slurmctld"))
        self._start("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait_for("slurmd", lambda: self._client("sinfo", "-h", "-N", "-o", "%T").stdout.strip() == "idle",
                       self.log("slurmd"))

    def stop(self) -> None:
        """Cancel this cluster's jobs, then end the daemons it started, by pid, newest first."""
        if any(n == "slurmctld" and p.poll() is None for n, p in self._daemons):
            self._client("scancel", "--user", str(os.geteuid()))
        for name, proc in reversed(self._daemons):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._daemons.clear()

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol -d show job` as {key: value}: what Slurm was asked (Partition, TresPerJob, Comment) and
        gave (JobState, JOB_GRES). Finished jobs stay listed for MinJobAge (an hour here)."""
        proc = self._client("scontrol", "-d", "show", "job", "--oneliner", job_id)
        if proc.returncode != 0:
            raise SlurmClusterError(f"scontrol show job {job_id}: {proc.stderr.strip()}")
        return dict(w.split("=", 1) for w in proc.stdout.split() if "=" in w)
