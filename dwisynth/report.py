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

from dwisynth import layout
from dwisynth.claims import MIN_SUBJECTS
from dwisynth.evaluate import heldout_regime
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


def claims_section(claims: pd.DataFrame | None, simulated: bool) -> str:
    """The report's first screen: whether the cohort is simulated, then every claim against its strongest
    baseline (`dwisynth.claims`), acquisition-referenced rows first."""
    cohort = ("<p><b>Cohort: simulated.</b> Every image in this report comes from the embedded demo cohort "
              "(<code>dwisynth.demo</code>: literature tissue values, Rician noise, planted lesions), not from "
              "patients; its numbers test the software, not the methods' clinical value.</p>" if simulated else
              "<p><b>Cohort: acquired.</b> The images come from the sample sheet's DICOM series.</p>")
    if claims is None or claims.empty:
        return cohort + "<p>No claim could be tested (a method or its baseline is missing from this run).</p>"
    t = claims.iloc[np.argsort(claims["reference"].map({"acquisition": 0, "truth": 1}).fillna(2), kind="stable")]
    out = pd.DataFrame({
        "claim": t["claim"], "against": t["reference"], "metric": t["metric"],
        "b": t["b_value"].map(lambda b: f"{b:g}"),
        "baseline (strongest)": t["baseline"].map(_label), "n": t["n_subjects"].astype(int),
        "difference (95% CI)": [f"{_f(m, 3)} ({_f(lo, 3)} to {_f(hi, 3)})"
                                for m, lo, hi in zip(t["mean_difference"], t["ci_low"], t["ci_high"])],
        "p (Holm)": [f"{_f(p, 3)} ({_f(h, 3)})" for p, h in zip(t["p"], t["p_holm"])], "verdict": t["verdict"]})
    return (cohort + "<p class='caption'>Each claim against its strongest baseline on the same test subjects "
            "(one value per subject: n is the number of test subjects with that b). Difference: method minus "
            "baseline (an error metric: lower is better), t-interval 95% CI; paired t-test, Holm-corrected across "
            f"the rows of each reference. Fewer than {MIN_SUBJECTS} subjects: underpowered, never a win. "
            "Floor-limited: against the acquisition at a held-out b beyond every trained b, where the acquisition "
            "nears the Rician noise floor and a method could win by predicting the floor; the truth judges there. "
            "<code>results/tables/claims.tsv</code>.</p>" + _html_table(out, index=False))


def budget_table(compute: pd.DataFrame | None, ct2dwi_compute: pd.DataFrame | None, simulated: bool) -> str:
    """Each network's training budget: steps, the trainer's step-loop seconds and the job's seconds, mean over
    its models (organs; CT -> DWI: the main experiment), so a reader sees what each comparison cost."""
    parts = []
    for task, table in (("multi-b", compute), ("CT -> DWI", ct2dwi_compute)):
        if table is None or table.empty:
            continue
        if "experiment" in table:
            table = table[table["experiment"] == "main"]
        table = table.reindex(columns=list(table.columns) + [c for c in ("step_loop_seconds", "train_seconds")
                                                               if c not in table])
        means = table.groupby("method").agg(models=("method", "size"), steps=("trained_steps", "max"),
                                            loop=("step_loop_seconds", "mean"), job=("train_seconds", "mean"))
        parts.append(pd.DataFrame({"task": task, "method": [_label(m) for m in means.index],
                                   "models": means["models"], "steps": means["steps"],
                                   "step-loop s per model": means["loop"].map(lambda v: _f(v, 1)),
                                   "job s per model": means["job"].map(lambda v: _f(v, 1))}))
    if not parts:
        return ""
    rule = (" The demo's step counts give each baseline about the step-loop seconds of the network it is compared "
            "with (docs/benchmarks.md, budgets)." if simulated else "")
    return ("<h3>Training budgets</h3><p class='caption'>Steps are fixed in the config, so reruns repeat them; the "
            f"seconds say what they cost on this machine (equal steps are not equal compute).{rule}</p>"
            + _html_table(pd.concat(parts), index=False))


