"""results/report.html: one self-contained page (figures embedded) a reader understands without a TSV.

Figures are also written as PNG under results/figures/. Figure functions take tables and
arrays; `write_report` does the file reading.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from dwisynth.networks.base import method_labels

# The acquisition first, then the registry's networks and the baselines, in registration order.
METHOD_LABEL = {"acquired": "acquired", **method_labels()}
METHOD_ORDER = list(METHOD_LABEL)
MISSING = "—"  # a cell with no value (a method that does not synthesize that b), where pandas would print NaN


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ordered(methods):
    return sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))


def metric_vs_b_figure(summary: pd.DataFrame):
    """Mean PSNR and SSIM (95% CI) against b, one line per method."""
    plt = _plt()
    table = summary[(summary["analysis"] == "image metrics") & (summary["grouping"] == "method x b")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, unit in zip(axes, ("psnr", "ssim"), ("dB", "")):
        rows = table[table["metric"] == metric]
        for method in _ordered(rows["method"].unique()):
            r = rows[rows["method"] == method].sort_values("b_value")
            err = np.vstack([r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]])
            ax.errorbar(r["b_value"], r["mean"], yerr=np.nan_to_num(err), marker="o", capsize=3,
                        label=METHOD_LABEL.get(method, method), linestyle="--" if method == "noisefree" else "-")
        ax.set_xlabel("b (s/mm²)")
        ax.set_ylabel(f"{metric.upper()} {unit}".strip())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Image quality against b (mean over test subjects, 95% CI)")
    fig.tight_layout()
    return fig


def image_grid_figure(images: dict[str, np.ndarray], bvals, title: str, window: list[float]):
    """Rows: acquired and each method; columns: target b. images[method]: (H, W, n_b) slices."""
    plt = _plt()
    methods = _ordered(images)
    fig, axes = plt.subplots(len(methods), len(bvals), figsize=(1.9 * len(bvals), 1.9 * len(methods)), squeeze=False)
    for i, method in enumerate(methods):
        for j, b in enumerate(bvals):
            ax = axes[i, j]
            ax.imshow(np.rot90(images[method][..., j]), cmap="gray", vmin=0, vmax=window[j])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"b = {b:g}", fontsize=9)
            if j == 0:
                ax.set_ylabel(METHOD_LABEL.get(method, method), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def adc_maps_figure(maps: dict[str, np.ndarray], title: str, vmax: float = 3.0):
    plt = _plt()
    names = _ordered(maps)
    fig, axes = plt.subplots(1, len(names), figsize=(2.2 * len(names), 2.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        shown = ax.imshow(np.rot90(maps[name]), cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(METHOD_LABEL.get(name, name), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(shown, ax=axes[0].tolist(), shrink=0.8, label="ADC (x10⁻³ mm²/s)")
    fig.suptitle(title, fontsize=10)
    return fig


def bland_altman_figure(adc: pd.DataFrame):
    """Synthetic vs acquired mean ADC per subject: difference against mean, with the 95% limits."""
    plt = _plt()
    methods = _ordered(adc["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(3.3 * len(methods), 3.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        t = adc[adc["method"] == method]
        mean = (t["adc_synthetic"] + t["adc_acquired"]) / 2
        diff = t["adc_synthetic"] - t["adc_acquired"]
        for k, organ in enumerate(sorted(t["organ"].unique())):
            pick = (t["organ"] == organ).to_numpy()
            color = f"C{k}"
            ax.scatter(mean[pick], diff[pick], s=18, label=organ, color=color)
            if pick.sum() >= 2:  # limits per organ: organs with ADC 0.8 and 2 are different populations
                md, sd = diff[pick].mean(), diff[pick].std(ddof=1)
                span = [mean[pick].min(), mean[pick].max()]
                for y, style in ((md, "-"), (md - 1.96 * sd, "--"), (md + 1.96 * sd, "--")):
                    ax.plot(span, [y, y], color=color, linestyle=style, linewidth=0.8)
        ax.set_title(METHOD_LABEL.get(method, method), fontsize=9)
        ax.set_xlabel("mean ADC (x10⁻³ mm²/s)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("synthetic - acquired")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Bland-Altman per organ: ADC from synthetic vs acquired images (organ mask where the acquired b0 "
                 "SNR reaches adc.roi_min_snr, per test subject; mean difference and 95% limits of each organ)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def training_curves_figure(logs: dict[tuple[str, str], pd.DataFrame]):
    """Per method: the voxel L1 of the batches (top) and the validation PSNR (bottom, the exported step ringed)."""
    plt = _plt()
    methods = sorted({m for m, _ in logs})
    fig, axes = plt.subplots(2, len(methods), figsize=(4.5 * len(methods), 6.0), squeeze=False)
    for column, method in enumerate(methods):
        loss_ax, val_ax = axes[0][column], axes[1][column]
        for (m, organ), log in sorted(logs.items()):
            if m != method:
                continue
            if "voxel_l1" in log:
                rows = log.dropna(subset=["voxel_l1"])
                loss_ax.plot(rows["step"], rows["voxel_l1"], label=organ)
            if "val_psnr" in log:
                rows = log.dropna(subset=["val_psnr"])
                line, = val_ax.plot(rows["step"], rows["val_psnr"], label=organ)
                best = rows.loc[rows["val_psnr"].idxmax()]
                val_ax.plot(best["step"], best["val_psnr"], "o", mfc="none", color=line.get_color())
        loss_ax.set_title(f"{METHOD_LABEL.get(method, method)}: voxel L1 (network scale)", fontsize=9)
        loss_ax.set_yscale("log")
        val_ax.set_title("validation PSNR (dB, held-out train subject); o = exported", fontsize=9)
        val_ax.set_xlabel("step")
        for ax in (loss_ax, val_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def stopped_runs_note(logs: dict[tuple[str, str], pd.DataFrame]) -> str:
    """The runs the trainer stopped for divergence, from their logs' `stopped` rows."""
    stopped = [f"<li>{html.escape(METHOD_LABEL.get(m, m))} {html.escape(organ)}: {html.escape(str(reason))}</li>"
               for (m, organ), log in sorted(logs.items()) if "stopped" in log
               for reason in log["stopped"].dropna()]
    if not stopped:
        return ""
    return ("<p><b>Stopped early</b> (divergence; the best validated weights were exported):</p><ul>"
            + "".join(stopped) + "</ul>")


