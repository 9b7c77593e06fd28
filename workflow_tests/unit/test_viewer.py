"""The viewer's pieces: uploads, the derived DICOM export, the voxel fit, model checks, and whom a started server
answers (its token, its Host, the body types it takes)."""

import hashlib
import http.client
import json
import socket
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dwisynth.convert import dcm2niix_binary
from dwisynth.dicom import write_derived_series
from dwisynth.viewer.studies import ModelInfo, Study, ViewerError, check_model_fits, mono_exponential, unpack_upload

STATIC = Path(__file__).resolve().parents[2] / "dwisynth" / "viewer" / "static"


def test_the_vendored_niivue_is_the_release_its_readme_names():
    readme = (STATIC / "vendor" / "README.md").read_text()
    (bundle,) = (STATIC / "vendor").glob("niivue-*.umd.js")
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() in readme
    assert f'src="/static/vendor/{bundle.name}"' in (STATIC / "index.html").read_text()


def test_derived_dicom_of_an_oblique_volume_reads_back_through_dcm2niix(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.uniform(0, 3, size=(12, 10, 5)).astype(np.float32)
    angle = np.deg2rad(12)  # a rotated grid: orientation and position must come from the affine, not assumed
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([2.0, 2.5, 4.0])
    affine[:3, 3] = [-30, 12, 7]
    files = write_derived_series(tmp_path / "dicom", volume, affine, 850, pseudonym="s1", description="synthetic",
                                 seed_text="t")
    ds = pydicom.dcmread(files[0])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "DIFFUSION"]
    assert ds[0x0018, 0x9087].value == 850 and ds.PatientName == "s1" and "PatientBirthDate" not in ds
    again = write_derived_series(tmp_path / "again", volume, affine, 850, "s1", "synthetic", "other export")
    assert pydicom.dcmread(again[0]).SeriesInstanceUID != ds.SeriesInstanceUID  # a new series per export
    subprocess.run([dcm2niix_binary(), "-z", "y", "-f", "back", "-o", str(tmp_path), str(tmp_path / "dicom")],
                   check=True, capture_output=True)
    assert np.loadtxt(tmp_path / "back.bval", ndmin=1).tolist() == [850.0]
    back = nib.load(tmp_path / "back.nii.gz")
    # dcm2niix may flip axes: compare world coordinates of every voxel, and values at the same world point
    voxel_to_back = np.linalg.inv(back.affine) @ affine
    ijk = np.argwhere(np.ones(volume.shape, bool))
    mapped = np.rint(nib.affines.apply_affine(voxel_to_back, ijk)).astype(int)
    np.testing.assert_allclose(nib.affines.apply_affine(voxel_to_back, ijk), mapped, atol=1e-3)
    back_values = np.asarray(back.dataobj).squeeze()[tuple(mapped.T)]
    np.testing.assert_allclose(back_values, volume[tuple(ijk.T)], atol=3 / 60000 + 1e-6)


def test_an_upload_zip_may_not_escape_or_inflate(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../../outside.dcm", b"x")
    with pytest.raises(ViewerError, match="outside the upload"):
        unpack_upload(evil, tmp_path / "a", max_bytes=10**6)
    assert not (tmp_path / "outside.dcm").exists()
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("series/IM1.dcm", b"\0" * 5_000_000)  # ~5 KB zipped
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ViewerError, match="unpacks to 5 MiB") as refused:
        unpack_upload(bomb, tmp_path / "b", max_bytes=2**20)
    assert refused.value.status == 413 and not (tmp_path / "b").exists()
    series = tmp_path / "series.zip"
    with zipfile.ZipFile(series, "w") as z:
        for n in range(3):
            z.writestr(f"export/DWI/IM{n}.dcm", b"x")
    assert unpack_upload(series, tmp_path / "c", 10**6) == tmp_path / "c" / "export" / "DWI"
    with zipfile.ZipFile(tmp_path / "nifti.zip", "w") as z:
        z.writestr("dwi.nii.gz", b"x")
        z.writestr("dwi.bval", b"0 1000")
    assert unpack_upload(tmp_path / "nifti.zip", tmp_path / "d", 10**6).name == "dwi.nii.gz"


def test_mono_exponential_recovers_a_known_adc():
    b = np.array([0, 100, 500, 1000.0])
    s0, adc = mono_exponential(b, 3.0 * np.exp(-b * 1.1e-3))
    assert s0 == pytest.approx(3.0) and adc == pytest.approx(1.1)
    assert mono_exponential(b, [1, 0.5, 0, 0.1]) is None  # a zero signal has no logarithm


