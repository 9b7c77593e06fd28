"""Viewer latency: a b-value never asked before, from the page's request to the volume it loads.

Usage: .venv/bin/python bench/viewer.py [RUN_DIR] [--b 125 250 333 550 725 850 990]
       (RUN_DIR defaults to this checkout, after `make demo`)
Starts `dwisynth view` on the run's results (as a user would, in its own process), opens one test-split
subject per organ that has a MineGAN model, and for each b: POST /api/synthesize, poll the job every 20 ms
until done, then GET the synthetic volume the page shows. Writes bench/results/viewer.tsv and prints the
median per organ. The first b per organ is reported apart (model load); it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
TOKEN = secrets.token_urlsafe(32)  # given to the viewer through DWISYNTH_VIEW_TOKEN; every request carries it


def call(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"token {TOKEN}", **({"Content-Type": "application/json"} if data else {})}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                                       headers=headers), timeout=600) as response:
        payload = response.read()
        return json.loads(payload) if "json" in response.headers.get("content-type", "") else payload


def finish(base: str, job: dict) -> dict:
    while job["state"] in ("queued", "running"):
        time.sleep(0.02)
        job = call(f"{base}/api/jobs/{job['id']}")
    if job["state"] != "done":
        raise SystemExit(f"job failed: {job['error']}")
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--b", type=float, nargs="+", default=[125, 250, 333, 550, 725, 850, 990])
    parser.add_argument("--config", type=Path, help="the run's config (default: RUN_DIR/config/demo.yaml)")
    args = parser.parse_args()
    run = args.run.resolve()
    config = (args.config or run / "config/demo.yaml").resolve()
    if not (run / "results/models/minegan").is_dir():
        raise SystemExit(f"no MineGAN models under {run / 'results/models'}: run `make demo` first")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="dwisynth-bench-view-") as tmp, open(Path(tmp) / "view.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "dwisynth.cli", "view", "--port", str(port),
                                   "--config", str(config)], cwd=run,
                                  stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TMPDIR": tmp, "DWISYNTH_VIEW_TOKEN": TOKEN})
        try:
            for _ in range(600):
                try:
                    state = call(f"{base}/api/state")
                    break
                except OSError:
                    time.sleep(0.2)
            else:
                raise SystemExit("the viewer did not start:\n" + (Path(tmp) / "view.log").read_text())
            models = {m["organ"]: m["id"] for m in state["models"] if m["method"] == "minegan"}
            for organ, model in sorted(models.items()):
                subject = next(s for s in state["subjects"] if s["organ"] == organ and s["split"] == "test")
                study = finish(base, call(f"{base}/api/open", {"source": "results", "cohort": subject["cohort"],
                                                              "subject": subject["subject"]}))["result"]
                for n, b in enumerate(args.b):
                    start = time.perf_counter()
                    job = finish(base, call(f"{base}/api/synthesize", {"study": study["id"], "model": model, "b": b}))
                    volume = call(f"{base}/api/studies/{study['id']}/volumes/{job['result']['volumes']['synthetic']}.nii")
                    rows.append({"organ": organ, "subject": f"{subject['cohort']}/sub-{subject['subject']}", "b": b,
                                 "first": n == 0, "latency_s": time.perf_counter() - start,
                                 "server_job_s": job["seconds"], "volume_mb": len(volume) / 2**20})
        finally:
            server.terminate()
            server.wait(30)
    table = pd.DataFrame(rows)
    RESULTS.mkdir(exist_ok=True)
    table.to_csv(RESULTS / "viewer.tsv", sep="\t", index=False, float_format="%.4g")
    later = table[~table["first"]]
    summary = later.groupby("organ").agg(median_latency_s=("latency_s", "median"), max_latency_s=("latency_s", "max"),
                                         median_job_s=("server_job_s", "median"), volume_mb=("volume_mb", "first"))
    summary["first_b_latency_s"] = table[table["first"]].set_index("organ")["latency_s"]
    print(f"== viewer: a new b-value, request to loaded volume ({os.cpu_count()} cores; target < 2 s) ==")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
