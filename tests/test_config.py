"""Configs: every shipped one parses and validates; bad ones fail with one line naming the key."""

from __future__ import annotations

import tomllib

import pytest

from attnrobust.config import SHIPPED, load_config, parse_config, to_toml
from attnrobust.errors import UserError


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_parses_and_validates(name):
    cfg = load_config(name)
    assert cfg.study.name == name
    assert cfg.study.datasets and cfg.study.models
    assert len(cfg.study.seeds) >= 3  # a verdict about architectures needs several training seeds
    adversarial = [{**cfg.train, **r} for r in cfg.study.regimes or [cfg.train]]
    adversarial = [r for r in adversarial if r.get("adversarial", "none") != "none"]
    if adversarial:  # attacked at its adversarial training budget (where the paper's 0.2 leaves every model at 0%)
        assert {r["adv_eps"] for r in adversarial} == {cfg.attack.pgd_eps}
        return
    # the paper's attack settings in every config of standard training
    assert cfg.attack.pgd_eps == 0.2 and cfg.attack.pgd_alpha == 0.01 and list(cfg.attack.pgd_steps) == [5, 10, 20]
    assert [round(e, 2) for e in cfg.attack.fgsm_eps] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


@pytest.mark.parametrize("name", SHIPPED)
def test_resolved_config_round_trips_through_toml(name):
    cfg = load_config(name)
    data = cfg.to_dict()
    assert tomllib.loads(to_toml(data)) == data
    assert parse_config(tomllib.loads(to_toml(data))).to_dict() == data


def test_overrides_apply_with_toml_values():
    cfg = load_config("quick", ["train.epochs=2", "study.seeds=[0, 1]", "attack.pgd_steps=[1,2]",
                                "study.name=other"])
    assert cfg.train["epochs"] == 2 and cfg.study.seeds == [0, 1]
    assert list(cfg.attack.pgd_steps) == [1, 2] and cfg.study.name == "other"


def _data(**sections):
    data = load_config("quick").to_dict()
    for section, table in sections.items():
        data[section] = {**data[section], **table}
    return data


@pytest.mark.parametrize("bad, words", [
    (dict(study={"modles": ["resnet14"]}), ["study.modles", "unknown key", "models"]),
    (dict(study={"models": ["resnet15"]}), ["study.models[0]", "resnet15", "resnet14"]),
    (dict(study={"datasets": ["mnist"]}), ["study.datasets[0]", "mnist", "fashion-mnist"]),
    (dict(study={"seeds": [0, 0]}), ["study.seeds", "duplicates"]),
    (dict(study={"seeds": "0"}), ["study.seeds", "list"]),
    (dict(study={"seeds": [0, -1]}), ["study.seeds: must be integers >= 0"]),  # every seed, not only the first
    (dict(train={"epochs": "ten"}), ["train.epochs", "int"]),
    (dict(train={"epochs": 0}), ["train.epochs: must be a positive integer"]),
    (dict(train={"lr": -1}), ["train.lr: must be a positive number"]),
    (dict(train={"model": "vgg16"}), ["train.model", "study.models"]),
    (dict(train={"nosuch": 1}), ["train.nosuch", "unknown key"]),
    (dict(attack={"pgd_eps": 1.5}), ["attack.pgd_eps"]),
    (dict(attack={"pgd_steps": [0, 5]}), ["attack.pgd_steps"]),
    (dict(attack={"attacks": ["fgsm", "cw"]}), ["cw"]),
    (dict(eval={"n": -1}), ["eval.n"]),
    (dict(eval={"transfer_sources": "all"}), ["eval.transfer_sources", "other-seeds", "same-seed", "'all'"]),
])
def test_bad_values_name_the_key(bad, words):
    with pytest.raises(UserError) as err:
        parse_config(_data(**bad))
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


def test_unknown_section_and_shipped_name():
    with pytest.raises(UserError, match="paperz"):
        load_config("paperz")
    with pytest.raises(UserError, match="unknown key"):
        parse_config({**_data(), "extra": {}})


def test_bad_toml_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[study\nname = 1")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(path)
    with pytest.raises(UserError, match="SECTION.KEY=VALUE"):
        load_config("quick", ["epochs=3"])


def test_transfer_sources_default_is_left_out_of_the_stored_config():
    cfg = parse_config(_data())
    assert cfg.eval.transfer_sources == "other-seeds"
    assert "transfer_sources" not in cfg.to_dict()["eval"]  # a run folder from before the key still resumes
    cfg = parse_config({**_data(), "eval": {"transfer_sources": "same-seed"}})
    assert parse_config(tomllib.loads(to_toml(cfg.to_dict()))).eval.transfer_sources == "same-seed"


def test_verdict_section_defaults_round_trip_and_errors_name_the_key():
    cfg = parse_config(_data())
    assert (cfg.verdict.margin_pp, cfg.verdict.margin_eps, cfg.verdict.alpha) == (2.0, 0.5, 0.05)
    assert "verdict" not in cfg.to_dict()  # defaults: an old run folder's config.toml still matches on resume
    cfg = parse_config({**_data(), "verdict": {"margin_pp": 1.5}})
    assert cfg.verdict.margin_pp == 1.5
    assert parse_config(tomllib.loads(to_toml(cfg.to_dict()))).verdict == cfg.verdict
    for table, key in (({"margin_pp": 0}, "verdict.margin_pp"), ({"margin_eps": -1}, "verdict.margin_eps"),
                       ({"alpha": 0.7}, "verdict.alpha"), ({"margin": 2}, "verdict.margin"),
                       ({"margin_pp": "2"}, "verdict.margin_pp")):
        with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
            parse_config({**_data(), "verdict": table})
        assert "\n" not in str(err.value)


def test_a_folder_named_like_a_shipped_config_does_not_hide_it(tmp_path, monkeypatch):
    # `attnrobust run quick --out quick` twice from the same folder: the second run must still read the shipped config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").mkdir()
    assert load_config("quick").study.name == "quick"
