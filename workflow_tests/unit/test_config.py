"""Config and sample-sheet validation: defaults, and errors that name the file."""

from pathlib import Path

import pytest
import yaml

from dwisynth.config import load_config, read_sample_sheet, validate_config
from dwisynth.errors import ConfigError, SampleSheetError

from helpers import REPO, write_sheet as _sheet


def test_demo_config_validates_and_gets_defaults(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
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
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
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


@pytest.mark.parametrize("path", ["config/config.yaml", "config/examples/multicenter_tcga.yaml",
                                  "workflow_tests/config/config.yaml"])
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
