"""Configuration and sample sheet: read, validate against the JSON schemas, fill defaults.

The schemas ship with the package (`dwisynth/schemas/`), so an installed dwisynth
finds them. They are the single source of keys and defaults, except the network
blocks and the method list, which `dwisynth.networks.base` generates from each
network's Config dataclass and the registry. The Snakefile and the CLI validate
through the same functions. Every block rejects unknown keys, naming the nearest valid one.
"""

from __future__ import annotations

import copy
import difflib
import functools
import io
import math
from pathlib import Path

import pandas as pd
import yaml

from dwisynth.errors import ConfigError, SampleSheetError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
CONFIG_SCHEMA = SCHEMA_DIR / "config.schema.yaml"
SAMPLES_SCHEMA = SCHEMA_DIR / "samples.schema.yaml"
REQUIRED_COLUMNS = ["cohort", "center", "subject", "organ", "modality", "dicom_dir"]
OPTIONAL_COLUMNS = ["vendor", "split", "bval", "bvec", "lesion_mask"]


@functools.cache
def _default_filling_validator():
    """A draft 2020-12 validator that also fills defaults (outer blocks first, so nested defaults apply)."""
    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": properties_with_defaults})


def _validate(data, schema: Path | dict, what: str, unshown=()):
    """unshown: keys whose invalid value the message must not repeat (a sheet's subject may hold a patient ID
    typed by mistake); it names the rule the value breaks instead."""
    from jsonschema.exceptions import best_match

    if not isinstance(schema, dict):
        schema = yaml.safe_load(Path(schema).read_text())
    error = best_match(_default_filling_validator()(schema).iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        message = error.message
        if error.absolute_path and error.absolute_path[0] in unshown:
            message = (f"the value (not shown) breaks the rule {error.validator} {error.validator_value!r}"
                       + (f": {error.schema['description']}" if "description" in error.schema else ""))
        raise ConfigError(f"{what}: {where + ': ' if where else ''}{message}")


def _config_schema() -> dict:
    """The config schema with one block per registered network and the registry's method list."""
    from dwisynth.networks.base import networks

    return _schema_for(tuple(networks()))  # a network registered later gets a fresh schema


@functools.cache
def _schema_for(names: tuple[str, ...]) -> dict:
    from dwisynth.networks.base import BASELINES, block_schema, networks

    schema = yaml.safe_load(CONFIG_SCHEMA.read_text())
    for name, cls in networks().items():
        if cls.config_block is None:  # variants read the block of the network they vary
            schema["properties"][name] = {**block_schema(cls.Config),
                                          "description": f"{cls.label} ({', '.join(cls.tasks)} task)"}
    methods = schema["properties"]["methods"]
    # `methods` lists the multi-b task's methods: a CT -> DWI network is not one of them
    methods["items"]["enum"] = [*networks("multib"), *[b for b in BASELINES if b != "noisefree"]]
    methods["default"] = [*networks("multib"), "cdwi", "dc2anetinterp"]
    ct_methods = schema["properties"]["ct2dwi"]["properties"]["methods"]
    ct_methods["items"]["enum"] = list(networks("ct2dwi"))
    per_method = schema["properties"]["ct2dwi"]["properties"]["steps_per_method"]
    per_method["propertyNames"] = {"enum": list(networks("ct2dwi"))}
    return schema


def config_schema() -> dict:
    """A copy of the full config schema (for documentation and tests)."""
    return copy.deepcopy(_config_schema())


# keys that moved: where they went and why (a config written before the move names its new place)
MOVED_KEYS = {
    "jmmdagan.weights.lesion": "ct2dwi.guidance.lesion_weight (lesion supervision is a setting of the CT -> DWI "
                               "comparison, given to every network alike)",
}


def _unknown_keys(data, schema: dict, where: str) -> None:
    """Reject keys a block does not define, naming the nearest valid one (jsonschema only says 'unexpected')."""
    if isinstance(data, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(data):
            _unknown_keys(item, schema["items"], f"{where}[{i}]")
    if not isinstance(data, dict):
        return
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key in properties:
            _unknown_keys(value, properties[key], path)
        elif isinstance(extra, dict):
            _unknown_keys(value, extra, path)
        elif extra is False:
            if path in MOVED_KEYS:
                raise ConfigError(f"{path!r} has moved to {MOVED_KEYS[path]}")
            hint = difflib.get_close_matches(str(key), list(properties), n=1)
            raise ConfigError(f"unknown key {path!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; valid keys here: {', '.join(properties)}")


def _check_network_blocks(config: dict, source: str) -> None:
    """Build every network's Config from its block: the checks across keys a schema cannot state
    (JMMDA-GAN's heads must divide its channels) fail here, before any job starts."""
    from dwisynth.networks.base import config_from_block, networks

    for name, cls in networks().items():
        if cls.config_block is None and name in config:
            try:
                config_from_block(cls.Config, config[name], name)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None


def _value_from_text(text: str, types: set[str]):
    """What a text means where the schema wants one of `types` (integer, number, boolean, null): read as YAML,
    as a config file is, and 5e-4 (text to YAML 1.1) as a number. The text itself where it means none of them
    (or NaN/infinity), so validation names it."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and types & {"integer", "number"}:
        try:
            value = float(value)
        except ValueError:
            return text
    if isinstance(value, float):
        if not math.isfinite(value):
            return text
        if value.is_integer() and "integer" in types:
            value = int(value)  # steps: 2e4
    kinds = {bool: {"boolean"}, int: {"integer", "number"}, float: {"number"}, type(None): {"null"}}
    return value if kinds.get(type(value), set()) & types else text


def _typed_text(value, schema: dict):
    """`value` with every text where the schema wants a number, integer, boolean or null (and no text) read as
    one, in place for mappings: Snakemake hands the nested values of `--config 'dc2anet={steps: 20000}'` over
    as text."""
    types = schema.get("type", [])
    types = {types} if isinstance(types, str) else set(types)
    if isinstance(value, str):
        typed = types & {"integer", "number", "boolean", "null"} and "string" not in types
        return _value_from_text(value, types) if typed else value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_typed_text(item, schema["items"]) for item in value]
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key, extra)
            if isinstance(sub, dict):
                value[key] = _typed_text(item, sub)
    return value


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate in place, reading numbers and booleans given as text (`snakemake --config`) and filling
    schema defaults; returns the config."""
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: the configuration must be a YAML mapping of keys to values")
    schema = _config_schema()
    try:
        _unknown_keys(config, schema, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _typed_text(config, schema)
    _validate(config, schema, source)
    _check_network_blocks(config, source)
    b = config["bvalues"]
    both = sorted(set(b["inputs"]) & set(b["targets"]))
    if both:
        raise ConfigError(f"{source}: bvalues {both} are both inputs and targets; a network cannot be trained to "
                          "synthesize an image it is given: remove them from one list")
    overlap = set(b["heldout"]) & (set(b["inputs"]) | set(b["targets"]))
    if overlap:
        raise ConfigError(f"{source}: bvalues.heldout {sorted(overlap)} also appear in inputs/targets; "
                          "a held-out b-value must never be trained on")
    _check_b_range(config, source)
    return config


def _check_b_range(config: dict, source: str) -> None:
    """A network that synthesizes any b (MineGAN) is asked for every target and held-out b: each must lie in
    its block's b_range, or the synthesis job would fail at the end of a long run."""
    from dwisynth.networks.base import networks

    registry = networks()
    for method in config.get("methods", ()):
        cls = registry.get(method)
        if cls is None or "b_range" not in cls.Config.__dataclass_fields__:
            continue
        block = cls.config_block or method
        lo, hi = (float(x) for x in config.get(block, {}).get("b_range", cls.Config().b_range))
        wanted = sorted({float(x) for x in config["bvalues"]["targets"] + config["bvalues"]["heldout"]})
        outside = [x for x in wanted if not lo <= x <= hi]
        if outside:
            raise ConfigError(f"{source}: {method} synthesizes b in {block}.b_range [{lo:g}, {hi:g}], but "
                              f"bvalues asks it for {', '.join(f'{x:g}' for x in outside)}: widen {block}.b_range "
                              "(e.g. [0, 2000] for held-out b 1500 and 2000) or drop those b-values")


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
            _validate(row.to_dict(), SAMPLES_SCHEMA, f"{source} row {i + 2}", unshown={"subject"})
        except ConfigError as exc:
            raise SampleSheetError(str(exc)) from exc
    duplicated = sheet.duplicated(["cohort", "subject", "modality"], keep=False)
    if duplicated.any():
        rows = ", ".join(str(i + 2) for i in sheet.index[duplicated])
        raise SampleSheetError(
            f"{source}: rows {rows} repeat the same cohort, subject and modality; each series needs its own "
            "subject/modality pair"
        )
    ct_lesions = [i for i, r in sheet.iterrows() if r["modality"] == "CT" and r["lesion_mask"]]
    if ct_lesions:
        raise SampleSheetError(
            f"{source}: row {ct_lesions[0] + 2} is a CT series with a lesion_mask; a lesion mask belongs on the "
            "subject's DWI row (it is scored on the DWI grid)")
    # a CT is registered to its subject's DWI: a CT row whose DWI row is spelled otherwise has nothing to go to
    dwi = set(zip(sheet.loc[sheet["modality"] == "DWI", "cohort"], sheet.loc[sheet["modality"] == "DWI", "subject"]))
    lone = [i for i, r in sheet.iterrows() if r["modality"] == "CT" and (r["cohort"], r["subject"]) not in dwi]
    if lone:
        raise SampleSheetError(
            f"{source}: " + (f"row {lone[0] + 2} is a CT series" if len(lone) == 1 else
                             f"rows {', '.join(str(i + 2) for i in lone)} are CT series")
            + " with no DWI row of the same cohort and subject; add the subject's DWI row, or spell cohort and "
            "subject exactly as on its DWI row"
        )
    return sheet


def read_sample_sheet(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise SampleSheetError(f"{path}: sample sheet not found; set `samples:` in the config or run "
                               "`dwisynth scan DICOM_ROOT -o samples.tsv`")
    try:
        # only whole lines starting with '#' are comments: pandas' comment= would also cut a value at a '#'
        # (a dicom_dir such as /data/case#12)
        # utf-8-sig: a spreadsheet's "UTF-8 text" starts with a byte-order mark, which would hide a first '#'
        lines = [line for line in io.StringIO(path.read_text(encoding="utf-8-sig"))
                 if not line.lstrip().startswith("#")]
        sheet = pd.read_csv(io.StringIO("".join(lines)), sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise SampleSheetError(f"{path}: cannot be read as a tab-separated table ({exc})") from exc
    return validate_sample_sheet(sheet, str(path))


def check_data_root(sheet: pd.DataFrame, data_root: str | Path | None, source: str) -> None:
    """Every dicom_dir and lesion_mask, with '..' and links resolved, lies inside data_root (default: the working
    directory). Rows are named by cohort and subject, never by path: a folder name can hold a patient's name."""
    root = Path(data_root or ".").resolve()
    for column in ("dicom_dir", "lesion_mask"):
        _check_inside(sheet, column, root, data_root, source)


def _check_inside(sheet: pd.DataFrame, column: str, root: Path, data_root, source: str) -> None:
    outside = [f"row {i + 2} ({row['cohort']}/{row['subject']} {row['modality']})" for i, row in sheet.iterrows()
               if row.get(column) and not Path(row[column]).resolve().is_relative_to(root)]
    if outside:
        raise SampleSheetError(
            f"{source}: {column} of {', '.join(outside[:5])}{' and more' if len(outside) > 5 else ''} leads outside "
            f"the data root {'(data_root in the config)' if data_root else '(the working directory)'}; move the "
            "series under it or set data_root to the folder that holds the study's DICOM"
        )


def lesion_mask_file(path: str, cohort: str, subject: str, source: str) -> str | None:
    """A DWI row's `lesion_mask` (None when empty), refused with the subject and path when there is no such file."""
    if not path:
        return None
    if not Path(path).is_file():
        raise SampleSheetError(f"{source}: the lesion_mask of sub-{subject} ({cohort}), {path}, is not a file; "
                               "give the path of a NIfTI lesion mask (nonzero = lesion) relative to the working "
                               "directory, as dicom_dir, or leave the column empty")
    return path


def adc_settings(config: dict) -> dict:
    """The `adc` block with its b-set resolved: `adc.bvalues`, or by default the inputs and targets
    (what every method's images hold, so acquired and synthetic ADC are fitted alike)."""
    b = config["bvalues"]
    chosen = config["adc"].get("bvalues") or [*b["inputs"], *b["targets"]]
    return {**config["adc"], "bvalues": sorted({float(x) for x in chosen})}


def bvalue_grid(config: dict) -> list[float]:
    """Every b-value the configuration knows: inputs, targets, held-out and other."""
    b = config["bvalues"]
    return sorted({float(x) for key in ("inputs", "targets", "heldout", "other") for x in b[key]})