def _embed(fig, name: str, figures_dir: Path) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    figures_dir.mkdir(parents=True, exist_ok=True)
    (figures_dir / f"{name}.png").write_bytes(buffer.getvalue())
    _plt().close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'


def _html_table(table: pd.DataFrame, index: bool = True) -> str:
    """A table as the report shows it: numbers to 3 significant digits, a missing value as a dash."""
    return table.to_html(classes="table", border=0, index=index, na_rep=MISSING, float_format=lambda v: f"{v:.3g}")


def _fmt_ci(row) -> str:
    if not np.isfinite(row["mean"]):
        return MISSING
    if np.isfinite(row["ci_low"]):
        return f"{row['mean']:.3g} ({row['ci_low']:.3g}–{row['ci_high']:.3g})"
    return f"{row['mean']:.3g}"


def comparison_table(summary: pd.DataFrame, metric: str) -> str:
    t = summary[(summary["analysis"] == "image metrics") & (summary["grouping"] == "method x b")
                & (summary["metric"] == metric)].copy()
    if t.empty:
        return "<p>No scores.</p>"
    t["value"] = t.apply(_fmt_ci, axis=1)
    wide = t.pivot_table(index="method", columns="b_value", values="value", aggfunc="first")
    wide = wide.loc[_ordered(wide.index)]
    wide.index = [METHOD_LABEL.get(m, m) for m in wide.index]
    wide.columns = [f"b = {b:g}" for b in wide.columns]
    return _html_table(wide)


