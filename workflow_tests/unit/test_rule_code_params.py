"""Every rule reruns when the code it runs changes: Snakemake itself watches only the rule's script."""

import re

from helpers import REPO


def _rules():
    for path in sorted((REPO / "rules").glob("*.smk")):
        text = path.read_text()
        starts = [m.start() for m in re.finditer(r"^\s*(?:rule|checkpoint) \w+:", text, flags=re.M)]
        for start, end in zip(starts, [*starts[1:], len(text)]):
            yield path.name, text[start:end]


def test_every_rule_has_a_code_param_over_the_script_it_runs():
    rules = list(_rules())
    assert len(rules) > 25
    for name, block in rules:
        rule = re.search(r"(?:rule|checkpoint) (\w+):", block).group(1)
        script = re.search(r'script:\s+"\.\./scripts/(\w+\.py)"', block)
        assert script, f"{name}: rule {rule} runs no script; give it a code param over what it runs"
        params = re.search(r"\n(\s+)params:\n((?:\1\s+.*\n|\s*\n)+)", block)
        assert params and f'code=script_code("{script.group(1)}")' in params.group(2), \
            f"{name}: rule {rule} needs code=script_code(\"{script.group(1)}\") in its params"