def heldout_b_table(bvalues: dict | None, claims: pd.DataFrame | None = None) -> str:
    """Per held-out b: where it lies against the inputs and stage-1 targets, what its comparison can show
    (`evaluate.heldout_regime`), and in one sentence whether MineGAN beat its strongest baseline there."""
    if not bvalues or not bvalues.get("heldout"):
        return ""
    rows = [heldout_regime(b, bvalues["inputs"], bvalues["targets"]) for b in sorted(map(float, bvalues["heldout"]))]
    for row in rows:
        row["MineGAN against its strongest baseline (PSNR)"] = stage2_verdict(claims, row["b_value"])
    table = pd.DataFrame(rows).rename(columns={"b_value": "held-out b", "between": "read between",
                                               "shows": "what its comparison can show"})
    table["held-out b"] = [f"{b:g}" for b in table["held-out b"]]
    return "<h3>Held-out b-values: what each comparison can show</h3>" + _html_table(table, index=False)


STAGE2_CLAIM = "MineGAN synthesizes never-trained b-values better than interpolation"


def stage2_verdict(claims: pd.DataFrame | None, b: float) -> str:
    """One sentence: MineGAN's PSNR at b against its strongest baseline, by how much and with its CI, against
    the truth where the cohort has one, else the acquisition (not where that is floor-limited)."""
    if claims is None or claims.empty:
        return MISSING
    rows = claims[(claims["claim"] == STAGE2_CLAIM) & (claims["metric"] == "psnr") & (claims["b_value"] == b)
                  & (claims["verdict"] != "floor-limited")]
    if rows.empty:
        return MISSING
    row = rows.sort_values("reference", key=lambda r: r.map({"truth": 0, "acquisition": 1})).iloc[0]
    difference = float(row["mean_difference"])
    how = {"better": "beats", "worse": "loses to"}.get(row["verdict"], "does not beat" if difference <= 0 else
                                                          "is not shown to beat")
    return (f"{how} {_label(row['baseline'])} by {difference:+.2f} dB (95% CI {row['ci_low']:+.2f} to "
            f"{row['ci_high']:+.2f}, n {int(row['n_subjects'])}, against the {row['reference']}: {row['verdict']})")


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
    metrics = ["psnr", "ssim", "superpixel_r", "lesion_psnr", "lesion_ssim", "lesion_contrast",
               "lesion_conspicuity_vs_acquired"]
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
             "contrast C = lesion mean / host mean - 1 (host: the in-plane ring around the lesion in its "
             "commonest tissue), and its conspicuity against the acquisition, C / C_acquired (1 is faithful). "
             "Every method trained with the same lr, batch, crop and lesion supervision (ct2dwi.guidance), each "
             "for its configured steps (ct2dwi.steps, or ct2dwi.steps_per_method: see the training budgets); the "
             "claims table tests JMMDA-GAN against the better of pix2pix and U-Net. Mean (95% CI) over test "
             "subjects:</p>", _ct2dwi_summary_table(summary)]
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
    captions = {"main": "Guided and unguided: every network with the lesion supervision of ct2dwi.guidance (guided "
                        "yes) and without it (no); the architecture effect within a group, the supervision effect "
                        "between them",
                "ablation": "Ablations: JMMDA-GAN with exactly one module off; vs main = the cell minus main's "
                            "JMMDA-GAN of the same seed",
                "sensitivity": "Sensitivity: wavelet x attention heads",
                "crosscenter": "Cross-center: trained on one center, scored in-center and cross-center",
                "compute": "Parameters (inference network) and training wall time (s, this machine)"}
    for name, path in tables.items():
        if path and Path(path).is_file():
            table = pd.read_csv(path, sep="\t")
            shown = grid_table(table) if name in ("main", "ablation") else _html_table(table, index=False)
            parts.append(f"<h3>{html.escape(captions.get(name, name))}</h3>" + shown)
    return "".join(parts)