def agreement_table(summary: pd.DataFrame) -> str:
    """Pooled over organs: mean difference, difference tests and TOST equivalence; per organ: also
    Bland-Altman limits and ICC."""
    t = summary[summary["analysis"] == "ADC agreement"]
    if t.empty:
        return "<p>No ADC agreement computed.</p>"
    margin = t["tost_margin"].dropna()
    margin_text = f"±{margin.iloc[0]:g}" if len(margin) else "the margin"
    tests = {"n": "subjects", "mean_difference": "mean difference", "p_ttest": "paired t p",
             "p_wilcoxon": "Wilcoxon p", "p_tost": f"TOST p ({margin_text})", "equivalent": "equivalent"}
    agreement = {"loa_low": "LoA low", "loa_high": "LoA high", "icc": "ICC(2,1)", "icc_label": "Koo & Li"}
    blocks = []
    for grouping, cols, caption in (
            ("method", {"method": "method", **tests}, "All organs pooled (difference and equivalence tests)"),
            ("method x organ", {"method": "method", "organ": "organ", **tests, **agreement}, "Per organ")):
        rows = t[t["grouping"] == grouping]
        if rows.empty:
            continue
        out = rows[list(cols)].rename(columns=cols)
        out["method"] = out["method"].map(lambda m: METHOD_LABEL.get(m, m))
        blocks.append(f"<h3>{caption}</h3>" + _html_table(out, index=False))
    note = (f"<p class='caption'>x10⁻³ mm²/s. A paired test's p &gt; 0.05 does not show agreement; "
            f"<em>equivalent</em> means TOST p &lt; 0.05 for a mean difference within {margin_text} "
            "(the seed paper's bound).</p>")
    return "".join(blocks) + note


CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
img{max-width:100%;display:block;margin:.6em 0}.table{border-collapse:collapse;font-size:.88em}
.table td,.table th{padding:.25em .6em;border-bottom:1px solid #e3e3e3;text-align:right}
.caption{color:#555;font-size:.9em}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.8em}"""


def render(sections: list[tuple[str, str]], title: str) -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _middle_slice(mask: np.ndarray) -> int:
    return int(np.argmax(mask.reshape(-1, mask.shape[-1]).sum(0)))


def example_figures(records: list[dict], targets, figures_dir: Path) -> list[str]:
    """Per organ, the test subject that acquired the most of `targets` (trained and held-out b): real vs
    synthetic at each of them, and the ADC maps. A method that does not synthesize a b leaves its cell empty."""
    from dwisynth.io import load_dwi, load_map, load_mask

    wanted = {float(b) for b in targets}

    def acquired_count(record):
        return len(wanted & {float(b) for b in np.loadtxt(record["acquired"][1], ndmin=1)})

    blocks, seen_organs = [], set()
    for record in sorted(records, key=acquired_count, reverse=True):
        if record["organ"] in seen_organs or not record["synth"]:
            continue
        seen_organs.add(record["organ"])
        acquired, acquired_b = load_dwi(*record["acquired"])
        mask = load_mask(record["mask"])
        z = _middle_slice(mask)
        acq_b = [float(b) for b in acquired_b]
        shown_b = sorted(float(b) for b in targets if float(b) in acq_b)
        images = {"acquired": acquired[:, :, z][..., [acq_b.index(b) for b in shown_b]]}
        maps = {"acquired": load_map(record["adc"])[:, :, z]}
        for method, (dwi, bval, adc) in record["synth"].items():
            pred, pred_b = load_dwi(dwi, bval)
            pb = [float(b) for b in pred_b]
            empty = np.full(pred.shape[:2], np.nan, np.float32)
            images[method] = np.stack([pred[:, :, z, pb.index(b)] if b in pb else empty for b in shown_b], -1)
            maps[method] = load_map(adc)[:, :, z]
        window = [float(np.percentile(images["acquired"][..., j][mask[:, :, z]], 99.5)) or 1.0
                  for j in range(len(shown_b))]
        subject = record["subject"]
        grid = image_grid_figure(images, shown_b, f"{record['organ']}: sub-{subject}, slice {z} (test subject)",
                                 window)
        adc_fig = adc_maps_figure(maps, f"{record['organ']}: ADC maps, sub-{subject}, slice {z}")
        blocks.append(f"<h3>{html.escape(record['organ'])}</h3>"
                      + _embed(grid, f"grid_{record['organ']}", figures_dir)
                      + "<p class='caption'>Each column shares one display window (the acquired image's "
                        "99.5th percentile in the mask). The noise-free row is the demo's truth.</p>"
                      + _embed(adc_fig, f"adc_{record['organ']}", figures_dir))
    return blocks


def ct2dwi_figure(ct: np.ndarray, images: dict[str, np.ndarray], lesion: np.ndarray | None, title: str,
                  window: float, hu_window=(0.0, 80.0)):
    """One row: the CT (brain window), the acquired DWI and each method's synthesis, the lesion outlined."""
    plt = _plt()
    panels = [("CT", ct, hu_window)] + [(METHOD_LABEL.get(m, m), img, (0.0, window)) for m, img in images.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels), 2.6))
    for ax, (name, image, (low, high)) in zip(np.atleast_1d(axes), panels):
        ax.imshow(np.rot90(image), cmap="gray", vmin=low, vmax=high)
        if lesion is not None and lesion.any():
            ax.contour(np.rot90(lesion.astype(float)), levels=[0.5], colors="#ff3b30", linewidths=0.8)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _ct2dwi_summary_table(summary: pd.DataFrame) -> str:
    metrics = ["psnr", "ssim", "superpixel_r", "lesion_psnr", "lesion_ssim", "lesion_contrast"]
    t = summary[(summary["analysis"] == "image metrics") & (summary["grouping"] == "method x b")
                & (summary["task"] == "ct2dwi") & summary["metric"].isin(metrics)].copy()
    if t.empty:
        return "<p>No CT -> DWI scores.</p>"
    t["value"] = t.apply(_fmt_ci, axis=1)
    wide = t.pivot_table(index="method", columns="metric", values="value", aggfunc="first")
    wide = wide.loc[_ordered(wide.index), [m for m in metrics if m in wide.columns]]
    wide.index = [METHOD_LABEL.get(m, m) for m in wide.index]
    return _html_table(wide)


