"""Configuration and sample sheet: read, validate against the JSON schemas, fill defaults.

The schemas in config/schemas/ are the single source of keys and defaults; the
Snakefile and the CLI validate through the same functions.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from dwisynth.errors import ConfigError, SampleSheetError

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO_ROOT / "config" / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SAMPLES_SCHEMA = SCHEMA_DIR / "samples.schema.yaml"
REQUIRED_COLUMNS = ["cohort", "center", "subject", "organ", "modality", "dicom_dir"]
OPTIONAL_COLUMNS = ["vendor", "split"]


def _validate(data, schema: Path, what: str):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(data, str(schema), set_default=True)
    except WorkflowError as exc:
        # snakemake wraps the jsonschema message; keep its first informative line
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "Failed validating" not in line and "Error validating" not in line), lines[0] if lines else str(exc))
        raise ConfigError(f"{what}: {detail} (schema {schema.relative_to(REPO_ROOT)})") from exc


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate in place, filling schema defaults; returns the config."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a YAML mapping of keys to values")
    _validate(config, CONFIG_SCHEMA, source)
    b = config["bvalues"]
    overlap = set(b["heldout"]) & (set(b["inputs"]) | set(b["targets"]))
    if overlap:
        raise ConfigError(f"{source}: bvalues.heldout {sorted(overlap)} also appear in inputs/targets; "
                          "a held-out b-value must never be trained on")
    return config


def load_config(path: str | Path) -> dict:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: configuration file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    return validate_config(config, str(path))


def validate_sample_sheet(sheet: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check columns, values and uniqueness; returns the sheet with defaults filled."""
    missing = [c for c in REQUIRED_COLUMNS if c not in sheet.columns]
    if missing:
        raise SampleSheetError(
            f"{source}: missing column(s) {', '.join(missing)}; a sample sheet needs the tab-separated "
            f"columns {', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)}); "
            "`dwisynth scan DICOM_ROOT -o samples.tsv` drafts one"
        )
    if sheet.empty:
        raise SampleSheetError(f"{source}: the sample sheet has no rows")
    sheet = sheet.copy()
    for column in OPTIONAL_COLUMNS:
        if column not in sheet.columns:
            sheet[column] = ""
    sheet = sheet.fillna("").astype(str)
    for i, row in sheet.iterrows():
        try:
            _validate(row.to_dict(), SAMPLES_SCHEMA, f"{source} row {i + 2}")
        except ConfigError as exc:
            raise SampleSheetError(str(exc)) from exc
    duplicated = sheet.duplicated(["cohort", "subject", "modality"], keep=False)
    if duplicated.any():
        rows = ", ".join(str(i + 2) for i in sheet.index[duplicated])
        raise SampleSheetError(
            f"{source}: rows {rows} repeat the same cohort, subject and modality; each series needs its own "
            "subject/modality pair"
        )
    return sheet


def read_sample_sheet(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise SampleSheetError(f"{path}: sample sheet not found; set `samples:` in the config or run "
                               "`dwisynth scan DICOM_ROOT -o samples.tsv`")
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, comment="#", keep_default_na=False)
    except Exception as exc:
        raise SampleSheetError(f"{path}: cannot be read as a tab-separated table ({exc})") from exc
    return validate_sample_sheet(sheet, str(path))


def bvalue_grid(config: dict) -> list[float]:
    """Every b-value the configuration knows: inputs, targets, held-out and other."""
    b = config["bvalues"]
    return sorted({float(x) for key in ("inputs", "targets", "heldout", "other") for x in b[key]})