GRID_METRICS = {"psnr": "PSNR", "ssim": "SSIM", "lesion_psnr": "lesion PSNR",
                "lesion_conspicuity_vs_acquired": "conspicuity vs acquired"}


def grid_table(table: pd.DataFrame) -> str:
    """A main or ablation grid table (`ct2dwi.grid_summary`) for reading: per setting and method the mean over
    test subjects, ± its SD over seeds when there are several, and the difference to main's JMMDA-GAN."""
    rows = []
    for _, r in table.iterrows():
        row = {"experiment": r["experiment"], "method": _label(r["method"]),
               "guided": r.get("lesion_guidance", ""), "modules off": r.get("modules_off", ""),
               "subjects": r["n"], "seeds": r.get("seeds", 1)}
        for metric, label in GRID_METRICS.items():
            digits = 3 if metric in ("ssim", "lesion_conspicuity_vs_acquired") else 2
            spread = r.get(f"{metric}_sd", np.nan)
            row[label] = _f(r.get(metric, np.nan), digits) + (f" ± {_f(spread, digits)}" if pd.notna(spread) else "")
        for metric in ("psnr", "lesion_psnr"):
            row[f"{GRID_METRICS[metric]} vs main"] = _f(r.get(f"{metric}_vs_main", np.nan), 2)
        rows.append(row)
    out = pd.DataFrame(rows).fillna("")
    return _html_table(out, index=False)


def write_report(out_html, figures_dir, summary_path, metrics_path, adc_path, records: list[dict], targets,
                 training_logs: dict, provenance_path, reader_scores_path=None, ct2dwi: dict | None = None,
                 truth: dict | None = None, claims_path=None, simulated: bool = False,
                 training_compute_path=None, bvalues: dict | None = None) -> None:
    """Assemble the report from the tables, the example subjects, the training logs and the provenance.

    ct2dwi: {"records": the main experiment's test subjects (as `score_ct2dwi` gets them, plus `ct`),
    "tables": {name: path}, "hu_window", "target_b"} for the CT -> DWI section. truth: {"tables": {name of
    TRUTH_TABLES: path}} for "Against the truth" (absent tables: a run without truth). claims_path: claims.tsv,
    shown first with whether the cohort is `simulated` (the demo). training_compute_path: training_compute.tsv
    (with CT -> DWI's compute table from ct2dwi["tables"]) for the training budgets. bvalues: the config's
    inputs, targets and heldout, for what each held-out b's comparison can show."""
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
    claims = pd.read_csv(claims_path, sep="\t") if claims_path and Path(claims_path).stat().st_size else None
    compute = pd.read_csv(training_compute_path, sep="\t") if training_compute_path else None
    ct_compute_path = ((ct2dwi or {}).get("tables") or {}).get("compute")
    ct_compute = pd.read_csv(ct_compute_path, sep="\t") if ct_compute_path and Path(ct_compute_path).is_file() else None
    sections = [("Cohort and claims", claims_section(claims, simulated)),
                ("What was run", intro + budget_table(compute, ct_compute, simulated)),
                ("Image quality", _embed(metric_vs_b_figure(summary), "metrics_vs_b", figures_dir)
                 + "<h3>PSNR (dB), mean (95% CI)</h3>" + comparison_table(summary, "psnr")
                 + "<h3>SSIM, mean (95% CI)</h3>" + comparison_table(summary, "ssim")
                 + "<h3>Legacy PSNR (seed-paper convention)</h3>" + comparison_table(summary, "psnr_legacy")
                 + "<h3>Superpixel gray-level correlation r</h3>" + comparison_table(summary, "superpixel_r")
                 + heldout_b_table(bvalues, claims))]
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
    truth = truth or {}
    truth_tables = read_truth_tables(truth.get("tables"))
    lesion_figures = {}
    if any(_has_rows(t) for t in truth_tables.values()):
        lesion_figures["multib"] = multib_lesion_figures(records, targets, figures_dir)
        if ct2dwi and ct2dwi["records"] and _has_rows(truth_tables["ct2dwi_truth_metrics"]):
            lesion_figures["ct2dwi"] = ct2dwi_lesion_figure(ct2dwi["records"], ct2dwi.get("target_b", 1000.0),
                                                            figures_dir)
    sections.append(("Against the truth", truth_section(truth_tables, lesion_figures)))
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


