"""End to end: the workflow on the tiny config, then what its outputs must and must not hold."""

import json
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import REPO, TINY_CONFIG, snakemake

pytestmark = pytest.mark.workflow


def test_every_series_is_converted(demo_run):
    sheet = pd.read_csv(demo_run / "data/demo/samples.tsv", sep="\t", keep_default_na=False)
    for row in sheet.itertuples():
        suffix = {"DWI": "dwi", "CT": "ct"}[row.modality]
        stem = demo_run / f"results/{row.cohort}/nifti/sub-{row.subject}/sub-{row.subject}_{suffix}"
        assert Path(f"{stem}.nii.gz").exists(), stem
        qc = json.loads(Path(f"{stem}_qc.json").read_text())
        assert qc["checks"] == "passed"


def test_bvalues_after_dcm2niix_equal_the_generated_ones_for_every_vendor(demo_run):
    vendors = set()
    for truth in (demo_run / "data/demo/truth").glob("*/sub-*/sub-*_truth.json"):
        meta = json.loads(truth.read_text())
        subject = truth.parent.name
        bval = demo_run / f"results/{meta['cohort']}/nifti/{subject}/{subject}_dwi.bval"
        assert np.loadtxt(bval).tolist() == meta["acquired_bvals"]
        vendors.add(meta["vendor"])
    assert vendors == {"siemens", "ge", "philips", "standard"}


def _png_text(blob: bytes) -> str:
    """The text a PNG carries (tEXt/iTXt/zTXt chunks), not its compressed pixels."""
    import io

    from PIL import Image

    return "\n".join(f"{k}: {v}" for k, v in Image.open(io.BytesIO(blob)).info.items() if isinstance(v, str))


def _strings(obj) -> list[str]:
    """The text leaves of a nested record (tensors and arrays left out: their bytes are not text)."""
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in [str(k), *_strings(v)]]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return [] if hasattr(obj, "shape") else [str(obj)]


def _readable_text(path: Path) -> str:
    """A file's content as text a leak would show in: decompressed, decoded, arrays of text included.

    Binary payloads (voxels, weights, PNG pixels, base64) are left out or decoded: random bytes read as
    letters would match short name parts by chance."""
    import base64
    import gzip

    if path.parent.name == "metadata" and path.parent.parent.name == ".snakemake":
        # Snakemake names each record by its output path in base64 and stores the conda env file in base64
        record = json.loads(path.read_text())
        record["conda_env"] = base64.b64decode(record.get("conda_env") or "").decode("utf-8", errors="ignore")
        return base64.b64decode(path.name).decode("utf-8", errors="ignore") + "\n" + "\n".join(_strings(record))
    if path.suffix == ".pt":
        import torch

        return "\n".join(_strings(torch.load(path, map_location="cpu", weights_only=False)))
    if path.suffix == ".npz":
        with np.load(path) as data:
            return "\n".join(str(data[key].tolist()) for key in data.files if data[key].dtype.kind in "USO")
    if path.name.endswith(".nii.gz"):
        from dwisynth.identifiers import searchable_text

        return searchable_text(path)  # the header's text fields and extensions
    if path.suffix == ".png":
        return _png_text(path.read_bytes())
    blob = path.read_bytes()
    if path.suffix == ".html":
        # embedded figures: keep their text chunks
        import re

        html = blob.decode("utf-8")
        return re.sub(r"data:image/png;base64,([A-Za-z0-9+/=]+)",
                      lambda m: _png_text(base64.b64decode(m.group(1))), html)
    if path.name.endswith(".gz"):
        blob = gzip.decompress(blob)
    text = blob.decode("utf-8", errors="ignore")
    if path.suffix == ".json":
        text += json.dumps(json.loads(text), ensure_ascii=False)
    return text


PLANTED_ATTRIBUTES = {"name": "PatientName", "patient_id": "PatientID", "birth_date": "PatientBirthDate",
                      "institution": "InstitutionName", "institution_address": "InstitutionAddress",
                      "study_uid": "StudyInstanceUID", "series_uid": "SeriesInstanceUID",
                      "accession": "AccessionNumber", "scan_date": "StudyDate"}


