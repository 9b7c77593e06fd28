"""`dwisynth view` on the tiny workflow's results: the page in headless Chromium, and the HTTP API's refusals."""

import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from helpers import REPO, TINY_CONFIG, preproc_stem

pytestmark = pytest.mark.workflow

SUBJECT = ("multicenter", "HAabdomen01")  # a test-split abdomen subject that acquired the held-out b 850
STROKE = ("stroke", "SAstroke02")  # a test-split stroke subject: CT on the DWI grid and acquired b 1000
# what a Debian chromium started as root on a closed network needs; swiftshader gives NiiVue its WebGL2
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


class Server:
    """`dwisynth view` in a subprocess, on a free port, with its own TMPDIR (its workspace) and log file; requests
    carry the token of the URL it printed at start-up, as a user's browser would."""

    def __init__(self, run: Path, config: Path, tmp: Path, *extra):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.tmp = tmp / "tmpdir"
        self.tmp.mkdir(parents=True)
        self.log_path = tmp / "view.log"
        self.log = open(self.log_path, "w")
        env = {**os.environ, "TMPDIR": str(self.tmp)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dwisynth.cli", "view", "--models", str(run / "results/models"),
             "--results", str(run / "results"), "--config", str(config), "--port", str(self.port),
             "--root", str(run / "data"), *extra],
            cwd=run, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 120
        while time.time() < deadline:
            printed = re.search(r"open (http://\S+/\?token=(\S+)) in a browser", self.log_path.read_text())
            if printed:
                self.start_url, self.token = printed.groups()
                try:
                    self.get("/api/state")
                    return
                except (ConnectionError, urllib.error.URLError):
                    pass
            assert self.proc.poll() is None, self.log_path.read_text()
            time.sleep(0.3)
        raise AssertionError(f"the viewer did not answer within 120 s:\n{self.log_path.read_text()}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, raw=None, headers=None):
        """(status, parsed JSON or bytes)"""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Authorization": f"token {self.token}",
                   **({"Content-Type": "application/json"} if body is not None else {}), **(headers or {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=300) as response:
                status, payload, kind = response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, payload, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
        return status, json.loads(payload) if "json" in kind else payload

    def get(self, path):
        return self.request("GET", path)

    def wait(self, job, timeout=300):
        """The finished job (done or failed)."""
        deadline = time.time() + timeout
        while job["state"] in ("queued", "running"):
            assert time.time() < deadline, job
            time.sleep(0.1)
            _, job = self.get(f"/api/jobs/{job['id']}")
        return job

    def run_job(self, method, path, body):
        status, job = self.request(method, path, body)
        assert status == 202, job
        job = self.wait(job)
        assert job["state"] == "done", job["error"]
        return job["result"]

    def workspace(self) -> Path:
        (folder,) = self.tmp.glob("dwisynth-view-*")
        return folder

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture(scope="module")
def viewer_run(request):
    """(run folder, its config): the tiny workflow's run, or a finished `make demo` checkout named by
    DWISYNTH_VIEWER_RUN (how the README's screenshot is made: see test_page_...)."""
    if os.environ.get("DWISYNTH_VIEWER_RUN"):
        run = Path(os.environ["DWISYNTH_VIEWER_RUN"]).resolve()
        return run, run / "config/demo.yaml"
    return request.getfixturevalue("demo_run"), TINY_CONFIG


@pytest.fixture(scope="module")
def server(viewer_run, tmp_path_factory):
    server = Server(*viewer_run, tmp_path_factory.mktemp("viewer"))
    yield server
    server.stop()


def page_subject(run) -> tuple[str, str, str]:
    """(cohort, subject, organ) of the first test-split multicenter subject that acquired b 850 and whose organ has
    a MineGAN model (the tiny run: SUBJECT)."""
    import pandas as pd

    split = pd.read_csv(run / "results/datasets/split.tsv", sep="\t", dtype=str)
    for row in split[(split["split"] == "test") & (split["cohort"] == "multicenter")].itertuples():
        bval = Path(f"{preproc_stem(run, row.cohort, row.subject)}_desc-norm_dwi.bval")
        if (run / f"results/models/minegan/{row.organ}/model.pt").is_file() and 850 in np.loadtxt(bval, ndmin=1):
            return row.cohort, row.subject, row.organ
    raise AssertionError("no test subject acquired b 850")


def cli_synthesis(run, config, subject, tmp_path, b):
    """`dwisynth synthesize` of the same subject at b: the file the page's values must equal."""
    cohort, name, organ = subject
    stem = preproc_stem(run, cohort, name)
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "dwisynth.cli", "synthesize", str(run / f"results/models/minegan/{organ}/model.pt"),
                    f"{stem}_desc-norm_dwi.nii.gz", "--bval", f"{stem}_desc-norm_dwi.bval", "--normalized",
                    "--mask", f"{stem}_desc-organ_mask.nii.gz", "--b", str(b), "--subject", "cli",
                    "--config", str(config), "-o", str(out)], check=True, cwd=run, capture_output=True)
    dwi = nib.load(out / "sub-cli_desc-minegan_dwi.nii.gz")
    bvals = np.loadtxt(out / "sub-cli_desc-minegan_dwi.bval", ndmin=1)
    assert bvals[-1] == b
    return np.asarray(dwi.dataobj)[..., -1], np.asarray(nib.load(out / "sub-cli_desc-minegan_adc.nii.gz").dataobj)


