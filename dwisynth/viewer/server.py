"""`dwisynth view`: a local web server (Starlette + uvicorn) around `dwisynth.viewer.studies`, with NiiVue in the page.

Opening a study and synthesizing are jobs: one worker runs them in order (a CPU has no room for two syntheses
at once, and a second request must wait, not fail); the page polls a job for its stage. The server logs
method, route and status only: request bodies hold paths, which can hold a patient's name.

Access: 127.0.0.1 on a cluster login node is open to every user logged in there, so every request needs the
token printed in the start-up URL (as Jupyter does), and names this server in its Host header (DNS rebinding).
JSON endpoints take only application/json and uploads only application/octet-stream: a cross-site form can send
neither without a CORS preflight, which this server never grants.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import itertools
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dwisynth.errors import DwisynthError
from dwisynth.viewer import studies
from dwisynth.viewer.studies import UPLOAD_SUFFIXES, ViewerError

STATIC = Path(__file__).parent / "static"
CURVE_POINTS = 21  # b-values the synthetic signal curve is drawn through
TOKEN_ENV = "DWISYNTH_VIEW_TOKEN"  # fixes the token instead of a random one per start (not an option: `ps` shows those)
MIN_TOKEN_CHARS = 16
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})


@dataclass
class Job:
    id: str
    what: str  # "open" | "synthesize"
    state: str = "queued"  # queued -> running -> done | failed
    stage: str = "waiting for the job before it"
    error: str | None = None
    status: int = 200
    result: dict | None = None
    started: float | None = None
    finished: float | None = None

    def describe(self, position: int | None) -> dict:
        out = {"id": self.id, "what": self.what, "state": self.state, "stage": self.stage, "error": self.error,
               "result": self.result}
        if self.state == "queued" and position is not None:
            out["position"] = position
        if self.started and self.finished:
            out["seconds"] = round(self.finished - self.started, 3)
        return out


def _file_stamp(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError:  # removed since it was listed: list_models will leave it out
        return (str(path), None, None)
    return (str(path), stat.st_mtime_ns, stat.st_size)


@dataclass
class Viewer:
    """The server's state: models, opened studies, the job queue and the workspace they write into."""

    models_dir: Path
    results_dir: Path
    config: dict
    roots: list[Path]
    workspace: Path
    max_upload_bytes: int
    log: callable = print
    studies: dict = field(default_factory=dict)
    jobs: dict = field(default_factory=dict)
    _models: list | None = None
    _models_stamp: tuple = ()
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "dwisynth-view"))
    _queue: list = field(default_factory=list)
    startup_job: Job | None = None  # the study named on the command line, opened as the page loads

    def next_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}{next(self._ids)}"

    def models(self) -> list[studies.ModelInfo]:
        # relisted when any model.pt is added, removed or rewritten: a retrained network may take other inputs
        stamp = tuple(_file_stamp(p) for p in sorted(Path(self.models_dir).rglob("model.pt")))
        if self._models is None or stamp != self._models_stamp:
            self._models, self._models_stamp = studies.list_models(self.models_dir), stamp
        return self._models

    def model(self, model_id: str) -> studies.ModelInfo:
        for model in self.models():
            if model.id == model_id:
                return model
        raise ViewerError(f"no model {model_id!r} under {self.models_dir}", 404)

    def study(self, study_id: str) -> studies.Study:
        if study_id not in self.studies:
            raise ViewerError(f"no open study {study_id!r}; open it first", 404)
        return self.studies[study_id]

    def allowed(self, path_text: str) -> Path:
        """The path if it lies under one of the allowed roots (after resolving links), else a 403."""
        path = Path(path_text).expanduser()
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            raise ViewerError(f"{path_text}: outside the folders this viewer may read "
                              f"({', '.join(map(str, self.roots))}); start it with --root to allow another", 403)
        return resolved

    def submit(self, what: str, run) -> Job:
        """Queue run(job) -> result dict on the one worker; return the job at once."""
        job = Job(self.next_id("j"), what)
        with self._lock:
            self.jobs[job.id] = job
            self._queue.append(job.id)

        def work():
            job.state, job.started, job.stage = "running", time.perf_counter(), "started"
            try:
                job.result = run(job)
                job.state, job.stage = "done", "done"
            except DwisynthError as exc:
                job.state, job.error, job.status = "failed", str(exc), getattr(exc, "status", 400)
                self.log(f"[view] job {job.id} ({what}) refused: {exc.__class__.__name__}")
            except Exception as exc:  # a bug: the page says so, the log gets the trace without the message
                job.state, job.error, job.status = "failed", f"internal error ({exc.__class__.__name__}); " \
                    "see the server's terminal", 500
                self.log(f"[view] job {job.id} ({what}) crashed:\n"
                         + "".join(traceback.format_tb(exc.__traceback__)) + exc.__class__.__name__)
            finally:
                job.finished = time.perf_counter()
                with self._lock:
                    self._queue.remove(job.id)
            if job.state == "done":
                self.log(f"[view] job {job.id} ({what}) done in {job.finished - job.started:.2f} s")

        self._worker.submit(work)
        return job

    def position(self, job_id: str) -> int | None:
        with self._lock:
            return self._queue.index(job_id) if job_id in self._queue else None

    # --- jobs ---------------------------------------------------------------------------------------
    def open_results(self, cohort: str, subject: str) -> Job:
        def run(job):
            study_id = self.next_id("s")
            job.stage = "reading the subject's preprocessed images"
            study = studies.open_results_subject(self.results_dir, cohort, subject, study_id,
                                                 self.workspace / study_id)
            self.studies[study_id] = study
            return self.describe_study(study)

        return self.submit("open", run)

    def open_path(self, path: Path, organ: str | None, label: str | None = None) -> Job:
        def run(job):
            study_id = self.next_id("s")
            folder = self.workspace / study_id

            def stage(message):
                job.stage = message.split(": ", 1)[-1]
                self.log(message)

            try:
                study = studies.open_path(path, organ, self.config, study_id, folder, log=stage)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)  # nothing half-made stays
                raise
            if label:
                study.label = f"{label} {study.label}"
            self.studies[study_id] = study
            return self.describe_study(study)

        return self.submit("open", run)

    def synthesize(self, study_id: str, model_id: str, b: float) -> Job:
        study, model = self.study(study_id), self.model(model_id)
        studies.check_model_fits(study, model, float(b))  # refuse at once, before queueing

        def run(job):
            job.stage = f"synthesizing b = {float(b):g} with {model.id}" + ("" if model.task == "ct2dwi" else
                                                                           ", fitting its ADC")
            synthesis = studies.synthesize(study, model, float(b), self.next_id("r"), self.config)
            return {"study": study.id, **synthesis.describe()}

        return self.submit("synthesize", run)

    def describe_study(self, study: studies.Study) -> dict:
        fitting = [m.id for m in self.models()
                   if (m.task == "ct2dwi" and study.ct is not None)
                   or (m.task != "ct2dwi" and study.dwi is not None and (not study.organ or m.organ == study.organ))]
        return {**study.describe(), "models": fitting}