# --- against the truth (the demo's simulated cohort) ------------------------------------------------
# The truth-referenced tables the report reads (the CT -> DWI ones are still to become layout constants).
TRUTH_TABLES = {
    "truth_metrics": layout.TRUTH_METRICS,
    "lesion_adc": layout.LESION_ADC,
    "lesion_contrast": layout.LESION_CONTRAST,
    "monotonicity": layout.MONOTONICITY,
    "ct2dwi_truth_metrics": layout.CT2DWI_TRUTH_METRICS,
    "ct2dwi_lesion_contrast": layout.CT2DWI_LESION_CONTRAST,
}
TRUTH_MIN_B = 400.0  # the truth tables show b >= this (below it every method nearly copies its inputs)
CROP_HALF = 12  # lesion panels: a 24-pixel crop around the lesion's centroid
CROP_ZOOM = 4  # nearest-neighbour upsampling of the crops


def read_truth_tables(paths: dict | None) -> dict[str, pd.DataFrame | None]:
    """{name: table} of TRUTH_TABLES' names; None where the file is not given or absent (a run without truth)."""
    tables = {}
    for name in TRUTH_TABLES:
        path = (paths or {}).get(name)
        try:
            tables[name] = pd.read_csv(path, sep="\t") if path and Path(path).is_file() else None
        except pd.errors.EmptyDataError:
            tables[name] = None
    return tables


def _has_rows(table: pd.DataFrame | None) -> bool:
    return table is not None and len(table) > 0


def _label(method: str) -> str:
    return METHOD_LABEL.get(method, method)  # "truth" and unknown names as they are


def _method_rows(methods) -> list[str]:
    """Reference rows first (truth, the acquisition), then the methods in the report's order."""
    methods = list(dict.fromkeys(methods))
    head = [m for m in ("truth", "acquired") if m in methods]
    return head + _ordered([m for m in methods if m not in head])


def _wide(table: pd.DataFrame, index: bool = True) -> str:
    """A table with many columns, scrolling sideways instead of widening the page."""
    return f"<div style='overflow-x:auto'>{_html_table(table, index)}</div>"


def _f(value: float, digits: int) -> str:
    """value to `digits` decimals (no "-0.00": a value that rounds to zero has no sign); NaN as MISSING."""
    if not np.isfinite(value):
        return MISSING
    text = f"{value:.{digits}f}"
    return text.lstrip("-") if float(text) == 0 else text


def truth_metrics_tables(metrics: pd.DataFrame) -> str:
    """Per organ: PSNR / SSIM against the truth, mean over test subjects, per b >= TRUTH_MIN_B; the acquisition
    is the reference row (how far the measured image is from the truth)."""
    t = metrics[metrics["b_value"] >= TRUTH_MIN_B]
    if t.empty:
        return f"<p>No scores against the truth at b ≥ {TRUTH_MIN_B:g}.</p>"
    blocks = []
    for organ, rows in t.groupby("organ"):
        means = rows.groupby(["method", "b_value"])[["psnr", "ssim"]].mean().reset_index()
        means["value"] = [f"{_f(p, 1)} / {_f(s, 3)}" for p, s in zip(means["psnr"], means["ssim"])]
        wide = means.pivot(index="method", columns="b_value", values="value")
        wide = wide.loc[_method_rows(wide.index)]
        wide.index = [_label(m) for m in wide.index]
        wide.columns = [f"b = {b:g}" for b in wide.columns]
        n = rows["subject"].nunique()
        blocks.append(f"<h4>{html.escape(organ)} ({n} test subject{'s' * (n != 1)})</h4>" + _wide(wide))
    return ("<p class='caption'>PSNR (dB) / SSIM against the noise-free truth inside the organ mask (both images "
            "divided by the truth's 99.5th percentile in the mask), mean over test subjects.</p>" + "".join(blocks))