def test_no_planted_identifier_reaches_any_output_log_or_metadata(demo_run):
    """Every place a run writes: results/ (the report too), logs/, benchmarks/ and Snakemake's own
    metadata and logs under .snakemake/. Identifiers are whole tokens of values (dwisynth.identifiers), so
    name parts of any length and dates in any spelling are checked."""
    from dwisynth.identifiers import find_identifiers_in_text, identifiers_from_values

    planted = json.loads((demo_run / "data/demo/planted_phi.json").read_text())
    identifiers = identifiers_from_values({(attribute, person[key]) for person in planted.values()
                                           for key, attribute in PLANTED_ATTRIBUTES.items()})
    assert {i.attribute for i in identifiers} == set(PLANTED_ATTRIBUTES.values())
    roots = ["results", "logs", "benchmarks", ".snakemake/metadata", ".snakemake/log"]
    files = [p for root in roots for p in (demo_run / root).rglob("*") if p.is_file()]
    for root in roots:
        assert any(p.is_relative_to(demo_run / root) for p in files), f"nothing under {root} to scan"
    assert any(p.suffix == ".npz" for p in files) and (demo_run / "results/report.html") in files
    for path in files:
        found = find_identifiers_in_text(str(path.relative_to(demo_run)) + "\n" + _readable_text(path), identifiers)
        assert not found, f"{sorted(map(str, found))} found in {path}"


