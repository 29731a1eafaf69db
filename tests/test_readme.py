"""The README is the consumer contract: it must document every column of every table."""

from __future__ import annotations

import re

import pytest
from conftest import REPO_ROOT

from jobs.schemas import ALL_TABLES, features_table

DOCUMENTED = (*ALL_TABLES, features_table("<modality>"))


@pytest.mark.parametrize("spec", DOCUMENTED, ids=lambda spec: spec.name)
def test_readme_documents_every_column(spec):
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split(f"### `{spec.name}`", 1)[1].split("\n### ", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", section))
    missing = [field.name for field in spec.schema.fields if field.name not in documented]
    assert not missing, f"README's {spec.name} section lacks {missing}"


def test_readme_names_the_two_commands_ci_runs():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "bash infra/demo.sh" in readme and "bash infra/test.sh" in readme
    assert "exec bash infra/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()