def test_model_checks_name_what_would_fit(tmp_path):
    minegan = ModelInfo("minegan/brain", tmp_path, "minegan", "multib", "brain", (0.0, 100.0),
                        (75.0, 850.0, 1000.0), (0.0, 1000.0))
    dc2anet = ModelInfo("dc2anet/brain", tmp_path, "dc2anet", "multib", "brain", (0.0, 100.0), (400.0, 1000.0), None)
    ct2dwi = ModelInfo("ct2dwi/main/jmmdagan", tmp_path, "jmmdagan", "ct2dwi", "brain", (), (1000.0,), None)
    brain = Study("s1", "s1 (DWI)", "brain", tmp_path, dwi=tmp_path / "dwi.nii.gz", acquired_b=[0.0, 100.0, 1000.0])
    ct = Study("s2", "s2 (CT)", "brain", tmp_path, ct=tmp_path / "ct.nii.gz")
    assert check_model_fits(brain, minegan, 640.0) == 640.0
    with pytest.raises(ViewerError, match=r"outside minegan/brain's range \[0, 1000\]"):
        check_model_fits(brain, minegan, 1200.0)
    with pytest.raises(ViewerError, match="400, 1000 only, not 850; any other b needs a MineGAN"):
        check_model_fits(brain, dc2anet, 850.0)
    with pytest.raises(ViewerError, match="needs a CT"):
        check_model_fits(brain, ct2dwi, 1000.0)
    with pytest.raises(ViewerError, match="is a CT"):
        check_model_fits(ct, minegan, 850.0)
    abdomen = Study("s3", "s3 (DWI)", "abdomen", tmp_path, dwi=tmp_path / "dwi.nii.gz", acquired_b=[0.0, 100.0])
    with pytest.raises(ViewerError, match="brain model; s3 .* is abdomen"):
        check_model_fits(abdomen, minegan, 850.0)
    no_b100 = Study("s4", "s4 (DWI)", "brain", tmp_path, dwi=tmp_path / "dwi.nii.gz", acquired_b=[0.0, 1000.0])
    with pytest.raises(ViewerError, match="needs b = 100 as input"):
        check_model_fits(no_b100, minegan, 850.0)