def test_rerun_has_nothing_to_do(demo_run):
    proc = snakemake("-n", "--cores", "1", workdir=demo_run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_demo_setting_change_regenerates_the_cohort_and_what_was_made_from_it(demo_run, tmp_path):
    """A new SNR or seed rewrites the demo's series under the same folder names: only the demo rule's params
    can tell Snakemake that the converted, registered and trained results are stale."""
    for change in ("snr", "seed"):
        config = yaml.safe_load(TINY_CONFIG.read_text())
        if change == "snr":
            config["demo"]["centers"][2]["snr"] = 12
        else:
            config["seed"] += 1
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        plan = snakemake("-n", "--cores", "1", workdir=demo_run, configfile=tmp_path / "config.yaml").stdout
        demo_job = re.search(r"^rule demo_cohort:.*?(?=^\S)", plan, flags=re.M | re.S)
        assert demo_job and "params" in demo_job.group(0).lower(), (change, plan[:3000])
        planned = set(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", plan, flags=re.M))
        assert {"convert_dwi", "register_dwi", "split_manifest", "report"} <= planned, (change, planned)


def test_one_cohort_target_builds_only_that_cohort(tmp_path):
    proc = snakemake("-n", "--cores", "1", "cohort_tcga", workdir=tmp_path)
    out = proc.stdout + proc.stderr
    assert "convert_dwi" in out and "cohort_tcga" in out
    assert "sub-SA" not in out and "sub-HA" not in out  # no stroke or hospitalA series


# Every job runs in the one .venv (the workflow imports dwisynth and torch when it parses): a per-rule conda
# env could not hold the package, so no rule claims one and this is the one lint the workflow accepts.
NO_SOFTWARE_LINT = "Specify a conda environment or container for each rule."


def test_lint_is_clean_apart_from_the_one_environment(tmp_path):
    proc = snakemake("--lint", workdir=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    lints = set(re.findall(r"^    \* (.+?):?$", out, flags=re.M))
    assert "Lints for" in out  # the parser found the lint list: the assertion below is not vacuous
    assert lints == {NO_SOFTWARE_LINT}, out[-3000:]


def test_dry_run_of_the_default_demo_config(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--directory", str(tmp_path),
           "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config/demo.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "demo_cohort" in proc.stdout


def test_dry_run_with_the_slurm_profile(tmp_path):
    proc = snakemake("-n", "--profile", str(REPO / "profiles/slurm"), workdir=tmp_path)
    assert "convert_ct" in proc.stdout


# --- stage 1: training, synthesis, scoring --------------------------------------------------

def _multib_test_subjects(run):
    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t")
    return split[(split["split"] == "test") & (split["task"] == "multib")]


def test_every_test_subject_gets_every_method_with_the_acquired_geometry(demo_run):
    config = yaml.safe_load((REPO / "workflow_tests/config/config.yaml").read_text())
    trained_organs = {p.parent.name for p in (demo_run / "results/models/dc2anet").glob("*/model.pt")}
    assert trained_organs == {"abdomen"}  # the tiny config has brain training subjects in no center
    b = config["bvalues"]
    tests = _multib_test_subjects(demo_run)
    assert len(tests) >= 2
    for row in tests.itertuples():
        methods = ["cdwi", "noisefree"] + (STAGE1 + STAGE2 if row.organ in trained_organs else [])
        acquired = nib.load(demo_run / f"results/{row.cohort}/preproc/sub-{row.subject}/"
                            f"sub-{row.subject}_desc-norm_dwi.nii.gz")
        for method in methods:
            # every source writes the trained targets and the held-out b (stage 1: its targets only)
            expected_b = b["inputs"] + (b["targets"] if method in STAGE1
                                        else sorted(b["targets"] + b["heldout"]) if method in STAGE2
                                        else b["targets"] + b["heldout"])
            stem = demo_run / f"results/{row.cohort}/synth/{method}/sub-{row.subject}/sub-{row.subject}_desc-{method}"
            img = nib.load(f"{stem}_dwi.nii.gz")
            assert img.shape == (*acquired.shape[:3], len(expected_b)) and np.allclose(img.affine, acquired.affine)
            assert np.loadtxt(f"{stem}_dwi.bval").tolist() == expected_b
            assert np.isfinite(img.get_fdata()).all()
            assert nib.load(f"{stem}_adc.nii.gz").shape == acquired.shape[:3]


STAGE1 = ["dc2anet", "pix2pix"]
STAGE2 = ["minegan", "mineganfewshot", "bcond"]
ALL_METHODS = {*STAGE1, *STAGE2, "cdwi", "dc2anetinterp", "noisefree"}


def test_training_logs_and_models_record_what_they_learned_from(demo_run):
    import torch

    split = pd.read_csv(demo_run / "results/datasets/split.tsv", sep="\t")
    test_subjects = {(r.cohort, r.subject) for r in split[split["split"] == "test"].itertuples()}
    for method in ("dc2anet", "pix2pix"):
        log = pd.read_csv(demo_run / f"results/models/{method}/abdomen/training_log.csv")
        assert log["step"].iloc[-1] == 10 and (log["images_per_s"] > 0).all()
        record = torch.load(demo_run / f"results/models/{method}/abdomen/model.pt", weights_only=True)
        assert record["train_subjects"] and not set(map(tuple, record["train_subjects"])) & test_subjects
        assert record["fingerprint"] and record["task"] == "multib"
    # stage 2: built on the organ's stage-1 model; the few-shot images come from the train split
    stage1 = torch.load(demo_run / "results/models/dc2anet/abdomen/model.pt", weights_only=True)
    zero = torch.load(demo_run / "results/models/minegan/abdomen/model.pt", weights_only=True)
    few = torch.load(demo_run / "results/models/mineganfewshot/abdomen/model.pt", weights_only=True)
    assert zero["upstream"] == {"stage1": stage1["fingerprint"]} and few["upstream"] == {"zeroshot": zero["fingerprint"]}
    assert zero["trained_steps"] == 14 and few["trained_steps"] == 8
    images = few["fewshot_images"]
    assert len(images) == 2 * 2 and {b for *_, b in images} == {75.0, 850.0}  # k = 2 per held-out b
    assert {(c, s) for c, s, _, _ in images} == {("multicenter", "HAabdomen02")}
    assert ("multicenter", "HAabdomen02") in set(map(tuple, few["train_subjects"])) - test_subjects


def test_synthesis_metrics_table_scores_every_method_on_the_same_images(demo_run):
    table = pd.read_csv(demo_run / "results/tables/synthesis_metrics.tsv", sep="\t", dtype={"slice": str})
    assert list(table.columns[:9]) == ["task", "method", "cohort", "center", "organ", "subject", "slice",
                                       "b_value", "seen"]
    volumes = table[table["slice"] == "volume"]
    abdomen = volumes[volumes["organ"] == "abdomen"]
    trained = abdomen[abdomen["seen"] == "trained"]
    per_method = trained.groupby("method")[["subject", "b_value"]].apply(lambda g: set(map(tuple, g.values)))
    assert len({frozenset(v) for v in per_method}) == 1  # same subjects and b-values for every method
    assert set(abdomen["method"]) == ALL_METHODS
    # held-out b: scored for the test subject that acquired them, marked seen = heldout, for every method
    # that synthesizes any b (stage 1 networks have no b 75 / 850)
    held = abdomen[abdomen["seen"] == "heldout"]
    assert set(held["b_value"]) == {75.0, 850.0} and set(held["subject"]) == {"HAabdomen01"}
    assert set(held["method"]) == ALL_METHODS - set(STAGE1)
    assert (abdomen[abdomen["b_value"].isin([75.0, 850.0])]["seen"] == "heldout").all()
    floor = volumes[volumes["method"] == "noisefree"]["psnr"].mean()
    assert floor > volumes[volumes["method"] == "cdwi"]["psnr"].mean()  # the noise-free reference beats the physics baseline


# --- tables, reading set, provenance, report -------------------------------------------------

def test_summary_table_has_every_grouping_and_the_adc_agreement(demo_run):
    summary = pd.read_csv(demo_run / "results/tables/summary.tsv", sep="\t")
    image = summary[summary["analysis"] == "image metrics"]
    assert {"method x b", "method x organ x b", "method x center x b"} <= set(image["grouping"])
    assert set(image.loc[image["task"] == "multib", "method"]) == ALL_METHODS
    assert set(image.loc[image["task"] == "ct2dwi", "method"]) == {"jmmdagan", "pix2pix", "unet", "noisefree"}
    agreement = summary[summary["analysis"] == "ADC agreement"]
    assert set(agreement["method"]) == ALL_METHODS
    assert agreement["mean_difference"].notna().all()


def test_claims_pair_each_method_with_its_strongest_baseline_on_the_subjects_that_have_the_b(demo_run):
    tables = demo_run / "results/tables"
    claims = pd.read_csv(tables / "claims.tsv", sep="\t")
    metrics = pd.read_csv(tables / "synthesis_metrics.tsv", sep="\t", dtype={"slice": str})
    volumes = metrics[metrics["slice"] == "volume"]
    acquired = claims[claims["reference"] == "acquisition"]
    assert {"dc2anet", "minegan", "jmmdagan"} <= set(acquired["method"])
    for _, claim in acquired.iterrows():
        rows = volumes[(volumes["task"] == claim["task"]) & (volumes["b_value"] == claim["b_value"])]
        have = lambda m: set(rows.loc[rows["method"] == m, "subject"])  # noqa: E731
        assert claim["n_subjects"] == len(have(claim["method"]) & have(claim["baseline"]))
        assert claim["underpowered"] == (claim["n_subjects"] < 6)
    stage2 = acquired[acquired["method"] == "minegan"]
    assert set(stage2["b_value"]) == {75.0, 850.0} and set(stage2["baseline"]) <= {"dc2anetinterp", "cdwi"}
    assert (claims.loc[claims["underpowered"], "verdict"] == "underpowered").all()
    report = (demo_run / "results/report.html").read_text()
    assert report.index("Cohort: simulated") < report.index("What was run")


def test_training_compute_gives_each_models_steps_and_measured_seconds(demo_run):
    compute = pd.read_csv(demo_run / "results/tables/training_compute.tsv", sep="\t").set_index(["method", "organ"])
    assert (compute["step_loop_seconds"] > 0).all() and (compute["train_seconds"] >= compute["step_loop_seconds"]).all()
    assert (compute.loc["dc2anet", "trained_steps"] == 10).all()
    assert (compute.loc["pix2pix", "trained_steps"] == 10).all()
    assert (compute["parameters"] > 0).all() and len(compute) == len(compute.index.unique())
    assert "Training budgets" in (demo_run / "results/report.html").read_text()


def test_lesion_and_truth_tables_score_every_lesion_against_the_noise_free_truth(demo_run):
    tables = demo_run / "results/tables"
    lesion_adc = pd.read_csv(tables / "lesion_adc.tsv", sep="\t")
    assert list(lesion_adc.columns) == ["task", "method", "cohort", "center", "organ", "subject", "lesion_label",
                                        "lesion_name", "voxels", "adc_synthetic", "adc_acquired", "adc_truth",
                                        "difference", "relative_difference", "relative_difference_vs_truth",
                                        "adc_input_sd"]
    assert {"cdwi", "noisefree"} <= set(lesion_adc["method"]) and (lesion_adc["voxels"] > 0).all()
    assert (lesion_adc["adc_input_sd"] > 0).all()  # what the b 0 / 100 inputs leave open, per lesion
    assert set(lesion_adc["lesion_name"]) <= {"brain_tumour", "acute_infarct", "liver_metastasis"}
    assert (lesion_adc[["adc_synthetic", "adc_acquired", "adc_truth"]] > 0).all().all()
    # the noise-free reference's ADC is the truth's, up to the fit: a few percent
    assert lesion_adc.loc[lesion_adc["method"] == "noisefree", "relative_difference_vs_truth"].abs().max() < 0.1

    contrast = pd.read_csv(tables / "lesion_contrast.tsv", sep="\t")
    assert list(contrast.columns[6:]) == ["lesion_label", "lesion_name", "host_label", "host_name", "voxels",
                                          "b_value", "seen", "contrast", "contrast_truth", "contrast_acquired",
                                          "relative_error_vs_truth", "conspicuity"]
    assert {"acquired", "truth", "cdwi"} <= set(contrast["method"]) and "noisefree" not in set(contrast["method"])
    truth = contrast[contrast["method"] == "truth"]
    assert np.allclose(truth["conspicuity"], 1.0) and np.allclose(truth["relative_error_vs_truth"], 0.0)
    assert (truth["contrast"] > 0).all()  # the demo's lesions are brighter than their host at every b
    acquired = contrast[contrast["method"] == "acquired"]
    assert 0.6 < acquired["conspicuity"].median() < 1.4  # noise, not a lost lesion (the demo: 0.97-1.01)
    assert set(contrast["b_value"]) <= {400.0, 600.0, 800.0, 1000.0, 75.0, 850.0}

    metrics = pd.read_csv(tables / "truth_metrics.tsv", sep="\t")
    assert list(metrics.columns) == ["task", "method", "cohort", "center", "organ", "subject", "b_value", "seen",
                                     "psnr", "ssim", "mae", "spectral_peak"]
    assert {"acquired", "cdwi"} <= set(metrics["method"]) and "noisefree" not in set(metrics["method"])
    assert metrics["psnr"].between(5, 80).all() and metrics["ssim"].between(-1, 1).all() and (metrics["mae"] > 0).all()
    assert (metrics["spectral_peak"].dropna() > 1).all() and metrics["spectral_peak"].notna().any()

    monotonicity = pd.read_csv(tables / "monotonicity.tsv", sep="\t")
    assert list(monotonicity.columns[6:]) == ["b_step", "b_max", "tissue_voxels", "violating_fraction",
                                              "worst_interval", "worst_interval_share"]
    assert set(monotonicity["method"]) == set(STAGE2)
    assert (monotonicity["b_step"] == 25).all() and (monotonicity["b_max"] == 2000).all()  # b_range's top (default)
    assert (monotonicity["tissue_voxels"] > 0).all() and monotonicity["violating_fraction"].between(0, 1).all()


def test_reading_set_key_is_kept_apart_from_the_blinded_images(demo_run):
    reading = demo_run / "results/reader_study"
    key = pd.read_csv(demo_run / "results/reader_study_key.tsv", sep="\t")
    assert sorted(p.name for p in reading.glob("*.png")) == sorted(key["image"])
    assert {"acquired", "dc2anet", "minegan"} <= set(key["method"])
    assert set(key[key["method"] == "minegan"]["b_value"]) >= {75.0, 850.0}
    template = (reading / "ratings_template.tsv").read_text()
    assert "dc2anet" not in template and "acquired" not in template and "sub-" not in template


def test_provenance_records_versions_commit_config_and_input_checksums(demo_run):
    record = json.loads((demo_run / "results/provenance/provenance.json").read_text())
    assert record["packages"]["torch"] == "2.14.1" and record["seeds"]["seed"] == 7
    assert len(record["dwisynth_git"]["commit"]) >= 7 and record["config"]["bvalues"]["targets"]
    checksums = pd.read_csv(demo_run / "results/provenance/input_checksums.tsv", sep="\t")
    sheet = pd.read_csv(demo_run / "data/demo/samples.tsv", sep="\t")
    assert len(checksums) == len(sheet) and (checksums["files"] > 0).all()
    assert "dicom_dir" not in checksums.columns  # export paths may hold patient names


def test_report_renders_with_its_figures_in_headless_chromium(demo_run, tmp_path):
    import base64
    import io
    import re
    import shutil

    from PIL import Image

    report = demo_run / "results/report.html"
    html = report.read_text()
    figures = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(figures) >= 6  # metrics vs b, grid + ADC maps per organ, Bland-Altman, training curves
    for data in figures:
        assert min(Image.open(io.BytesIO(base64.b64decode(data))).size) > 150
    for heading in ("Image quality", "ADC agreement", "Training curves", "Provenance"):
        assert f"<h2>{heading}" in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed to render the report: `make test` installs it (apt-get)"
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,5000", report.as_uri()],
                   capture_output=True, timeout=180, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (5000, 1200)
    rows_with_content = (pixels < 200).mean(axis=1) > 0.05  # rows where figures (not just text) were drawn
    assert rows_with_content.sum() > 1000, rows_with_content.sum()