def ct2dwi_section(summary: pd.DataFrame, records: list[dict], tables: dict[str, str], figures_dir: Path,
                   hu_window=(0.0, 80.0)) -> str:
    """The CT -> DWI results: scores of main's methods, each test subject's images with the lesion outlined,
    and the experiment grids (ablation deltas, sensitivity, cross-center drop) with parameters and wall time."""
    from dwisynth.ct2dwi import load_lesion_mask
    from dwisynth.io import load_dwi, load_map, load_mask

    parts = ["<p>DWI at b = 1000 synthesized from the CT on the DWI grid and a brain mask computed from that CT. "
             "Scores inside the HD-BET DWI brain mask; lesion scores on the same scale inside the lesion; lesion "
             "contrast = (lesion / rest of brain) synthetic over acquired (1 is faithful). Every method trained "
             "for the same steps with the same lr, batch and crop; the paired comparison is with pix2pix "
             "(summary.tsv). Mean (95% CI) over test subjects:</p>", _ct2dwi_summary_table(summary)]
    for r in records:
        acquired, acquired_b = load_dwi(*r["acquired"])
        b = [float(v) for v in acquired_b]
        reference = acquired[..., b.index(1000.0)] if 1000.0 in b else acquired[..., -1]
        mask = load_mask(r["mask"])
        lesion = load_lesion_mask(r["lesion"], r["acquired"][0], r["subject"]) if r.get("lesion") else None
        z = int(np.argmax(lesion.reshape(-1, lesion.shape[-1]).sum(0))) if lesion is not None and lesion.any() \
            else _middle_slice(mask)
        images = {"acquired": reference[:, :, z]}
        for method, (dwi, bval) in r["synth"].items():
            images[method] = load_dwi(dwi, bval)[0][:, :, z, 0]
        window = float(np.percentile(reference[:, :, z][mask[:, :, z]], 99.5)) if mask[:, :, z].any() else 1.0
        fig = ct2dwi_figure(load_map(r["ct"])[:, :, z], images, None if lesion is None else lesion[:, :, z],
                            f"sub-{r['subject']} ({r['center']}), slice {z}", window, hu_window)
        parts.append(_embed(fig, f"ct2dwi_{r['subject']}", figures_dir))
    captions = {"ablation": "Ablations: JMMDA-GAN with one module off; _vs_main = the cell minus main's JMMDA-GAN",
                "sensitivity": "Sensitivity: wavelet x attention heads",
                "crosscenter": "Cross-center: trained on one center, scored in-center and cross-center",
                "compute": "Parameters (inference network) and training wall time (s, this machine)"}
    for name, path in tables.items():
        if path and Path(path).is_file():
            table = pd.read_csv(path, sep="\t")
            parts.append(f"<h3>{html.escape(captions.get(name, name))}</h3>" + _html_table(table, index=False))
    return "".join(parts)


