"""envs/: one conda env per rule group, generated from pyproject's extras with requirements.lock's pins.

`snakemake --sdm conda` builds a rule's env on a cluster without this repo's .venv, so the env must hold
every package its script can import: these tests follow the script's imports through dwisynth (imports
inside functions included, as any code path may run) and look each one up in the group's requirements.
"""

import ast
import functools
import re
import sys
from importlib.metadata import packages_distributions

import pytest
from packaging.utils import canonicalize_name

from dwisynth.envs import GROUPS, conda_env, group_requirements, lock_pins
from helpers import REPO

PACKAGE = REPO / "dwisynth"


def _imports(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # the name may be a submodule
    return found


def _module_file(name: str):
    """dwisynth.a.b -> its file, or the nearest package/module above it that exists."""
    parts = name.split(".")
    while parts:
        base = REPO.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        parts = parts[:-1]
    return None


def third_party_imports(script) -> set[str]:
    """Top-level names of every non-stdlib module the script imports, itself or through dwisynth."""
    found, seen, pending = set(), set(), [script]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "dwisynth":
                module = _module_file(name)
                pending += [module] if module else []
            elif top not in sys.stdlib_module_names and top != "_logging":
                found.add(top)
    return found


def rules_with_envs():
    """(rule, script path, env file name) for every rule that runs a script."""
    found = []
    for smk in sorted((REPO / "rules").glob("*.smk")):
        for match in re.finditer(r"^\s*(?:rule|checkpoint) (\w+):\n(.*?)(?=^\s*(?:rule|checkpoint) \w+:|\Z)",
                                 smk.read_text(), re.S | re.M):
            body = match.group(2)
            script = re.search(r'script:\s*\n\s*"\.\./([^"]+)"', body)
            if script:
                env = re.search(r'conda:\s*\n\s*"\.\./envs/([^"]+)"', body)
                found.append((match.group(1), REPO / script.group(1), env.group(1) if env else None))
    return found


RULES = rules_with_envs()


@functools.cache
def _distributions():
    return packages_distributions()


def test_every_env_file_is_the_generated_one():
    on_disk = {p.name for p in (REPO / "envs").glob("*.yaml")}
    assert on_disk == set(GROUPS), "envs/ and dwisynth.envs.GROUPS disagree: run `make envs`"
    for name in GROUPS:
        assert (REPO / "envs" / name).read_text() == conda_env(name), f"envs/{name} is stale: run `make envs`"


def test_every_pin_is_the_lock_pin():
    lock = lock_pins(REPO / "requirements.lock")
    requirements = group_requirements("all")
    assert len(requirements) > 15
    for name, req in requirements.items():
        pinned = [s.version for s in req.specifier if s.operator == "=="]
        assert pinned, f"{req} in pyproject.toml is not pinned"
        assert lock.get(name) == pinned[0], f"pyproject pins {req}, requirements.lock {name}=={lock.get(name)}"


def test_every_script_rule_names_an_env():
    assert len(RULES) >= 25
    assert [rule for rule, _, env in RULES if env not in GROUPS] == []
    assert {env for _, _, env in RULES} >= {"convert.yaml", "preprocess.yaml", "networks.yaml", "evaluate.yaml"}


@pytest.mark.parametrize("rule, script, env", RULES, ids=[r for r, _, _ in RULES])
def test_rule_finds_every_import_in_its_env(rule, script, env):
    distributions = _distributions()
    allowed = set(group_requirements(GROUPS[env][0]))
    missing = {}
    for name in third_party_imports(script):
        dists = {canonicalize_name(d) for d in distributions.get(name, [name])}
        if not dists & allowed:
            missing[name] = sorted(dists)
    assert not missing, f"rule {rule} ({script.name}) imports {missing}, not in envs/{env} (pyproject extra " \
                        f"{GROUPS[env][0]!r}): add them to that extra or move the rule to another env"


def test_the_import_walk_sees_lazy_imports():
    """A network's script reaches torch and monai through imports inside functions."""
    found = third_party_imports(REPO / "scripts" / "train.py")
    assert {"torch", "monai", "numpy"} <= found and "pydicom" not in found
