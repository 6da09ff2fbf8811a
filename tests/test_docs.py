"""The README documents what the code does: every setting, and the commands CI runs."""

from __future__ import annotations

import re

from conftest import ROOT
from function.config import ENVIRONMENT, Settings

README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table():
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", README, re.M))
    assert set(ENVIRONMENT) <= set(rows), set(ENVIRONMENT) - set(rows)


def test_ci_runs_the_readme_test_command():
    command = re.search(r"\*\*Install and test\*\*.*?```sh\n(.+?)\n```", README, re.S).group(1)
    assert command in (ROOT / ".ci" / "run").read_text()


def test_defaults_in_readme_match_the_code():
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", README, re.M))
    defaults = Settings()
    for key, (field, _) in ENVIRONMENT.items():
        value = getattr(defaults, field)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert float(rows[key]) == float(value), key