def write_report(out_html, figures_dir, summary_path, metrics_path, adc_path, records: list[dict], targets,
                 training_logs: dict, provenance_path, reader_scores_path=None, ct2dwi: dict | None = None) -> None:
    """Assemble the report from the tables, the example subjects, the training logs and the provenance.

    ct2dwi: {"records": the main experiment's test subjects (as `score_ct2dwi` gets them, plus `ct`),
    "tables": {name: path}, "hu_window"} for the CT -> DWI section."""
    figures_dir = Path(figures_dir)
    full_summary = pd.read_csv(summary_path, sep="\t")
    summary = full_summary[full_summary["task"] != "ct2dwi"]  # the multi-b sections; CT -> DWI has its own
    metrics = pd.read_csv(metrics_path, sep="\t", dtype={"slice": str})
    metrics = metrics[metrics["task"] != "ct2dwi"]
    adc = pd.read_csv(adc_path, sep="\t")
    provenance = json.loads(Path(provenance_path).read_text())
    volumes = metrics[metrics["slice"] == "volume"]
    n_subjects = len(volumes[["cohort", "subject"]].drop_duplicates())
    intro = (f"<p>{n_subjects} test subjects, {volumes['organ'].nunique()} organs, methods: "
             f"{', '.join(METHOD_LABEL.get(m, m) for m in _ordered(volumes['method'].unique()))}. "
             "Every method sees the same input b-values and is scored against the same acquired images inside "
             "the organ mask. PSNR/SSIM use data range 1 after dividing both images by the acquired image's "
             "99.5th percentile in the mask. The noise-free reference is the demo's truth scored like a method: a "
             "reference point, not a bound (under Rician noise the MSE-optimal prediction is the Rician mean). "
             "The legacy PSNR is our reconstruction of the seed paper's convention (the whole slice in 8 bits, "
             "20 log10(255²) - 10 log10(MSE), 48.13 dB above an 8-bit PSNR); that the paper used it is a "
             "hypothesis. Set it beside published numbers, not beside ours.</p>")
    sections = [("What was run", intro),
                ("Image quality", _embed(metric_vs_b_figure(summary), "metrics_vs_b", figures_dir)
                 + "<h3>PSNR (dB), mean (95% CI)</h3>" + comparison_table(summary, "psnr")
                 + "<h3>SSIM, mean (95% CI)</h3>" + comparison_table(summary, "ssim")
                 + "<h3>Legacy PSNR (seed-paper convention)</h3>" + comparison_table(summary, "psnr_legacy")
                 + "<h3>Superpixel gray-level correlation r</h3>" + comparison_table(summary, "superpixel_r"))]
    sections.append(("Real vs synthetic images and ADC maps", "\n".join(example_figures(records, targets,
                                                                                         figures_dir))))
    agreement = agreement_table(summary)
    if len(adc):
        agreement = _embed(bland_altman_figure(adc), "bland_altman", figures_dir) + agreement
    sections.append(("ADC agreement with the acquired ADC", agreement))
    if ct2dwi and ct2dwi["records"]:
        sections.append(("CT -> DWI (acute ischemic stroke)",
                         ct2dwi_section(full_summary, ct2dwi["records"], ct2dwi["tables"], figures_dir,
                                        ct2dwi.get("hu_window", (0.0, 80.0)))))
    if training_logs:
        sections.append(("Training curves", _embed(training_curves_figure(training_logs), "training", figures_dir)
                         + stopped_runs_note(training_logs)))
    if reader_scores_path and Path(reader_scores_path).exists():
        scores = pd.read_csv(reader_scores_path, sep="\t")
        sections.append(("Reader study", _html_table(scores, index=False)))
    else:
        sections.append(("Reader study", "<p>The blinded reading set is in <code>results/reader_study/</code> "
                                         "(key kept apart in <code>results/reader_study_key.tsv</code>). Set "
                                         "<code>reader_study.ratings</code> to a returned ratings TSV to score it "
                                         "(% excellent per b, inter-reader ICC).</p>"))
    sections.append(("Provenance", "<pre>" + html.escape(json.dumps(provenance, indent=2)) + "</pre>"))
    out_html = Path(out_html)
    tmp = out_html.with_name(out_html.name + ".tmp")
    tmp.write_text(render(sections, "dwisynth results"))
    tmp.replace(out_html)
