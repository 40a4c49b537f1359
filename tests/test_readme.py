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


# ---- every page the README links to (docs/*.md) names commands, flags and config keys that exist --------------


def _pages() -> list:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _verbs() -> dict[str, set[str]]:
    """{verb: its option strings} from the CLI's own parser."""
    import argparse

    from attnrobust.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {verb: {s for action in p._actions for s in action.option_strings} for verb, p in sub.choices.items()}


def _config_keys() -> dict[str, set[str]]:
    """{section: its keys} from the config's dataclasses (every section a study config may hold)."""
    import dataclasses

    from attnrobust import config

    sections = {"study": config.StudySection, "train": config.TrainConfig, "attack": config.AttackConfig,
                "eval": config.EvalSection}
    for name in ("verdict", "slurm"):  # sections that not every version has
        cls = getattr(config, f"{name.capitalize()}Section", None)
        if cls is not None:
            sections[name] = cls
    keys = {s: {f.name for f in dataclasses.fields(c)} for s, c in sections.items()}
    try:  # [slurm] also passes submitit's own Slurm parameters through (attnrobust.cluster)
        import submitit

        keys["slurm"] |= submitit.SlurmExecutor._valid_parameters()
    except ImportError:
        pass
    return keys


def _code_spans(text: str) -> list[str]:
    fenced = [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S) for line in block.splitlines()]
    return re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S)) + fenced


def test_documented_commands_and_flags_exist():
    verbs = _verbs()
    for page in _pages():
        for span in _code_spans(page.read_text()):
            for command in re.findall(r"(?:^|&&\s*|\s)attnrobust ([a-z]+)((?: [^|;`]*)?)", span):
                verb, rest = command
                if verb not in verbs:  # e.g. prose like "attnrobust reads ..." never sits in a code span
                    raise AssertionError(f"{page.name}: `attnrobust {verb}` is not a verb ({', '.join(verbs)})")
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
                    assert flag in verbs[verb], f"{page.name}: `attnrobust {verb} ... {flag}`: no such option"


def test_documented_config_keys_exist():
    keys = _config_keys()
    for page in _pages():
        for span in _code_spans(page.read_text()):
            for section, key in re.findall(r"(?<![\w./-])(study|train|attack|eval|verdict|slurm)\.([a-z_]+)", span):
                if section in keys and key not in ("py", "toml", "md", "json", "jsonl", "csv"):  # file names
                    assert key in keys[section], f"{page.name}: `{section}.{key}` is not a config key"


def test_links_between_pages_resolve():
    for page in _pages():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
