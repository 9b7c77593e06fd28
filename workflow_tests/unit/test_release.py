"""What a reviewer checks before citing a release: one version everywhere, a licence, a citation, a changelog."""

import re
import tomllib
from importlib.metadata import version

import yaml

import dwisynth
from helpers import REPO


def test_one_version_in_the_package_its_metadata_the_citation_and_the_changelog():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert dwisynth.__version__ == version("dwisynth") == declared == str(citation["version"])
    assert re.search(rf"^## \[{re.escape(declared)}\] - \d{{4}}-\d{{2}}-\d{{2}}$",
                     (REPO / "CHANGELOG.md").read_text(), flags=re.M)


def test_the_licence_file_is_the_one_pyproject_declares():
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
    assert yaml.safe_load((REPO / "CITATION.cff").read_text())["license"] == "Apache-2.0"


def test_the_citation_names_both_papers():
    titles = [ref["title"] for ref in yaml.safe_load((REPO / "CITATION.cff").read_text())["references"]]
    assert any("Multi-b-Value DWI" in t for t in titles) and any("CT-to-DWI" in t for t in titles)


def test_the_readme_is_a_manual_not_a_lab_notebook():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 200
    assert max(len(line) for line in lines) <= 120
    text = "\n".join(lines)
    assert not re.search(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", text)  # commit hashes
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text)  # dated runs: docs/benchmarks.md holds them
    assert "make demo" in "\n".join(lines[:30]) and "make test" in "\n".join(lines[:30])