def non_blank(png: bytes, min_std: float = 10.0) -> float:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    assert pixels.std() > min_std, f"blank image (pixel SD {pixels.std():.1f})"
    return pixels.std()


def test_page_synthesizes_b850_shows_the_cli_values_and_exports_dicom(server, viewer_run, tmp_path):
    """Also makes the README's picture: DWISYNTH_VIEWER_RUN=$PWD DWISYNTH_SCREENSHOT=docs/viewer.png after make demo."""
    from playwright.sync_api import sync_playwright

    run, config = viewer_run
    subject = page_subject(run)
    stem = preproc_stem(run, *subject[:2])
    synthetic_cli, adc_cli = cli_synthesis(run, config, subject, tmp_path, 850)
    mask = np.asarray(nib.load(f"{stem}_desc-organ_mask.nii.gz").dataobj) > 0
    from scipy import ndimage

    inside = np.argwhere(ndimage.binary_erosion(mask, iterations=2))  # away from the organ's edge
    i, j, k = inside[np.argmin(((inside - inside.mean(0)) ** 2).sum(1))]
    errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 950}, accept_downloads=True)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.start_url)  # the URL `dwisynth view` printed: the page keeps its token as a cookie
        page.wait_for_function("window.viewer && window.viewer.ready", timeout=60_000)
        assert page.url == f"{server.url}/"  # not left in the address bar
        page.select_option("#subject", "/".join(subject[:2]))
        page.click("#open-results button")
        page.wait_for_function("viewer.study !== null && !viewer.busy", timeout=60_000)
        assert page.input_value("#model") == f"minegan/{subject[2]}"  # the organ's any-b model is picked
        page.eval_on_selector("#b", "el => { el.value = 850; el.dispatchEvent(new Event('change')); }")
        page.wait_for_function("viewer.synthesis && viewer.synthesis.b === 850 && !viewer.busy", timeout=120_000)
        assert page.inner_text("#error") == ""
        page.evaluate(f"viewer.goToVoxel({i}, {j}, {k})")
        page.wait_for_function(f"viewer.lastVoxel && viewer.lastVoxel.voxel.join() === '{i},{j},{k}'")
        shown = {name: float(page.inner_text(f"#value-{name}")) for name in ("synthetic", "adc", "acquired")}
        assert shown["synthetic"] == pytest.approx(synthetic_cli[i, j, k], rel=1e-5)
        assert shown["adc"] == pytest.approx(adc_cli[i, j, k], rel=1e-5, abs=1e-6)
        acquired = nib.load(f"{stem}_desc-norm_dwi.nii.gz")
        bvals = np.loadtxt(f"{stem}_desc-norm_dwi.bval")
        assert shown["acquired"] == pytest.approx(np.asarray(acquired.dataobj)[i, j, k, bvals == 850].mean(), rel=1e-5)
        # NiiVue drew the synthetic slice (WebGL canvas, read back through a screenshot of it)
        non_blank(page.locator("#view-0").screenshot())
        # the signal curve: acquired points, and the model's curve through the b-range
        curve = page.evaluate("viewer.lastVoxel")
        assert [b for b, _ in curve["acquired"]] == sorted(set(bvals.tolist()))
        assert len(curve["synthetic_curve"]) > 10
        page.fill("#roi-radius", "2")
        page.click("#roi")
        page.wait_for_function("document.getElementById('roi-result').textContent.includes('voxels')")
        # export DICOM through the page's link, read it back with dcm2niix
        with page.expect_download() as download:
            page.click("#export-dicom")
        archive = tmp_path / "export.zip"
        download.value.save_as(archive)
        shot = tmp_path / "viewer.png"
        page.screenshot(path=shot)
        # a refusal reaches the page as its message
        page.fill("#path", "/etc")
        page.click("#open-path button")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "outside the folders this viewer may read" in page.inner_text("#error")
        browser.close()
    assert not errors, errors
    non_blank(shot.read_bytes())
    if os.environ.get("DWISYNTH_SCREENSHOT"):  # the README's picture: DWISYNTH_SCREENSHOT=docs/viewer.png
        shutil.copyfile(shot, os.environ["DWISYNTH_SCREENSHOT"])
    from dwisynth.convert import dcm2niix_binary

    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "dicom")
    (series,) = {p.parent for p in (tmp_path / "dicom").rglob("*.dcm")}
    subprocess.run([dcm2niix_binary(), "-z", "y", "-f", "back", "-o", str(tmp_path), str(series)], check=True,
                   capture_output=True)
    assert np.loadtxt(tmp_path / "back.bval", ndmin=1).tolist() == [850.0]
    back = nib.as_closest_canonical(nib.load(tmp_path / "back.nii.gz"))
    np.testing.assert_allclose(back.affine, acquired.affine, atol=1e-3)
    np.testing.assert_allclose(np.asarray(back.dataobj).squeeze(), synthetic_cli,
                               atol=float(synthetic_cli.max()) / 60000 + 1e-6)
    sidecar = json.loads((tmp_path / "back.json").read_text())
    assert sidecar["ImageType"][:2] == ["DERIVED", "SECONDARY"]


