"""Config and sample-sheet validation: defaults, and errors that name the file."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dwisynth.config import load_config, read_sample_sheet, validate_config
from dwisynth.errors import ConfigError, SampleSheetError

from helpers import REPO, write_sheet as _sheet


def test_demo_config_validates_and_gets_defaults(tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    del config["device"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    assert loaded["device"] == "auto"
    assert loaded["demo"]["enabled"] is True


def test_bad_device_is_a_config_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"bvalues": {}, "device": "tpu"}))
    with pytest.raises(ConfigError, match="tpu"):
        load_config(path)


def test_heldout_b_in_targets_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"bvalues": {"targets": [850, 1000], "heldout": [850]}}))
    with pytest.raises(ConfigError, match="never be trained on"):
        load_config(path)




def test_a_heldout_b_outside_an_any_b_networks_range_is_refused_naming_the_block(tmp_path):
    path = tmp_path / "c.yaml"
    config = {"methods": ["dc2anet", "minegan"], "bvalues": {"heldout": [75, 850, 2000]},
              "minegan": {"b_range": [0, 1000]}}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"minegan.b_range \[0, 1000\].*asks it for 2000"):
        load_config(path)
    path.write_text(yaml.safe_dump({**config, "minegan": {"b_range": [0, 2000]}}))
    assert load_config(path)["minegan"]["b_range"] == [0, 2000]
    path.write_text(yaml.safe_dump({**config, "methods": ["dc2anet", "cdwi"]}))  # no any-b network: nothing to reach
    assert load_config(path)["bvalues"]["heldout"] == [75, 850, 2000]


def test_text_from_snakemake_config_is_read_as_the_schemas_type():
    """`snakemake --config 'dc2anet={steps: 20000}'` hands nested values over as text."""
    from snakemake.cli import parse_config

    given = parse_config(["dc2anet={steps: 20000, lr: 5e-4, betas: [0.5, 0.999], weights: {voxel: 10}}",
                          "training={grad_clip: null, lesion_oversample: 0.25}",
                          "bvalues={targets: [400, 800], b0_max: 10}", "adc={bvalues: null}",
                          "registration={dwi_motion: false}"])
    assert given["dc2anet"]["steps"] == "20000"  # the text this reading is for
    config = validate_config(given)
    assert config["dc2anet"]["steps"] == 20000 and type(config["dc2anet"]["steps"]) is int
    assert config["dc2anet"]["lr"] == 0.0005
    assert config["dc2anet"]["betas"] == [0.5, 0.999] and config["dc2anet"]["weights"]["voxel"] == 10
    assert config["training"]["grad_clip"] is None and config["training"]["lesion_oversample"] == 0.25
    assert config["bvalues"]["targets"] == [400, 800] and config["adc"]["bvalues"] is None
    assert config["registration"]["dwi_motion"] is False
    assert validate_config({"bvalues": {}, "dc2anet": {"steps": "2e4"}})["dc2anet"]["steps"] == 20000
    assert validate_config({"bvalues": {}, "device": "cpu"})["device"] == "cpu"  # a string stays a string


@pytest.mark.parametrize("block, message", [
    ({"dc2anet": {"steps": "many"}}, "dc2anet.steps: 'many' is not of type 'integer'"),
    ({"dc2anet": {"steps": "1.5"}}, "dc2anet.steps: '1.5' is not of type 'integer'"),
    ({"dc2anet": {"lr": "nan"}}, "dc2anet.lr: 'nan' is not of type 'number'"),
    ({"registration": {"dwi_motion": "maybe"}}, "registration.dwi_motion: 'maybe' is not of type 'boolean'"),
])
def test_text_that_is_not_the_schemas_type_fails_validation_naming_the_key(block, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({"bvalues": {}, **block})


@pytest.mark.workflow
def test_snakemake_config_override_of_a_nested_number_plans_the_training(tmp_path):
    """The command line a user types from the repository root (--directory keeps .snakemake/ out of the repo)."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "config/demo.yaml",
                           "--config", "dc2anet={steps: 20000}", "-n", "--directory", str(tmp_path),
                           "results/models/dc2anet/abdomen/model.pt"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^train\s+1$", proc.stdout, re.MULTILINE), proc.stdout[-3000:]