def lesion_adc_table(adc: pd.DataFrame) -> str:
    """Per lesion: its mean ADC acquired, true, and from each method with the relative difference to the truth."""
    if adc.empty:
        return "<p>No lesion ADC.</p>"
    keys = ["organ", "lesion_name", "subject"]
    adc = adc.reindex(columns=list(adc.columns) + ["adc_input_sd"] * ("adc_input_sd" not in adc))
    base = adc.groupby(keys)[["voxels", "adc_acquired", "adc_truth", "adc_input_sd"]].first()
    out = pd.DataFrame({"voxels": base["voxels"].astype(int), "acquired": base["adc_acquired"].map(lambda v: _f(v, 3)),
                        "truth": base["adc_truth"].map(lambda v: _f(v, 3)),
                        "inputs' SD": [f"{_f(100 * sd / a, 0)}%" if np.isfinite(sd) and a else MISSING
                                       for sd, a in zip(base["adc_input_sd"].astype(float), base["adc_acquired"])]})
    for method in _ordered(adc["method"].unique()):
        rows = adc[adc["method"] == method].set_index(keys)
        cells = [f"{_f(a, 3)} ({round(100 * d):+d}%)" if np.isfinite(d) else _f(a, 3)
                 for a, d in zip(rows["adc_synthetic"], rows["relative_difference_vs_truth"])]
        out[_label(method)] = pd.Series(cells, index=rows.index).reindex(out.index).fillna(MISSING)
    out.index.names = ["organ", "lesion", "subject"]
    return ("<p class='caption'>Mean ADC in the lesion (x10⁻³ mm²/s); in brackets each method's difference to the "
            "truth, relative to the truth. Inputs' SD: how precisely the input b-values alone fix the lesion's ADC "
            "(the acquisition's noise over the lesion's voxels, relative to the acquired ADC); a lesion whose "
            "inputs' SD exceeds the agreement asked for cannot be synthesized to it from its signal decay, only "
            "from the network's priors.</p>" + _wide(out.reset_index(), index=False))


def lesion_contrast_tables(contrast: pd.DataFrame) -> str:
    """Per organ: per lesion label and b, each source's contrast C and its conspicuity C / C_truth, mean over
    the test subjects' lesions."""
    t = contrast[contrast["b_value"] >= TRUTH_MIN_B]
    if t.empty:
        return f"<p>No lesion contrast at b ≥ {TRUTH_MIN_B:g}.</p>"
    blocks = []
    for organ, rows in t.groupby("organ"):
        means = rows.groupby(["method", "lesion_name", "b_value"])[["contrast", "conspicuity"]].mean().reset_index()
        means["value"] = [f"{_f(c, 2)} ({_f(k, 2)})" for c, k in zip(means["contrast"], means["conspicuity"])]
        wide = means.pivot_table(index="method", columns=["lesion_name", "b_value"], values="value", aggfunc="first")
        wide = wide.loc[_method_rows(wide.index)]
        wide.index = [_label(m) for m in wide.index]
        wide.columns = [f"{name}, b = {b:g}" for name, b in wide.columns]
        blocks.append(f"<h4>{html.escape(organ)}</h4>" + _wide(wide))
    return ("<p class='caption'>Lesion contrast C = lesion mean / host mean - 1 (host: the in-plane ring around "
            "the lesion in its commonest tissue); in brackets the conspicuity C / C_truth (1: as conspicuous as in "
            "the truth, 0: invisible). Mean over the test subjects' lesions.</p>" + "".join(blocks))


