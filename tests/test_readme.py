"""The README stays true: CI installs with exactly the README's commands, and the configs it names exist."""

from __future__ import annotations

import re

from conftest import REPO

from attnrobust.config import SHIPPED


def _fenced_commands(text: str) -> list[str]:
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = _fenced_commands(readme)
    quick = next(c for c in commands if c.endswith("attnrobust run"))
    tests = next(c for c in commands if "pytest" in c)
    steps = [s.strip() for s in quick.split("&&") if s.strip().startswith("pip")]
    steps += [s.strip() for s in tests.split("&&") if s.strip().startswith("pip")]
    for step in steps:
        assert step in ci, f"README step {step!r} is not in .ci/run"
    assert "python -m pytest" in ci and "python -m pytest" in tests


def test_readme_names_every_shipped_config():
    readme = (REPO / "README.md").read_text()
    for name in SHIPPED:
        assert f"`{name}`" in readme, name