def test_sheet_with_missing_column_names_file_and_column(tmp_path):
    path = _sheet(tmp_path, drop="dicom_dir")
    with pytest.raises(SampleSheetError) as err:
        read_sample_sheet(path)
    assert str(path) in str(err.value) and "dicom_dir" in str(err.value)


def test_valid_sheet_gets_optional_columns(tmp_path):
    sheet = read_sample_sheet(_sheet(tmp_path))
    assert sheet.loc[0, "split"] == "" and sheet.loc[0, "vendor"] == ""


def test_sheet_with_bad_organ_names_the_row(tmp_path):
    path = _sheet(tmp_path)
    path.write_text(path.read_text().replace("brain", "knee"))
    with pytest.raises(SampleSheetError, match="row 2.*knee"):
        read_sample_sheet(path)


def test_a_sheet_skips_whole_comment_lines_and_keeps_a_hash_inside_a_value(tmp_path):
    path = _sheet(tmp_path)
    header, row = path.read_text().splitlines()
    # a spreadsheet's "UTF-8 text" starts with a byte-order mark; an indented comment is a comment too
    path.write_text(f"\ufeff# exported 2025-01-01\n{header}\n  # the case below was re-exported\n"
                    f"{row.replace('/data/x', '/data/case#12/DWI')}\n", encoding="utf-8")
    sheet = read_sample_sheet(path)
    assert list(sheet.columns[:2]) == ["cohort", "center"]
    assert len(sheet) == 1 and sheet.loc[0, "dicom_dir"] == "/data/case#12/DWI"


def test_an_invalid_subject_is_refused_by_row_and_rule_without_showing_the_value(tmp_path):
    """The subject column should hold a pseudonym; a patient ID typed there must not reach the message."""
    path = _sheet(tmp_path)
    path.write_text(path.read_text().replace("S0001", "MRN-7654321"))
    with pytest.raises(SampleSheetError, match=r"row 2: subject: .*not shown.*\^\[A-Za-z0-9\]\+\$.*never a "
                                               "patient ID") as error:
        read_sample_sheet(path)
    assert "7654321" not in str(error.value)




def test_a_misspelt_key_in_any_block_names_the_nearest_valid_one(tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config["dc2anet"]["n_residuals"] = 3
    config["dc2anet"]["weights"]["voxle"] = 10
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"dc2anet\.n_residuals' \(did you mean 'n_residual'\?\)"):
        load_config(path)
    del config["dc2anet"]["n_residuals"]
    config["training"]["bach_size"] = 4
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"did you mean"):
        load_config(path)


def test_schemas_ship_inside_the_package():
    import dwisynth.config

    assert dwisynth.config.CONFIG_SCHEMA.is_file()
    assert dwisynth.config.CONFIG_SCHEMA.parent == Path(dwisynth.config.__file__).parent / "schemas"


@pytest.mark.parametrize("path", ["config/config.yaml", "config/demo.yaml", "workflow_tests/config/config.yaml"])
def test_every_shipped_config_validates_under_the_strict_schema(path):
    from dwisynth.networks.base import BASELINES, build_network, config_block_name

    config = load_config(REPO / path)
    networks = [m for m in config["methods"] if m not in BASELINES]
    assert config["methods"] and networks
    for method in networks:  # every block builds its network, and training has a length
        assert build_network(method, config[config_block_name(method)], 2, 4, 0).training_steps() >= 1


def test_methods_admit_only_multi_b_networks():
    from dwisynth.networks.base import Network, _REGISTRY

    class CtOnly(Network):  # registers itself as a CT -> DWI network for the length of this test
        name, label, task = "ctonly", "CT only", "ct2dwi"

    try:
        with pytest.raises(ConfigError, match="methods.0: 'ctonly' is not one of"):
            validate_config({"bvalues": {}, "methods": ["ctonly"]})
        assert "ctonly" not in validate_config({"bvalues": {}})["methods"]
    finally:
        _REGISTRY.pop("ctonly")
