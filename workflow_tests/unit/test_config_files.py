"""The shipped config files: a complete study template, the demo apart, and config/README.md from the schema."""

import subprocess
import sys

import yaml

from dwisynth.config import config_schema, load_config
from dwisynth.config_reference import reference_markdown, undocumented_keys
from helpers import REPO


def in_a_fresh_interpreter(*args) -> str:
    """stdout of a Python run on its own: tests register extra networks in this one, each adding a block to the
    schema, and change the order the networks register in; make config-docs and the workflow see neither."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True).stdout


def test_config_readme_is_generated_from_the_current_schema():
    generated = in_a_fresh_interpreter("-m", "dwisynth.config_reference")
    written = (REPO / "config/README.md").read_text()
    assert written == generated, "config/README.md is stale: run make config-docs"


def test_every_config_key_has_a_meaning():
    assert undocumented_keys(config_schema()) == []


def test_the_reference_lists_every_key_with_its_default():
    text = reference_markdown(config_schema())
    assert "| `steps` | integer | `200000` |" in text  # a network block, from its Config dataclass
    assert "| `weights.voxel` | number | `100.0` |" in text  # nested blocks, flattened
    assert "| `dwi_motion` | boolean | `true` |" in text


def test_the_study_template_has_every_block_and_no_demo():
    template = yaml.safe_load((REPO / "config/config.yaml").read_text())
    blocks = in_a_fresh_interpreter("-c", "from dwisynth.config import config_schema; "
                                    "print(*config_schema()['properties'])").split()
    assert set(template) == set(blocks)
    assert template["demo"] == {"enabled": False}
    assert load_config(REPO / "config/config.yaml")["demo"]["enabled"] is False


def test_the_demo_file_runs_the_demo():
    assert load_config(REPO / "config/demo.yaml")["demo"]["enabled"] is True


def test_a_runs_resolved_config_loads_back_as_the_same_config(tmp_path):
    """results/provenance/config.yaml is what `dwisynth view` reads by default: it must load as the run's config."""
    from dwisynth.provenance import write_resolved_config

    config = load_config(REPO / "config/demo.yaml")
    write_resolved_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


def test_make_study_only_adds_methods_ablations_and_seeds_to_the_demo():
    """`make study` passes config/demo.yaml then config/demo_study.yaml; Snakemake merges the second into the
    first. The overlay may only add the comparisons the 30-minute demo leaves out, never change the demo."""
    from snakemake.utils import update_config

    from dwisynth.config import validate_config

    demo = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    merged = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    update_config(merged, yaml.safe_load((REPO / "config/demo_study.yaml").read_text()))
    study, plain = validate_config(merged, "study"), validate_config(demo, "demo")
    assert study["ct2dwi"].pop("seeds") == 3 and plain["ct2dwi"].pop("seeds") == 1
    assert study["ct2dwi"].pop("grids") == ["ablation"] and plain["ct2dwi"].pop("grids") == []
    study_methods, demo_methods = study.pop("methods"), plain.pop("methods")
    assert set(study_methods) == set(demo_methods) | {"mineganfewshot", "bcond"}  # every demo method stays
    assert study == plain