def start_token() -> str:
    """DWISYNTH_VIEW_TOKEN where set (for a URL that survives restarts), else a new random token per start."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        return secrets.token_urlsafe(32)
    if len(token) < MIN_TOKEN_CHARS:
        raise ViewerError(f"{TOKEN_ENV} has {len(token)} characters: give at least {MIN_TOKEN_CHARS} (python -c "
                          "'import secrets; print(secrets.token_urlsafe())'), or unset it for a random token")
    return token


def _hostname(host_header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8765" -> "::1", "localhost:8765" -> "localhost"."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0].lower()
    return host_header.rsplit(":", 1)[0].lower()


@functools.cache
def _machine_names() -> frozenset:
    """This machine's names, looked up once (getfqdn may ask DNS)."""
    return frozenset({socket.gethostname().lower(), socket.getfqdn().lower()})


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Access:
    """Who may use a viewer: requests that carry its token and are addressed to a name of the address it serves."""

    token: str
    host: str  # the address it listens on (--host)
    port: int

    @property
    def cookie(self) -> str:
        return f"dwisynth-view-{self.port}"  # browsers share cookies across ports: one name per viewer

    def start_url(self) -> str:
        shown = socket.getfqdn() if self.host in ANY_ADDRESS else self.host
        shown = f"[{shown}]" if ":" in shown else shown
        return f"http://{shown}:{self.port}/?token={quote(self.token, safe='')}"

    def host_allowed(self, host_header: str) -> bool:
        # The port is not compared: behind `ssh -L 9000:127.0.0.1:8765` the browser says localhost:9000. A DNS
        # rebinding page cannot choose the name, and the name is what is checked.
        name = _hostname(host_header)
        if name in LOOPBACK_NAMES or name == self.host.lower():
            return True
        if self.host in ANY_ADDRESS:  # served to others: this machine's names, or an address (no DNS to rebind)
            return name in _machine_names() or _is_ip_address(name)
        return False

    def token_presented(self, request: Request) -> bool:
        """Whether the request carries the token: ?token=, `Authorization: token ...` or the page's cookie."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        presented = [request.query_params.get("token"), value.strip() if scheme.lower() == "token" else None,
                     request.cookies.get(self.cookie)]
        return any(hmac.compare_digest(text.encode(), self.token.encode()) for text in presented if text)


class AccessGuard:
    """ASGI middleware: every request (the page, static files, API, uploads, downloads) passes `Access` before any
    route sees it; the Host header first."""

    def __init__(self, app, access: Access, log=print):
        self.app, self.access, self.log = app, access, log

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # the viewer serves no websocket
            await send({"type": "websocket.close", "code": 1008})
            return
        request = Request(scope)
        if not self.access.host_allowed(request.headers.get("host", "")):
            response = self.refuse(request, "wrong Host", "this viewer answers only requests addressed to it")
        elif not self.access.token_presented(request):
            response = self.refuse(request, "no valid token", "this viewer needs its token")
        elif request.url.path == "/" and "token" in request.query_params:
            # the cookie lets the page's own requests (fetch, NiiVue, download links) through; the redirect takes
            # the token out of the address bar and the history
            response = RedirectResponse("/", 303)
            response.set_cookie(self.access.cookie, self.access.token, httponly=True, samesite="strict")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def refuse(self, request: Request, reason: str, message: str) -> Response:
        self.log(f"[view] {request.method} {request.url.path} -> 403 ({reason})")
        return PlainTextResponse(f"{message}: open the URL that `dwisynth view` printed at start-up "
                                 "(http://...:PORT/?token=...)\n", 403)


def _require_media_type(request: Request, expected: str) -> None:
    """415 unless the body is declared as `expected`: a cross-site form sends text/plain, urlencoded or multipart
    bodies without a CORS preflight, and those are never what an endpoint takes."""
    declared = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if declared != expected:
        raise ViewerError(f"{request.url.path} takes a body of Content-Type {expected}, not {declared or 'none'}",
                          415)


def _json_body(request_body: dict, *keys: str) -> list:
    missing = [k for k in keys if request_body.get(k) in (None, "")]
    if missing:
        raise ViewerError(f"request lacks {', '.join(missing)}")
    return [request_body[k] for k in keys]


def create_app(viewer: Viewer, access: Access) -> Starlette:
    async def body(request: Request) -> dict:
        _require_media_type(request, "application/json")
        try:
            data = await request.json()
        except ValueError as exc:
            raise ViewerError("the request body is not JSON") from exc
        if not isinstance(data, dict):
            raise ViewerError("the request body must be a JSON object")
        return data

    async def index(request):
        return FileResponse(STATIC / "index.html")

    async def state(request):
        return JSONResponse({"models": [m.describe() for m in viewer.models()],
                             "subjects": studies.results_subjects(viewer.results_dir),
                             "studies": [viewer.describe_study(s) for s in viewer.studies.values()],
                             "roots": [str(r) for r in viewer.roots],
                             "startup_job": viewer.startup_job.describe(viewer.position(viewer.startup_job.id))
                             if viewer.startup_job else None,
                             "max_upload_mb": viewer.max_upload_bytes // 2**20})

    async def open_study(request):
        data = await body(request)
        if data.get("source") == "results":
            cohort, subject = _json_body(data, "cohort", "subject")
            job = viewer.open_results(str(cohort), str(subject))
        else:
            (path_text,) = _json_body(data, "path")
            job = viewer.open_path(viewer.allowed(str(path_text)), data.get("organ") or None)
        return JSONResponse(job.describe(viewer.position(job.id)), 202)

    async def upload(request):
        _require_media_type(request, "application/octet-stream")
        name = Path(request.query_params.get("name", "")).name
        if not name.endswith(UPLOAD_SUFFIXES):
            raise ViewerError(f"upload {name!r}: send a .zip (a DICOM series folder, or a NIfTI with its .bval) or "
                              "a CT NIfTI (.nii, .nii.gz)")
        limit = viewer.max_upload_bytes
        declared = request.headers.get("content-length")
        if declared is not None and int(declared) > limit:  # refused before one byte is read
            raise ViewerError(f"upload of {int(declared) / 2**20:.0f} MiB refused: the viewer accepts up to "
                              f"{limit / 2**20:.0f} MiB (dwisynth view --max-upload-mb)", 413)
        folder = Path(tempfile.mkdtemp(prefix="upload-", dir=viewer.workspace))
        target, size = folder / name, 0
        try:
            with open(target, "wb") as handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ViewerError(f"upload larger than the {limit / 2**20:.0f} MiB the viewer accepts "
                                          "(dwisynth view --max-upload-mb)", 413)
                    handle.write(chunk)
            path = studies.unpack_upload(target, folder / "unpacked", limit)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = viewer.open_path(path, request.query_params.get("organ") or None, label="upload")
        return JSONResponse(job.describe(viewer.position(job.id)), 202)

    async def synthesize(request):
        data = await body(request)
        study_id, model_id, b = _json_body(data, "study", "model", "b")
        try:
            b = float(b)
        except (TypeError, ValueError) as exc:
            raise ViewerError(f"b = {b!r} is not a number") from exc
        job = viewer.synthesize(str(study_id), str(model_id), b)
        return JSONResponse(job.describe(viewer.position(job.id)), 202)

    async def job_state(request):
        job = viewer.jobs.get(request.path_params["job"])
        if job is None:
            raise ViewerError(f"no job {request.path_params['job']!r}", 404)
        return JSONResponse(job.describe(viewer.position(job.id)), job.status if job.state == "failed" else 200)

    # the reading endpoints are sync: Starlette runs them in its thread pool, off the event loop
    def volume(request):
        study = viewer.study(request.path_params["study"])
        name = request.path_params["name"].removesuffix(".nii")
        files = study.display_files()
        if name not in files:
            raise ViewerError(f"{study.id} has no volume {name!r}", 404)
        return FileResponse(files[name], media_type="application/octet-stream")

    def _synthesis(study, request, needed_for: str | None = None):
        """The synthesis the request names (None if it names none and needed_for is None)."""
        synthesis_id = request.query_params.get("synthesis")
        if not synthesis_id:
            if needed_for:
                raise ViewerError(f"synthesize first: {needed_for}")
            return None
        if synthesis_id not in study.syntheses:
            raise ViewerError(f"{study.id} has no synthesis {synthesis_id!r}", 404)
        return study.syntheses[synthesis_id]

    def _voxel(request):
        try:
            return [int(request.query_params[k]) for k in ("i", "j", "k")]
        except (KeyError, ValueError) as exc:
            raise ViewerError("give the voxel as integers i, j, k") from exc

    def voxel(request):
        study = viewer.study(request.path_params["study"])
        synthesis = _synthesis(study, request)
        curve_b = None
        if synthesis is not None and synthesis.model.b_range:
            lo, hi = synthesis.model.b_range
            curve_b = [lo + (hi - lo) * n / (CURVE_POINTS - 1) for n in range(CURVE_POINTS)]
        elif synthesis is not None:
            curve_b = list(synthesis.model.trained_b)
        return JSONResponse(studies.voxel_values(study, synthesis, _voxel(request), curve_b))

    def roi(request):
        study = viewer.study(request.path_params["study"])
        synthesis = _synthesis(study, request, "the ROI measures the synthetic ADC")
        try:
            radius = float(request.query_params.get("radius", 3))
        except ValueError as exc:
            raise ViewerError("radius must be a number of voxels") from exc
        return JSONResponse(studies.roi_adc(study, synthesis, _voxel(request), radius))

    def export(request):
        study = viewer.study(request.path_params["study"])
        synthesis = _synthesis(study, request, "export writes a synthesis")
        fmt = request.query_params.get("format", "nifti")
        if fmt not in ("nifti", "dicom"):
            raise ViewerError(f"export format {fmt!r} unknown; use nifti or dicom")
        out = study.folder / "export" / f"{study.id}_{synthesis.id}_{fmt}.zip"
        out.parent.mkdir(parents=True, exist_ok=True)
        studies.export(study, synthesis, fmt, out)
        return FileResponse(out, media_type="application/zip", filename=out.name)

    routes = [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/open", open_study, methods=["POST"]),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/synthesize", synthesize, methods=["POST"]),
        Route("/api/jobs/{job}", job_state),
        Route("/api/studies/{study}/volumes/{name}", volume),
        Route("/api/studies/{study}/voxel", voxel),
        Route("/api/studies/{study}/roi", roi),
        Route("/api/studies/{study}/export", export),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def refused(request, exc: ViewerError):
        viewer.log(f"[view] {request.method} {request.url.path} -> {exc.status} ({exc.__class__.__name__})")
        return JSONResponse({"error": str(exc)}, exc.status)

    async def dwisynth_error(request, exc: DwisynthError):
        viewer.log(f"[view] {request.method} {request.url.path} -> 400 ({exc.__class__.__name__})")
        return JSONResponse({"error": str(exc)}, 400)

    return Starlette(routes=routes, exception_handlers={ViewerError: refused, DwisynthError: dwisynth_error},
                     middleware=[Middleware(AccessGuard, access=access, log=viewer.log)])


def warm_up() -> dict:
    """Import what opening and synthesizing use (ANTs, SimpleITK, MONAI: seconds on a cold start)."""
    import dwisynth.ct2dwi  # noqa: F401
    import dwisynth.inference  # noqa: F401
    import dwisynth.preprocess.steps  # noqa: F401
    import dwisynth.synthesis  # noqa: F401

    return {}


def serve(models_dir: Path, results_dir: Path, config: dict, roots: list[Path], host: str = "127.0.0.1",
          port: int = 8765, max_upload_mb: int = 1024, open_study: str | None = None, workspace: Path | None = None):
    """Run the viewer until Ctrl-C; its workspace (every converted or synthesized file) is removed at the end."""
    import uvicorn

    access = Access(start_token(), host, port)
    own_workspace = workspace is None
    workspace = Path(workspace or tempfile.mkdtemp(prefix="dwisynth-view-"))
    viewer = Viewer(models_dir, results_dir, config, [r.resolve() for r in roots], workspace, max_upload_mb * 2**20)
    print(f"[view] {len(viewer.models())} models from {models_dir}; "
          f"{len(studies.results_subjects(results_dir))} subjects in {results_dir}; "
          f"reads files under {', '.join(map(str, viewer.roots))}")
    viewer.submit("warm-up", lambda job: warm_up())  # the first synthesis should not pay for the imports
    if open_study:
        if "/" in open_study and not Path(open_study).exists():
            cohort, subject = open_study.split("/", 1)
            viewer.startup_job = viewer.open_results(cohort, subject.removeprefix("sub-"))
        else:
            viewer.startup_job = viewer.open_path(viewer.allowed(open_study), None)
    if host in LOOPBACK_NAMES:
        print(f"[view] from your own computer: run `ssh -N -L {port}:127.0.0.1:{port} {socket.gethostname()}` there, "
              "then open the URL below in its browser")
    print(f"[view] open {access.start_url()} in a browser (Ctrl-C stops the viewer)", flush=True)
    try:
        uvicorn.run(create_app(viewer, access), host=host, port=port, access_log=False, log_level="warning")
    finally:
        viewer._worker.shutdown(wait=False, cancel_futures=True)
        if own_workspace:
            shutil.rmtree(workspace, ignore_errors=True)