def test_ct_to_dwi_in_the_viewer_matches_the_workflow(server, viewer_run):
    run = viewer_run[0]
    study = server.run_job("POST", "/api/open", {"source": "results", "cohort": STROKE[0], "subject": STROKE[1]})
    assert "ct2dwi/main/jmmdagan" in study["models"]
    synthesis = server.run_job("POST", "/api/synthesize", {"study": study["id"], "model": "ct2dwi/main/jmmdagan",
                                                           "b": 1000})
    assert set(synthesis["volumes"]) == {"synthetic", "acquired", "difference"}
    workflow = nib.load(run / f"results/{STROKE[0]}/ct2dwi/main/jmmdagan/sub-{STROKE[1]}/"
                                   f"sub-{STROKE[1]}_desc-jmmdagan_dwi.nii.gz")
    expected = np.asarray(workflow.dataobj)[..., 0]
    i, j, k = (n // 2 for n in expected.shape)
    _, shown = server.get(f"/api/studies/{study['id']}/voxel?i={i}&j={j}&k={k}&synthesis={synthesis['id']}")
    assert shown["values"]["synthetic"] == pytest.approx(expected[i, j, k], rel=1e-5, abs=1e-7)
    assert "ct" in shown["values"]
    # a multi-b model refuses the CT-only path; a CT -> DWI model refuses another b
    status, job = server.request("POST", "/api/synthesize", {"study": study["id"], "model": "ct2dwi/main/jmmdagan",
                                                            "b": 800})
    assert status == 400 and "b = 1000 only" in job["error"]


def test_two_requests_at_once_both_finish(server):
    study = server.run_job("POST", "/api/open", {"source": "results", "cohort": SUBJECT[0], "subject": SUBJECT[1]})
    answers = {}

    def ask(b):
        answers[b] = server.request("POST", "/api/synthesize", {"study": study["id"], "model": "minegan/abdomen",
                                                                "b": b})[1]

    threads = [threading.Thread(target=ask, args=(b,)) for b in (75, 640)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(job["state"] in ("queued", "running") for job in answers.values())
    finished = {b: server.wait(job) for b, job in answers.items()}
    assert {b: job["state"] for b, job in finished.items()} == {75: "done", 640: "done"}
    assert {job["result"]["b"] for job in finished.values()} == {75.0, 640.0}


def test_refusals_say_why_and_write_nothing(server, viewer_run, tmp_path):
    run = viewer_run[0]
    study = server.run_job("POST", "/api/open", {"source": "results", "cohort": SUBJECT[0], "subject": SUBJECT[1]})
    before = sorted(p.relative_to(server.workspace()) for p in server.workspace().rglob("*"))

    def refused(path, body, status, *phrases):
        got, answer = server.request("POST", path, body)
        if got == 202:  # refused by the job, not at once
            answer = server.wait(answer)
            assert answer["state"] == "failed", answer
            got = server.get(f"/api/jobs/{answer['id']}")[0]
        assert got == status, answer
        for phrase in phrases:
            assert phrase in answer["error"], answer["error"]

    refused("/api/synthesize", {"study": study["id"], "model": "minegan/abdomen", "b": 2500}, 400,
            "outside", "[0, 2000]")
    refused("/api/synthesize", {"study": study["id"], "model": "dc2anet/abdomen", "b": 850}, 400,
            "400, 600, 800, 1000 only", "MineGAN")
    stroke = server.run_job("POST", "/api/open", {"source": "results", "cohort": STROKE[0], "subject": STROKE[1]})
    refused("/api/synthesize", {"study": stroke["id"], "model": "minegan/abdomen", "b": 850}, 400,
            "abdomen model", "brain")
    refused("/api/open", {"source": "path", "path": "/etc"}, 403, "outside the folders")
    refused("/api/open", {"source": "path", "path": str(run / "data/../results/../../..")}, 403, "outside")
    empty = run / "data" / "empty_folder"
    empty.mkdir(exist_ok=True)
    refused("/api/open", {"source": "path", "path": str(empty)}, 400, "no DICOM file")
    broken = run / "data" / "broken_series"
    shutil.copytree(run / "data/demo/dicom/multicenter/HAabdomen01/DWI", broken, dirs_exist_ok=True)
    victim = sorted(broken.iterdir())[7]
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    refused("/api/open", {"source": "path", "path": str(broken)}, 400, victim.name, "not a readable DICOM")
    # a CT series opened, then given to a multi-b model
    ct = server.run_job("POST", "/api/open", {"source": "path",
                                              "path": str(run / "data/demo/dicom/stroke/SAstroke02/CT")})
    assert ct["has_ct"] and not ct["has_dwi"]
    refused("/api/synthesize", {"study": ct["id"], "model": "minegan/abdomen", "b": 850}, 400, "is a CT",
            "CT -> DWI model")
    # a 2 GB upload is refused from its header, before a byte of it is read
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.putrequest("POST", "/api/upload?name=study.zip")
    conn.putheader("Authorization", f"token {server.token}")
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(2 * 2**30))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "MiB" in json.loads(response.read())["error"]
    conn.close()
    after = {p.relative_to(server.workspace()) for p in server.workspace().rglob("*")}
    new = sorted(str(p) for p in after - set(before))
    # only the studies that opened wrote files: no folder of a refused study, no upload left behind
    assert all(p.split("/")[0] in (stroke["id"], ct["id"]) for p in new), new


def test_an_opened_dicom_series_and_the_log_hold_no_identifier(server, viewer_run):
    run = viewer_run[0]
    phi = json.loads((run / "data/demo/planted_phi.json").read_text())[SUBJECT[1]]
    study = server.run_job("POST", "/api/open", {"source": "path",
                                                 "path": str(run / "data/demo/dicom" / SUBJECT[0] / SUBJECT[1] / "DWI")})
    assert study["organ"] == "abdomen" and 850.0 in study["acquired_b"]  # organ from BodyPartExamined
    synthesis = server.run_job("POST", "/api/synthesize", {"study": study["id"], "model": "minegan/abdomen", "b": 850})
    said = [json.dumps(study), json.dumps(synthesis), json.dumps(server.get("/api/state")[1]),
            json.dumps(server.get(f"/api/studies/{study['id']}/voxel?i=1&j=1&k=1&synthesis={synthesis['id']}")[1])]
    status, archive = server.get(f"/api/studies/{study['id']}/export?synthesis={synthesis['id']}&format=dicom")
    assert status == 200
    import pydicom

    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        headers = [pydicom.dcmread(io.BytesIO(z.read(name))) for name in z.namelist()]
    said += [str(ds) for ds in headers]
    said.append(server.log_path.read_text())
    for value in ("name", "patient_id", "birth_date", "institution", "institution_address", "study_uid",
                  "series_uid", "accession"):
        for text in said:
            assert phi[value] not in text, (value, text[:200])
    assert phi["name"].split("^")[0] not in "\n".join(said)


def test_a_nifti_and_an_uploaded_zip_open_as_the_workflow_opens_them(server, viewer_run, tmp_path):
    run = viewer_run[0]
    cohort, subject = SUBJECT
    nifti = run / f"results/{cohort}/nifti/sub-{subject}/sub-{subject}_dwi.nii.gz"  # .bval and .json beside it
    study = server.run_job("POST", "/api/open", {"source": "path", "path": str(nifti)})
    assert study["organ"] == "abdomen"  # BodyPartExamined of the sidecar
    ours = server.workspace() / study["id"] / "preproc" / f"sub-{study['id']}_desc-norm_dwi.nii.gz"
    workflow = f"{preproc_stem(run, cohort, subject)}_desc-norm_dwi.nii.gz"
    np.testing.assert_allclose(np.asarray(nib.load(ours).dataobj), np.asarray(nib.load(workflow).dataobj),
                               rtol=1e-5, atol=1e-6)
    # a zipped CT series, uploaded
    archive = tmp_path / "ct.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((run / "data/demo/dicom" / STROKE[0] / STROKE[1] / "CT").iterdir()):
            z.write(path, f"CT/{path.name}")
    status, job = server.request("POST", "/api/upload?name=ct.zip", raw=archive.read_bytes(),
                                 headers={"Content-Type": "application/octet-stream"})
    assert status == 202, job
    job = server.wait(job)
    assert job["state"] == "done", job
    assert job["result"]["has_ct"] and job["result"]["label"].startswith("upload")
    assert "ct2dwi/main/jmmdagan" in job["result"]["models"]
