"""The dwisynth command line, one subject at a time."""

import resource
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from dwisynth.config import read_sample_sheet
from dwisynth.demo.cohort import generate_demo_cohort
from dwisynth.dicom import series_uids, write_dwi_series
from dwisynth.diffusion import ivim_signal


def dwisynth(*args, file_size_limit=None):
    """The CLI in a subprocess; file_size_limit (bytes): a write past it fails (EFBIG), as on a full disk."""
    limit = None if file_size_limit is None else (
        lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit)))
    return subprocess.run([sys.executable, "-m", "dwisynth.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit)  # Python ignores SIGXFSZ: the write raises instead of killing it


def test_adc_command_recovers_phantom_adc(tmp_path):
    truth = np.linspace(0.5, 2.5, 6 * 5 * 4).reshape(6, 5, 4)
    bvals = [0, 500, 1000]
    nib.save(nib.Nifti1Image(ivim_signal(1000.0, truth, bvals).astype(np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 500 1000\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz")
    assert proc.returncode == 0, proc.stderr
    assert np.allclose(nib.load(tmp_path / "adc.nii.gz").get_fdata(), truth, atol=1e-4)


def test_adc_command_with_one_b_value_fails_clearly(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2, 2), np.float32), np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 0\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz")
    assert proc.returncode == 2 and "two distinct b-values" in proc.stderr
    assert not (tmp_path / "adc.nii.gz").exists()


def test_adc_command_failing_mid_write_leaves_no_file(tmp_path):
    truth = np.random.default_rng(5).uniform(0.5, 2.5, (32, 32, 16))  # an ADC map that compresses little
    dwi = ivim_signal(1000.0, truth, [0, 1000]).astype(np.float32)
    nib.save(nib.Nifti1Image(dwi, np.eye(4)), tmp_path / "dwi.nii.gz")
    (tmp_path / "dwi.bval").write_text("0 1000\n")
    proc = dwisynth("adc", tmp_path / "dwi.nii.gz", "--bval", tmp_path / "dwi.bval", "-o", tmp_path / "adc.nii.gz",
                    file_size_limit=4096)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dwi.bval", "dwi.nii.gz"]


def test_scan_failing_mid_write_leaves_no_sheet(tmp_path, small_grid, small_dwi, patient):
    volumes, bvals = small_dwi
    for series in range(4):
        write_dwi_series(tmp_path / "dicom" / f"series{series}", volumes, bvals, small_grid, "siemens", patient,
                         series_uids("scan", series))
    proc = dwisynth("scan", tmp_path / "dicom", "-o", tmp_path / "sheet" / "samples.tsv", file_size_limit=200)
    assert proc.returncode != 0 and "File too large" in proc.stderr, proc.stderr
    assert list((tmp_path / "sheet").iterdir()) == []


def test_scan_drafts_one_row_per_series_with_pseudonyms(tiny_config, tmp_path):
    tiny_config["organs"] = ["abdomen"]
    centers = tiny_config["demo"]["centers"]
    tiny_config["demo"]["centers"] = [c for c in centers if "abdomen" in c["organs"]]
    for center in tiny_config["demo"]["centers"]:
        center["organs"] = ["abdomen"]
    tiny_config["demo"]["stroke"]["subjects_per_center"] = 0
    sheet = generate_demo_cohort(tiny_config, progress=lambda *_: None)
    proc = dwisynth("scan", tiny_config["demo"]["outdir"], "--cohort", "study", "-o", tmp_path / "samples.tsv")
    assert proc.returncode == 0, proc.stderr
    drafted = read_sample_sheet(tmp_path / "samples.tsv")  # the workflow's reader: it validates the draft
    assert len(drafted) == len(sheet)
    assert set(drafted["modality"]) == {"DWI"}
    assert sorted(drafted["vendor"]) == sorted(sheet["vendor"])
    assert set(drafted["dicom_dir"]) == set(sheet["dicom_dir"])
    assert set(drafted["organ"]) == {"abdomen"} and set(drafted["review"]) == {""}
    assert drafted["subject"].str.fullmatch(r"S\d{4}").all()
    text = (tmp_path / "samples.tsv").read_text()
    assert "MRN" not in text and "Infirmary" not in text


def test_every_command_has_help():
    for command in ("convert", "adc", "preprocess", "scan", "demo-cohort"):
        proc = dwisynth(command, "--help")
        assert proc.returncode == 0 and "usage" in proc.stdout


def test_version_is_the_installed_packages():
    from importlib.metadata import version

    proc = dwisynth("--version")  # test_release.py checks that the package, pyproject and metadata agree
    assert proc.returncode == 0 and proc.stdout == f"dwisynth {version('dwisynth')}\n"


def test_config_defaults_name_the_study_config_and_the_demo_its_own():
    from dwisynth.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["demo-cohort"]).config.as_posix() == "config/demo.yaml"
    for command in ("preprocess", "synthesize", "ct2dwi"):
        sub = parser._subparsers._group_actions[0].choices[command]
        config = next(a for a in sub._actions if a.dest == "config")
        assert config.default.as_posix() == "config/config.yaml"
        assert "config/config.yaml, the study config; for the demo's models use config/demo.yaml" in config.help


# --- synthesize: a folder of named files holding the requested b-values -------------------------------------

INPUT_B, TARGET_B = [0.0, 100.0], [400.0, 800.0, 1000.0]


def _phantom_subject(folder, subject, seed):
    """A normalized DWI (S/S0) of a mono-exponential body at every b, its mask and slice shard."""
    from dwisynth.dataset import write_slice_shard
    from dwisynth.io import save_nifti, write_bval

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    body = np.repeat((((yy - 16) / 13) ** 2 + ((xx - 16) / 11) ** 2 < 1)[..., None], 4, axis=2)
    adc = np.where(body, rng.uniform(0.6, 2.5, body.shape), 0.0)
    dwi = np.where(body[..., None], ivim_signal(1.0, adc, INPUT_B + TARGET_B), 0.0) + rng.uniform(0.01, 0.02,
                                                                                                    (*body.shape, 5))
    stem = folder / f"sub-{subject}"
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    save_nifti(dwi, affine, f"{stem}_desc-norm_dwi.nii.gz")
    write_bval(INPUT_B + TARGET_B, f"{stem}_desc-norm_dwi.bval")
    save_nifti(body.astype(np.uint8), affine, f"{stem}_desc-organ_mask.nii.gz", dtype=np.uint8)
    shard = folder / f"sub-{subject}_slices.npz"
    write_slice_shard(f"{stem}_desc-norm_dwi.nii.gz", f"{stem}_desc-norm_dwi.bval", f"{stem}_desc-organ_mask.nii.gz",
                      shard, INPUT_B + TARGET_B, {"cohort": "c", "subject": subject})
    return stem, shard


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A pix2pix trained for two steps (what it synthesizes does not matter here) and a normalized test subject."""
    from dwisynth.loader import SliceDataset
    from dwisynth.networks.base import build_network
    from dwisynth.training import Trainer, TrainerConfig

    root = tmp_path_factory.mktemp("tiny_model")
    shards = [_phantom_subject(root, f"P{i}", i)[1] for i in range(3)]
    stem, _ = _phantom_subject(root, "T0", 100)
    network = build_network("pix2pix", {"ngf": 8, "ndf": 8, "levels": 3, "norm": "none"}, 2, 3, seed=7)
    config = TrainerConfig(steps=2, batch_size=2, crop=24, checkpoint_every=2, log_every=1, seed=7, device="cpu",
                           progress=False, validation_subjects=0)
    model = Trainer(network, SliceDataset(shards, INPUT_B, TARGET_B), config, root / "model",
                    {"method": "pix2pix", "organ": "abdomen", "input_b": INPUT_B, "target_b": TARGET_B}).fit()
    config_path = root / "config.yaml"
    config_path.write_text("bvalues: {inputs: [0, 100], targets: [400, 800, 1000]}\ndevice: cpu\n")
    return {"model": model, "stem": stem, "config": config_path}


def _synthesize(tiny_model, *args, image=None):
    """`dwisynth synthesize` of the test subject's normalized DWI (or of `image`, a copy of it)."""
    from dwisynth.cli import main

    stem = tiny_model["stem"]
    return main(["synthesize", str(tiny_model["model"]), str(image or f"{stem}_desc-norm_dwi.nii.gz"), "--bval",
                 f"{stem}_desc-norm_dwi.bval", "--normalized", "--mask", f"{stem}_desc-organ_mask.nii.gz",
                 "--config", str(tiny_model["config"]), *map(str, args)])


def test_synthesize_writes_only_the_requested_b_values_named_after_the_input_subject(tiny_model, tmp_path):
    from dwisynth.config import adc_settings, load_config
    from dwisynth.layout import synth_folder_files
    from dwisynth.synthesis import synthesize_subject

    assert _synthesize(tiny_model, "-o", tmp_path / "all") == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [  # sub-T0 from the input's name; no scratch
        "sub-T0_desc-pix2pix_adc.nii.gz", "sub-T0_desc-pix2pix_dwi.bval", "sub-T0_desc-pix2pix_dwi.nii.gz"]
    assert np.loadtxt(tmp_path / "all" / "sub-T0_desc-pix2pix_dwi.bval").tolist() == TARGET_B  # default: targets
    assert _synthesize(tiny_model, "--b", 1000, 400, "--subject", "HA01", "-o", tmp_path / "some") == 0
    written = synth_folder_files(tmp_path / "some", "pix2pix", "HA01")
    assert np.loadtxt(written["bval"]).tolist() == [1000.0, 400.0]
    # the same numbers as the stack the workflow and the viewer write (inputs, then the targets), ADC included
    stem, stack = tiny_model["stem"], synth_folder_files(tmp_path / "stack", "pix2pix", "HA01")
    synthesize_subject(tiny_model["model"], f"{stem}_desc-norm_dwi.nii.gz", f"{stem}_desc-norm_dwi.bval",
                       f"{stem}_desc-organ_mask.nii.gz", stack, adc_settings(load_config(tiny_model["config"])),
                       "HA01", "cpu", target_b=[1000.0, 400.0], adc_as_acquired=False)
    assert np.loadtxt(stack["bval"]).tolist() == INPUT_B + [1000.0, 400.0]
    read = lambda path: np.asarray(nib.load(path).dataobj)  # noqa: E731
    assert np.array_equal(read(written["dwi"]), read(stack["dwi"])[..., 2:])
    assert np.array_equal(read(written["adc"]), read(stack["adc"]))


def test_a_nifti_without_a_subject_in_its_name_gets_the_first_pseudonym(tiny_model, tmp_path):
    import shutil

    plain = tmp_path / "mueller_dwi.nii.gz"  # a file name can hold a patient's name: never used
    shutil.copy(f"{tiny_model['stem']}_desc-norm_dwi.nii.gz", plain)
    assert _synthesize(tiny_model, "--b", 800, "-o", tmp_path / "out", image=plain) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir())[-1] == "sub-S0001_desc-pix2pix_dwi.nii.gz"


@pytest.mark.parametrize("command, output", [("synthesize", "out.nii.gz"), ("ct2dwi", "out.nii")])
def test_an_output_file_name_is_refused_as_the_output_folder(tmp_path, capsys, command, output):
    from dwisynth.cli import main

    assert main([command, str(tmp_path / "model.pt"), str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / output)]) == 2
    assert f"{tmp_path / output}: -o is an output folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_subject_that_is_not_a_pseudonym_is_refused_without_showing_it(tiny_model, tmp_path, capsys):
    assert _synthesize(tiny_model, "--subject", "MRN-7654321", "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--subject (not shown) must be a study pseudonym of letters and digits" in err and "7654321" not in err
    assert not (tmp_path / "out").exists()
