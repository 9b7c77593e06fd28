"""make reproduce's comparison: every table and model of two results folders."""

import shutil

import pandas as pd
import pytest
import torch

from dwisynth.cli import main as cli
from dwisynth.reproduce import compare_runs, model_checksum


def write_run(root, psnr=17.25, seconds=44.3, weight=0.5):
    (root / "tables/ct2dwi").mkdir(parents=True)
    (root / "datasets").mkdir()
    pd.DataFrame({"method": ["jmmdagan", "pix2pix"], "psnr": [psnr, 16.4], "note": ["a", "b"]}).to_csv(
        root / "tables/ct2dwi/main.tsv", sep="\t", index=False)
    pd.DataFrame({"method": ["jmmdagan"], "train_seconds": [seconds]}).to_csv(
        root / "tables/ct2dwi_compute.tsv", sep="\t", index=False)
    pd.DataFrame({"subject": ["S01"], "split": ["train"]}).to_csv(root / "datasets/split.tsv", sep="\t", index=False)
    (root / "models/pix2pix/brain").mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.full((2, 2), weight)}, "fingerprint": "abc", "selected_step": 300},
               root / "models/pix2pix/brain/model.pt")
    return root


def test_identical_runs_agree_and_wall_time_is_not_compared(tmp_path):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", seconds=51.0)
    differences, counts = compare_runs(a, b)
    assert differences == [] and counts == {"tables": 3, "models": 1}


def test_a_changed_number_weight_or_missing_table_is_named(tmp_path, capsys):
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b", psnr=17.2500001, weight=0.5000001)
    (b / "datasets/split.tsv").unlink()
    found = {(d.path, d.what.split(":")[0]) for d in compare_runs(a, b)[0]}
    assert found == {("tables/ct2dwi/main.tsv", "psnr"), ("models/pix2pix/brain/model.pt", "weights or record differ"),
                     ("datasets/split.tsv", "missing in the rerun")}
    # a tolerance accepts the small numeric difference, never a different model
    found = {d.path for d in compare_runs(a, b, rtol=1e-4)[0]}
    assert found == {"models/pix2pix/brain/model.pt", "datasets/split.tsv"}
    assert cli(["compare-runs", str(a), str(b)]) == 1
    assert "DIFFERS tables/ct2dwi/main.tsv: psnr: 1 values differ" in capsys.readouterr().out


def test_the_model_checksum_follows_weights_and_record_not_file_bytes(tmp_path):
    a = write_run(tmp_path / "a")
    path = a / "models/pix2pix/brain/model.pt"
    before = model_checksum(path)
    record = torch.load(path, weights_only=True)
    torch.save(dict(reversed(list(record.items()))), path)  # same content, other bytes
    assert model_checksum(path) == before
    torch.save({**record, "selected_step": 250}, path)
    assert model_checksum(path) != before


def test_compare_runs_refuses_a_folder_without_tables(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    shutil.rmtree(a / "tables")
    assert cli(["compare-runs", str(a), str(a)]) == 2
    assert "no tables/ here" in capsys.readouterr().err


def test_source_digest_follows_what_the_named_modules_import_at_any_depth(tmp_path, monkeypatch):
    """A rule's output depends on the package code its script reaches through imports (a function-level
    import, a relative one, a parent package's __init__), and on nothing else in the package."""
    from dwisynth.provenance import module_closure, source_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    package = tmp_path / "digestpkg"
    (package / "sub").mkdir(parents=True)
    files = {"__init__.py": "", "entry.py": "def run():\n    from digestpkg.sub import helper\n",
             "sub/__init__.py": "", "sub/helper.py": "from .deep import VALUE\n", "sub/deep.py": "VALUE = 1\n",
             "unrelated.py": "VALUE = 1\n"}
    for name, text in files.items():
        (package / name).write_text(text)
    assert set(module_closure("digestpkg.entry")) == {"digestpkg", "digestpkg.entry", "digestpkg.sub",
                                                      "digestpkg.sub.helper", "digestpkg.sub.deep"}
    before = source_digest("digestpkg.entry")
    (package / "unrelated.py").write_text("VALUE = 2\n")
    assert source_digest("digestpkg.entry") == before
    (package / "sub/deep.py").write_text("VALUE = 2\n")
    assert source_digest("digestpkg.entry") != before


@pytest.mark.parametrize("edited, retrains", [
    ("dwisynth.synthesis", True), ("dwisynth.ct2dwi", True), ("dwisynth.networks.losses", True),
    ("dwisynth.metrics", True),  # validation PSNR picks the exported step
    ("dwisynth.networks.pix2pix", False), ("dwisynth.report", False),
    ("dwisynth.evaluate", False), ("dwisynth.preprocess.registration", False)])  # imported by the drivers to score
def test_a_networks_code_digest_follows_its_training_drivers_and_not_other_networks(tmp_path, monkeypatch,
                                                                                    edited, retrains):
    """The train rule's `network_code` and the checkpoint fingerprint: an edit to the code that builds a
    network's data and metadata retrains it; an edit to another network's module, or to the scoring code the
    drivers also import, does not (it would throw the checkpoints away)."""
    from dwisynth import provenance
    from dwisynth.networks.base import code_digest

    before = code_digest("dc2anet")
    find = provenance.module_file
    copy = tmp_path / "edited.py"
    copy.write_text(find(edited).read_text() + "\n# an edit\n")
    monkeypatch.setattr(provenance, "module_file", lambda name: copy if name == edited else find(name))
    assert (code_digest("dc2anet") != before) is retrains


def test_the_environment_digest_follows_the_pinned_libraries_but_not_snakemake(tmp_path):
    """Every rule's `code` param holds it: an ANTs upgrade reruns the workflow, a Snakemake upgrade does not."""
    from dwisynth.provenance import environment_digest

    lock = tmp_path / "requirements.lock"
    lock.write_text("antspyx==0.6.3\nsnakemake==9.27.1\nsnakemake-executor-plugin-slurm==2.6.1\n")
    before = environment_digest(lock)
    lock.write_text("antspyx==0.6.3\nsnakemake==9.30.0\nsnakemake-executor-plugin-slurm==2.7.0\n")
    assert environment_digest(lock) == before
    lock.write_text("antspyx==0.6.4\nsnakemake==9.30.0\nsnakemake-executor-plugin-slurm==2.7.0\n")
    assert environment_digest(lock) != before


def test_source_digest_follows_the_code_of_the_named_modules(tmp_path, monkeypatch):
    """A rule's `code` param: an edit to a module it names changes it, an edit elsewhere does not."""
    import sys

    from dwisynth.provenance import source_digest

    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("stepcode", "othercode"):
        (tmp_path / f"{name}.py").write_text("SCALE = 1\n")
    before = source_digest("stepcode")
    (tmp_path / "othercode.py").write_text("SCALE = 2\n")
    assert source_digest("stepcode") == before
    (tmp_path / "stepcode.py").write_text("SCALE = 2\n")
    assert source_digest("stepcode") != before
    assert "stepcode" not in sys.modules  # found, not imported: digests cost no import
