"""config/README.md: every config key with its type, default and meaning, generated from the schema.

The schema (dwisynth/schemas/config.schema.yaml and each network's Config dataclass) is the one source of keys
and defaults; this page is written from it by `make config-docs` (python -m dwisynth.config_reference
config/README.md), and a test fails when the page and the schema disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = """# Configuration keys

Generated from the schema by `make config-docs`; do not edit by hand (a test fails when it is stale).

A config file given with `--configfile` is the whole config: every key left out takes the default below.
`config/config.yaml` is the template for a study, `config/demo.yaml` the embedded demo that `make demo` runs.
Every block rejects unknown keys and names the nearest valid one. Values given on the command line
(`--config 'dc2anet={steps: 20000}'`) are converted to the type below. The run writes the config it used,
defaults filled in, to `results/provenance/config.yaml`.
"""


def _type(schema: dict) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    kinds = schema.get("type", "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    words = []
    for kind in kinds:
        if kind == "array" and isinstance(schema.get("items"), dict):
            item = schema["items"]
            words.append(f"list of {_type(item)}" if "enum" not in item else f"list of ({_type(item)})")
        else:
            words.append(str(kind))
    return " or ".join(words)


def _default(schema: dict) -> str:
    if "default" not in schema:
        return "-"
    return f"`{json.dumps(schema['default'], ensure_ascii=False)}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _rows(properties: dict, prefix: str = ""):
    """(key, schema) of a block's keys, nested objects flattened with dots (`weights.voxel`)."""
    for key, schema in properties.items():
        yield prefix + key, schema
        if "properties" in schema:
            yield from _rows(schema["properties"], f"{prefix}{key}.")


def reference_markdown(schema: dict) -> str:
    lines = [HEADER]
    top = schema["properties"]
    plain = {k: v for k, v in top.items() if "properties" not in v}
    blocks = {k: v for k, v in top.items() if "properties" in v}
    sections = [("Top-level keys", None, plain)] + [(f"`{k}`", v.get("description"), v["properties"])
                                                     for k, v in blocks.items()]
    for title, description, properties in sections:
        lines += [f"## {title}", ""]
        if description:
            lines += [_cell(description), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for key, sub in _rows(properties):
            lines.append(f"| `{key}` | {_cell(_type(sub))} | {_cell(_default(sub))} | "
                         f"{_cell(sub.get('description', ''))} |")
        lines.append("")
    return "\n".join(lines)


def undocumented_keys(schema: dict) -> list[str]:
    """Keys without a description (the page would show an empty meaning)."""
    return [key for key, sub in _rows(schema["properties"]) if not sub.get("description")]


def main(argv: list[str]) -> int:
    from dwisynth.config import config_schema

    text = reference_markdown(config_schema())
    if argv:
        Path(argv[0]).write_text(text)
        print(f"wrote {argv[0]}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