def test_the_model_list_follows_a_retrained_model_pt(tmp_path):
    """A retrain may change what a network reads: the viewer relists instead of feeding it the old inputs."""
    import os

    import torch

    from dwisynth.viewer.server import Viewer

    path = tmp_path / "models/dc2anet/abdomen/model.pt"
    path.parent.mkdir(parents=True)
    record = {"method": "dc2anet", "organ": "abdomen", "input_b": [0.0, 100.0], "target_b": [800.0, 1000.0]}
    torch.save(record, path)
    viewer = Viewer(models_dir=tmp_path / "models", results_dir=tmp_path, config={}, roots=[tmp_path],
                    workspace=tmp_path / "ws", max_upload_bytes=1)
    assert viewer.models()[0].input_b == (0.0, 100.0)
    torch.save({**record, "input_b": [0.0]}, path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert viewer.models()[0].input_b == (0.0,)


TOKEN = "unit-test-token-0123456789"


@pytest.fixture
def served(tmp_path):
    """A viewer with no models or subjects, served on a free loopback port from a thread: (port, its workspace)."""
    import uvicorn

    from dwisynth.viewer.server import Access, Viewer, create_app

    workspace = tmp_path / "ws"
    workspace.mkdir()
    viewer = Viewer(models_dir=tmp_path / "models", results_dir=tmp_path / "results", config={}, roots=[tmp_path],
                    workspace=workspace, max_upload_bytes=2**20, log=lambda message: None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(viewer, Access(TOKEN, "127.0.0.1", port)), host="127.0.0.1",
                                           port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the viewer did not start"
        time.sleep(0.02)
    yield port, workspace
    server.should_exit = True
    thread.join(10)
    viewer._worker.shutdown(wait=True)


def ask(port, method, path, body=None, token=None, host=None, content_type=None, cookie=None):
    """(status, headers, body bytes) of one request; Host is 127.0.0.1:port unless given."""
    headers = {"Host": f"127.0.0.1:{port}" if host is None else host}
    if token:
        headers["Authorization"] = f"token {token}"
    if content_type:
        headers["Content-Type"] = content_type
    if cookie:
        headers["Cookie"] = cookie
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


# with the token each answers as without any access control: the page, a static file, the API's reads, downloads
ROUTES = {("GET", "/"): 200, ("GET", "/static/style.css"): 200, ("GET", "/api/state"): 200,
          ("GET", "/api/jobs/j9"): 404, ("GET", "/api/studies/s9/volumes/synthetic.nii"): 404,
          ("GET", "/api/studies/s9/export?synthesis=r1&format=dicom"): 404}


def test_every_route_needs_the_start_up_token(served):
    port, _ = served
    for (method, path), status in ROUTES.items():
        for token in (None, "wrong-token-0123456789"):
            refused = ask(port, method, path, token=token)
            assert refused[0] == 403 and b"printed at start-up" in refused[2], (path, token, refused)
        assert ask(port, method, path, token=TOKEN)[0] == status, path
    assert ask(port, "GET", "/api/state?token=wrong-token-0123456789")[0] == 403
    assert ask(port, "GET", f"/api/state?token={TOKEN}")[0] == 200  # a script's call: no redirect, no cookie
    for method, path, kind in (("POST", "/api/open", "application/json"),
                               ("POST", "/api/upload?name=a.zip", "application/octet-stream")):
        assert ask(port, method, path, b"{}", content_type=kind)[0] == 403, path


def test_the_start_up_url_leaves_a_strict_httponly_cookie_for_the_page(served):
    port, _ = served
    status, headers, _ = ask(port, "GET", f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"  # the token leaves the address bar
    cookie = headers["set-cookie"]
    name_value = cookie.split(";")[0]
    assert name_value == f"dwisynth-view-{port}={TOKEN}"
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert ask(port, "GET", "/", cookie=name_value)[0] == 200
    assert ask(port, "GET", "/api/state", cookie=name_value)[0] == 200
    assert ask(port, "GET", "/api/state", cookie=f"dwisynth-view-{port}=wrong-token-0123456789")[0] == 403
    assert ask(port, "GET", "/api/state", cookie=f"dwisynth-view-1={TOKEN}")[0] == 403  # another port's viewer


def test_a_foreign_host_is_refused_even_with_the_token(served):
    """DNS rebinding: a page of evil.example whose name now points at 127.0.0.1 still says Host: evil.example."""
    port, _ = served
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
        status, _, body = ask(port, "GET", "/api/state", token=TOKEN, host=host)
        assert status == 403 and b"addressed to it" in body, host
    # the names of loopback, on any port: `ssh -L 9000:127.0.0.1:PORT` makes the browser say localhost:9000
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost:9000"):
        assert ask(port, "GET", "/api/state", token=TOKEN, host=host)[0] == 200, host


def test_bodies_must_declare_the_type_each_endpoint_takes(served):
    """A cross-site form may post text/plain, urlencoded or multipart without a preflight: none is accepted."""
    port, workspace = served
    study = json.dumps({"source": "results", "cohort": "c", "subject": "x"}).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        status, _, body = ask(port, "POST", "/api/open", study, token=TOKEN, content_type=kind)
        assert status == 415 and "application/json" in json.loads(body)["error"], kind
        status, _, body = ask(port, "POST", "/api/upload?name=a.zip", b"PK", token=TOKEN, content_type=kind)
        assert status == 415 and "application/octet-stream" in json.loads(body)["error"], kind
    assert not any(workspace.iterdir())  # refused before anything was written
    status, _, body = ask(port, "POST", "/api/open", study, token=TOKEN, content_type="application/json; charset=utf-8")
    assert status == 202 and json.loads(body)["what"] == "open"  # queued (the subject is then not found)
    status, _, body = ask(port, "POST", "/api/upload?name=a.zip", b"PK", token=TOKEN,
                          content_type="application/octet-stream")
    assert status == 400 and "not a readable zip" in json.loads(body)["error"]  # read, then refused for its content


def test_the_token_is_random_per_start_unless_fixed_long_enough(monkeypatch):
    from dwisynth.viewer.server import TOKEN_ENV, Access, start_token

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    first, second = start_token(), start_token()
    assert first != second and len(first) >= 32
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert start_token() == TOKEN
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ViewerError, match="at least 16"):
        start_token()
    assert Access(TOKEN, "127.0.0.1", 8765).start_url() == f"http://127.0.0.1:8765/?token={TOKEN}"
    everywhere = Access(TOKEN, "0.0.0.0", 8765)  # served to others: addresses and this machine's names only
    assert everywhere.host_allowed("10.1.2.3:8765") and everywhere.host_allowed(f"{socket.gethostname()}:8765")
    assert not everywhere.host_allowed("evil.example:8765")
