"""The CLI's surface: every verb is listed and documented; user errors are one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attnrobust.cli import build_parser, main

VERBS = ["run", "train", "attack", "transfer", "report", "ls", "data", "models"]


def test_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for verb in VERBS:
        assert f"    {verb} " in out or f"    {verb}\n" in out, verb


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    assert "usage: attnrobust " + verb in capsys.readouterr().out


def test_parser_verbs_match_the_documented_list():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "verb")
    assert sorted(subparsers.choices) == sorted(VERBS)


def test_python_dash_m_runs_and_user_error_is_one_line_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "attnrobust", "run", str(tmp_path / "missing.toml")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnrobust: error: ") and "missing.toml" in lines[0]
    assert "Traceback" not in done.stderr


def test_ls_and_a_bad_config_are_answered_without_importing_torch(tmp_path):
    # torch takes seconds to import: `ls` answers in 0.15 s and a mistake in a config before the study's modules load
    # (0.15 s against 2.65 s when they loaded the study's modules first: benchmarks/startup.py, docs/benchmarks.md)
    probe = ("import sys; from attnrobust.cli import main; "
             f"codes = [main(['ls', {str(tmp_path)!r}]), main(['run', {str(tmp_path / 'missing.toml')!r}])]; "
             "print(codes, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "[0, 2] False", done.stdout + done.stderr


def test_no_verb_prints_help(capsys):
    assert main([]) == 0
    assert "VERB" in capsys.readouterr().out


def test_unwritable_output_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(["train", "--dataset", "fashion-mnist-mini", "--model", "resnet14", "--set", "train.width=4",
                 "--set", "train.epochs=1", "--out", str(blocker / "run"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("attnrobust: error: ") and "a-file" in err[0]
    assert blocker.read_text() == "not a folder"


def test_attack_autoattack_version_is_one_setting_away():
    from attnrobust.cli import build_parser
    from attnrobust.config import attack_config

    args = build_parser().parse_args(["attack", "model.pt", "--set", 'attack.attacks=["autoattack"]',
                                      "--set", "attack.autoattack_version=standard"])
    cfg = attack_config(args.overrides)
    assert (cfg.autoattack_version, cfg.autoattack_steps, cfg.autoattack_queries, cfg.autoattack_targets) == (
        "standard", 100, 5000, 9)
    assert attack_config(build_parser().parse_args(["attack", "model.pt"]).overrides).autoattack_version == "fast"


def test_attack_settings_have_the_study_configs_spelling_and_errors(tmp_path, capsys):
    """`attack`/`transfer` take [attack] keys through --set, as a study config spells them: one spelling per
    setting, and an error names section.key; a key of another section is refused in one line."""
    from attnrobust.cli import main
    from attnrobust.config import attack_config

    cfg = attack_config(["attack.pgd_steps=[5,10]", "attack.fgsm_eps=[0, 0.1]", "attack.keep_best=true"])
    assert (cfg.pgd_steps, cfg.fgsm_eps, cfg.keep_best) == ([5, 10], [0.0, 0.1], True)
    for bad, says in (("attack.pgd_steps=5", "attack.pgd_steps: expected a list"),
                      ("attack.pgd_eps=2", "attack.pgd_eps"),
                      ("attack.pgd_stepz=[5]", "attack.pgd_stepz: unknown key"),
                      ("train.epochs=3", "only [attack] keys apply here")):
        assert main(["attack", str(tmp_path / "none.safetensors"), "--set", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (bad, err)