def monotonicity_table(monotonicity: pd.DataFrame) -> str:
    """Per organ and method: the share of tissue voxels whose synthetic signal rises with b, and where."""
    if monotonicity.empty:
        return "<p>No monotonicity scores.</p>"
    rows = []
    for (organ, method), t in monotonicity.groupby(["organ", "method"]):
        worst = t["worst_interval"].dropna()
        rows.append({"organ": organ, "method": _label(method), "order": _ordered(METHOD_ORDER + [method]).index(method),
                     "subjects": t["subject"].nunique(),
                     "violating voxels (%)": f"{_f(100 * t['violating_fraction'].mean(), 1)}",
                     "worst subject (%)": f"{_f(100 * t['violating_fraction'].max(), 1)}",
                     "commonest worst interval": str(worst.mode().iloc[0]) if len(worst) else MISSING,
                     "its share (%)": _f(100 * t["worst_interval_share"].mean(), 0)})
    out = pd.DataFrame(rows).sort_values(["organ", "order"]).drop(columns="order")
    return ("<p class='caption'>Diffusion signal only falls with b: the share of tissue voxels whose synthetic "
            "signal rises between consecutive b-values (mean over test subjects, and the worst subject), the "
            "interval where most rises happen and its share of them.</p>" + _html_table(out, index=False))


def ct2dwi_truth_table(metrics: pd.DataFrame | None, contrast: pd.DataFrame | None) -> str:
    """CT -> DWI against the truth: PSNR, SSIM, MAE in the brain and the infarct's contrast and conspicuity,
    mean over test subjects, the acquisition as the reference row."""
    parts = []
    if _has_rows(metrics):
        out = metrics.groupby("method")[["psnr", "ssim", "mae"]].mean()
        if _has_rows(contrast):
            out = out.join(contrast.groupby("method")[["contrast", "conspicuity"]].mean(), how="outer")
        out = out.loc[_method_rows(out.index)]
        table = pd.DataFrame({"PSNR (dB)": out["psnr"].map(lambda v: _f(v, 1)),
                              "SSIM": out["ssim"].map(lambda v: _f(v, 3)), "MAE": out["mae"].map(lambda v: _f(v, 3))})
        if "contrast" in out:
            table["infarct C"] = out["contrast"].map(lambda v: _f(v, 2))
            table["conspicuity C / C_truth"] = out["conspicuity"].map(lambda v: _f(v, 2))
        table.index = [_label(m) for m in table.index]
        n = metrics["subject"].nunique()
        parts.append(f"<p class='caption'>DWI b = {metrics['b_value'].iloc[0]:g} against the noise-free truth in "
                     f"the brain mask (truth's 99.5th percentile as scale), infarct contrast C against its host ring, "
                     f"mean over {n} test subject{'s' * (n != 1)}.</p>" + _html_table(table))
    if not parts:
        return "<p>No CT -&gt; DWI scores against the truth (no simulated stroke subject in this run).</p>"
    return "".join(parts)


def lesion_crop(lesion: np.ndarray, half: int = CROP_HALF) -> tuple[int, tuple[slice, slice]]:
    """(the slice where the lesion is largest, the in-plane window of 2*half pixels centred on its centroid
    there, shifted to stay inside the image). lesion: (X, Y, Z) bool with at least one voxel."""
    z = int(np.argmax(lesion.reshape(-1, lesion.shape[-1]).sum(0)))
    centre = np.argwhere(lesion[..., z]).mean(0)
    window = []
    for c, size in zip(centre, lesion.shape[:2]):
        start = int(np.clip(round(c) - half, 0, max(size - 2 * half, 0)))
        window.append(slice(start, min(start + 2 * half, size)))
    return z, tuple(window)


def _zoom(image: np.ndarray, factor: int = CROP_ZOOM) -> np.ndarray:
    return np.kron(image, np.ones((factor, factor)))


def lesion_panel_figure(crops: dict[str, np.ndarray], outline: np.ndarray, window: float, title: str,
                        zoom: int = CROP_ZOOM):
    """One row of zoomed crops (nearest upsampling x zoom), one grey window [0, window], the lesion outlined."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(crops), figsize=(1.9 * len(crops), 2.35), squeeze=False)
    edge = np.rot90(_zoom(outline.astype(float), zoom))
    for ax, (name, crop) in zip(axes[0], crops.items()):
        ax.imshow(np.rot90(_zoom(crop, zoom)), cmap="gray", vmin=0, vmax=window, interpolation="nearest")
        if outline.any():
            ax.contour(edge, levels=[0.5], colors="#ff3b30", linewidths=0.9)
        ax.set_title(_label(name), fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _lesion_panel(images: dict[str, np.ndarray], lesion: np.ndarray, focus: np.ndarray, title: str):
    """The panel of (X, Y, Z) volumes {"acquired", "truth", method...} around `focus` (the lesion shown)."""
    z, (sx, sy) = lesion_crop(focus)
    crops = {name: np.nan_to_num(image[sx, sy, z]) for name, image in images.items()}
    truth = crops["truth"]
    window = float(np.percentile(truth, 99.5)) if truth.size else 1.0
    return lesion_panel_figure(crops, lesion[sx, sy, z], window or 1.0, f"{title}, slice {z}")


def _largest_label(lesion: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """The lesion voxels of its commonest label (one lesion of several, e.g. the neck's tumour and node)."""
    if labels is None:
        return lesion
    values, counts = np.unique(labels[lesion], return_counts=True)
    keep = values != 0
    return lesion & (labels == values[keep][np.argmax(counts[keep])]) if keep.any() else lesion


def multib_lesion_figures(records: list[dict], targets, figures_dir: Path) -> list[str]:
    """Per organ, the test subject with the largest lesion: acquisition, truth (the noise-free synthesis) and
    each method at b 1000 (or the highest scored b), cropped around the lesion. records: `evaluation_records`'
    (`lesion`, `dseg`: the truth's lesion mask and labels, stored in LPS; synth["noisefree"]: the truth)."""
    from dwisynth.io import load_dwi, load_on_grid

    candidates = {}
    for r in records:
        if "noisefree" not in r["synth"] or not r.get("lesion") or not Path(r["lesion"]).is_file():
            continue
        lesion = load_on_grid(r["lesion"], r["acquired"][0], order=0) > 0
        if lesion.any() and lesion.sum() > candidates.get(r["organ"], (0,))[0]:
            candidates[r["organ"]] = (int(lesion.sum()), r, lesion)
    blocks = []
    for organ, (_, r, lesion) in sorted(candidates.items()):
        labels = (np.rint(load_on_grid(r["dseg"], r["acquired"][0], order=0)).astype(int)
                  if r.get("dseg") and Path(r["dseg"]).is_file() else None)
        acquired, acquired_b = load_dwi(*r["acquired"])
        truth, truth_b = load_dwi(*r["synth"]["noisefree"][:2])
        common = sorted({float(b) for b in acquired_b} & {float(b) for b in truth_b} & {float(b) for b in targets})
        if not common:
            continue
        b = 1000.0 if 1000.0 in common else common[-1]
        images = {"acquired": acquired[..., [float(v) for v in acquired_b].index(b)],
                  "truth": truth[..., [float(v) for v in truth_b].index(b)]}
        for method in _ordered([m for m in r["synth"] if m != "noisefree"]):
            pred, pred_b = load_dwi(*r["synth"][method][:2])
            pb = [float(v) for v in pred_b]
            images[method] = pred[..., pb.index(b)] if b in pb else np.full(lesion.shape, np.nan)
        fig = _lesion_panel(images, lesion, _largest_label(lesion, labels),
                            f"{organ}: sub-{r['subject']}, b = {b:g}")
        blocks.append(f"<h4>{html.escape(organ)}</h4>" + _embed(fig, f"lesion_{organ}", figures_dir))
    return blocks


def ct2dwi_lesion_figure(records: list[dict], target_b: float, figures_dir: Path) -> str:
    """The CT -> DWI test subject with the largest infarct: acquisition, truth and each method, cropped."""
    from dwisynth.ct2dwi import TRUTH, load_lesion_mask, volume_at

    best = None
    for r in records:
        if TRUTH not in r["synth"] or not r.get("lesion") or not Path(r["lesion"]).is_file():
            continue
        lesion = load_lesion_mask(r["lesion"], r["acquired"][0], r["subject"])
        if lesion.any() and (best is None or lesion.sum() > best[1].sum()):
            best = (r, lesion)
    if best is None:
        return ""
    r, lesion = best
    images = {"acquired": volume_at(*r["acquired"], target_b, "acquired"),
              "truth": volume_at(*r["synth"][TRUTH], target_b, "noise-free truth")}
    images |= {m: volume_at(*r["synth"][m], target_b, "synthetic") for m in _ordered(r["synth"]) if m != TRUTH}
    fig = _lesion_panel(images, lesion, lesion, f"CT -> DWI: sub-{r['subject']} ({r['center']}), b = {target_b:g}")
    return _embed(fig, "lesion_ct2dwi", figures_dir)


def truth_section(tables: dict[str, pd.DataFrame | None], figures: dict[str, list[str] | str] | None = None) -> str:
    """'Against the truth': the demo's simulated cohort scored against its noise-free truth; a run without
    truth (real data) gets a section that says so."""
    figures = figures or {}
    intro = ("<p>The demo cohort is simulated: its noise-free images, true ADC and lesion masks are known, so the "
             "scores below set every method (and the acquisition, noise included) against the truth instead of "
             "against a noisy acquisition. Truth-referenced scores exist only for the simulated demo subjects; real "
             "data have no truth.</p>")
    if not any(_has_rows(t) for t in tables.values()):
        return intro + "<p>No truth-referenced scores in this run (no simulated subject).</p>"
    parts = [intro]
    if _has_rows(tables.get("truth_metrics")):
        parts.append("<h3>Image quality against the truth</h3>" + truth_metrics_tables(tables["truth_metrics"]))
    if _has_rows(tables.get("lesion_adc")):
        parts.append("<h3>Lesion ADC</h3>" + lesion_adc_table(tables["lesion_adc"]))
    if _has_rows(tables.get("lesion_contrast")):
        parts.append("<h3>Lesion contrast and conspicuity</h3>" + lesion_contrast_tables(tables["lesion_contrast"]))
    if figures.get("multib"):
        parts.append("<h3>Lesions up close</h3><p class='caption'>24-pixel crops around the lesion (x4, nearest "
                     "neighbour) on the slice where it is largest, outlined in red; one grey window per row (the "
                     "truth's 99.5th percentile in the crop).</p>" + "".join(figures["multib"]))
    if _has_rows(tables.get("monotonicity")):
        parts.append("<h3>Signal monotonicity in b</h3>" + monotonicity_table(tables["monotonicity"]))
    if _has_rows(tables.get("ct2dwi_truth_metrics")) or _has_rows(tables.get("ct2dwi_lesion_contrast")):
        parts.append("<h3>CT -&gt; DWI against the truth</h3>"
                     + ct2dwi_truth_table(tables.get("ct2dwi_truth_metrics"), tables.get("ct2dwi_lesion_contrast"))
                     + (figures.get("ct2dwi") or ""))
    return "".join(parts)
