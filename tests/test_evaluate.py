"""Evaluation loop, records, the JSONL store and checkpoint evaluation, on tiny models and data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attnrobust.attacks import predict
from attnrobust.config import AttackConfig
from attnrobust.errors import UserError
from attnrobust.evaluate import clean_accuracy, craft_and_score, evaluate_checkpoints, white_box, white_box_measures
from attnrobust.results import (DENOMINATORS, REQUIRED_KEYS, append_records, format_records, read_records,
                                Setting, attack_job_of, is_cross_seed, pack_bits,
                                record_key, write_records)

COUNTS = ("n", "target_clean_correct", "source_clean_correct", "both_clean_correct", "robust_correct",
          "robust_correct_on_both", "robust_correct_on_target_clean")


def tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()


def data(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def fast_cfg(**kw) -> AttackConfig:
    base = dict(fgsm_eps=[0.0, 0.1, 0.2], pgd_eps=0.2, pgd_alpha=0.05, pgd_steps=[2, 4], sanity_n=8)
    return AttackConfig(**{**base, **kw})


def by_key(records):
    return {record_key(r): r for r in records}


def test_default_config_is_the_papers():
    cfg = AttackConfig().validate()
    assert cfg.fgsm_eps == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    assert (cfg.pgd_eps, cfg.pgd_alpha, cfg.pgd_steps) == (0.2, 0.01, [5, 10, 20])
    assert not cfg.random_start and not cfg.keep_best


@pytest.mark.parametrize("change, field", [
    (dict(attacks=["fgsm", "cw"]), "attack.attacks"), (dict(attacks=[]), "attack.attacks"),
    (dict(fgsm_eps=[0.1, 1.2]), "attack.fgsm_eps"), (dict(fgsm_eps=[0.1, 0.1]), "attack.fgsm_eps"),
    (dict(pgd_eps=-0.1), "attack.pgd_eps"),
    (dict(pgd_alpha=0), "attack.pgd_alpha"), (dict(pgd_steps=[5, 0]), "attack.pgd_steps"),
    (dict(keep_best="yes"), "attack.keep_best"), (dict(apgd_steps=0), "attack.apgd_steps"),
])
def test_bad_config_names_the_field(change, field):
    with pytest.raises(UserError, match=field):
        AttackConfig(**change).validate()


def test_records_have_every_key_and_consistent_ratios():
    x, y = data()
    records = white_box(tiny(0), batches(x, y, 10), fast_cfg(attacks=["fgsm", "pgd", "apgd"], apgd_steps=4),
                        dataset="toy", name="a", quiet=True)
    assert len(records) == 3 + 2 + 1
    for r in records:
        assert set(REQUIRED_KEYS) <= set(r)
        assert r["denominators"] == DENOMINATORS and r["kind"] == "white-box"
        assert r["n"] == 24 and r["robust_accuracy"] == r["robust_correct"] / 24
        assert r["error"] == pytest.approx(1 - r["robust_accuracy"])
        assert r["clean_accuracy"] == r["target_clean_correct"] / 24
        if r["target_clean_correct"]:
            assert r["success_rate"] == pytest.approx(
                1 - r["robust_correct_on_target_clean"] / r["target_clean_correct"])
        json.dumps(r, allow_nan=False)
        assert "unbounded_eps" in r["flags"]
    eps0 = next(r for r in records if r["attack"] == "fgsm" and r["eps"] == 0)
    assert eps0["robust_correct"] == eps0["target_clean_correct"]  # eps 0 is the clean image
    assert [r["steps"] for r in records if r["attack"] == "pgd"] == [2, 4]
    assert next(r for r in records if r["attack"] == "apgd")["alpha"] is None


def test_counts_do_not_depend_on_the_batching():
    x, y = data()
    for keep_best in (False, True):
        cfg = fast_cfg(keep_best=keep_best, sanity_checks=False)
        one = white_box(tiny(0), batches(x, y, 24), cfg, dataset="toy", quiet=True)
        three = white_box(tiny(0), batches(x, y, 8), cfg, dataset="toy", quiet=True)
        assert [{k: r[k] for k in COUNTS} for r in one] == [{k: r[k] for k in COUNTS} for r in three]


@pytest.mark.parametrize("random_start", [False, True])
def test_transfer_diagonal_equals_white_box(random_start):
    x, y = data()
    models = {"a": tiny(0), "b": tiny(1), "c": tiny(2)}
    cfg = fast_cfg(random_start=random_start, keep_best=True)
    loader = batches(x, y, 12)
    matrix = craft_and_score({"a": models["a"], "b": models["b"]}, models, loader, cfg, dataset="toy", seed=3,
                             quiet=True)
    per_source = {"all": 3, "white-box": 1, "transfer": 2}  # targets a setting is scored on
    assert len(matrix) == 2 * sum(per_source[cfg.scope(st)] for st in cfg.settings())
    for name in ("a", "b"):
        wb = by_key(white_box(models[name], loader, cfg, dataset="toy", name=name, seed=3, quiet=True))
        diagonal = {k: r for k, r in by_key(matrix).items() if k[4] == k[5] == name}  # source, target
        assert diagonal.keys() == wb.keys()
        for k in wb:
            assert {c: diagonal[k][c] for c in COUNTS} == {c: wb[k][c] for c in COUNTS}
    for r in matrix:
        assert r["kind"] == ("white-box" if r["source"] == r["target"] else "transfer")
        # both sources are also targets, so every transfer record onto a or b is checked against white-box
        if r["kind"] == "transfer" and r["target"] in ("a", "b"):
            assert "transfer_ge_white_box" in r["flags"]
        if r["source"] == "a" and r["target"] == "b":
            clean_a = (predict(models["a"], x) == y)
            clean_b = (predict(models["b"], x) == y)
            assert r["source_clean_correct"] == clean_a.sum().item()
            assert r["target_clean_correct"] == clean_b.sum().item()
            assert r["both_clean_correct"] == (clean_a & clean_b).sum().item()


def test_keep_best_is_white_box_only_and_transfer_scores_the_final_iterate():
    # "fooled" is judged on the source: a best iterate would hand the targets the source's failures unperturbed
    x, y = data()
    models = {"a": tiny(0), "b": tiny(1)}
    loader = batches(x, y, 12)
    best = craft_and_score({"a": models["a"]}, models, loader, fast_cfg(keep_best=True), dataset="toy", quiet=True)
    final = craft_and_score({"a": models["a"]}, models, loader, fast_cfg(keep_best=False), dataset="toy", quiet=True)
    pgd_best = {(r["target"], r["steps"]): r for r in best if r["attack"] == "pgd"}
    pgd_final = {(r["target"], r["steps"]): r for r in final if r["attack"] == "pgd"}
    assert {r["iterate"] for (t, _), r in pgd_best.items() if t == "a"} == {"best"}
    assert {r["iterate"] for (t, _), r in pgd_best.items() if t == "b"} == {"final"}
    for key, r in pgd_final.items():
        assert r["iterate"] == "final"
        if key[0] == "b":
            assert r["robust_bits"] == pgd_best[key]["robust_bits"]
        else:  # keeping the best iterate only breaks more
            assert pgd_best[key]["robust_correct"] <= r["robust_correct"]


def test_records_carry_per_image_outcomes_that_match_the_counts():
    from attnrobust.results import unpack_bits

    x, y = data()
    models = {"a": tiny(0), "b": tiny(1)}
    records = craft_and_score({"a": models["a"]}, models, batches(x, y, 7), fast_cfg(), dataset="toy", quiet=True,
                       images="test[:24]")
    for r in records:
        robust, clean = unpack_bits(r["robust_bits"], r["n"]), unpack_bits(r["clean_bits"], r["n"])
        assert r["images"] == "test[:24]" and robust.sum() == r["robust_correct"]
        assert clean.sum() == r["target_clean_correct"]
        assert (robust & clean).sum() == r["robust_correct_on_target_clean"]
        expected_clean = (predict(models[r["target"]], x) == y).numpy()
        assert (clean == expected_clean).all()


def test_sanity_flags():
    x, y = data(32)
    model = tiny(0)
    y = predict(model, x)
    cfg = fast_cfg(fgsm_eps=[0.2], pgd_steps=[1, 2, 4], keep_best=True, sanity_n=32)
    records = white_box(model, batches(x, y, 32), cfg, dataset="toy", quiet=True)
    pgd = {r["steps"]: r for r in records if r["attack"] == "pgd"}
    assert "pgd_ge_fgsm" in pgd[4]["flags"] and "pgd_ge_fgsm" not in pgd[2]["flags"]  # 2 x 0.05 < 0.2
    assert "monotone_steps" in pgd[2]["flags"] and pgd[2]["flags"]["monotone_steps"]["ok"]
    assert records[0]["flags"]["unbounded_eps"]["ok"]
    assert all(isinstance(f["detail"], str) for r in records for f in r["flags"].values())


def test_masking_flags_fire_on_a_model_without_gradients():
    # Quantizing the input (round has zero gradient) masks the gradient: white-box attacks cannot move, so the
    # eps = 1 check keeps the clean accuracy, and an attack transferred from an unmasked twin beats white-box.
    class Quantized(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(torch.round(x * 4) / 4)

    x, _ = data(32)
    plain, masked = tiny(0), Quantized(tiny(0))
    y = predict(masked, x)
    cfg = fast_cfg(fgsm_eps=[0.2], pgd_alpha=0.1, pgd_steps=[4], keep_best=True, sanity_n=32)
    records = craft_and_score({"plain": plain, "masked": masked}, {}, batches(x, y, 32), cfg, dataset="toy", quiet=True)
    wb_masked = [r for r in records if r["kind"] == "white-box" and r["source"] == "masked"]
    assert all(not r["flags"]["unbounded_eps"]["ok"] for r in wb_masked)
    assert all(r["robust_correct"] == r["n"] for r in wb_masked)  # the attack never moved
    onto_masked = [r for r in records if r["source"] == "plain" and r["target"] == "masked"]
    assert any(not r["flags"]["transfer_ge_white_box"]["ok"] for r in onto_masked)
    wb_plain = [r for r in records if r["kind"] == "white-box" and r["source"] == "plain"]
    assert all(r["flags"]["unbounded_eps"]["ok"] for r in wb_plain)


def test_robust_accuracy_not_above_clean():
    x, y = data()
    for r in white_box(tiny(0), batches(x, y, 12), fast_cfg(), dataset="toy", quiet=True):
        assert r["robust_correct_on_target_clean"] <= r["target_clean_correct"]
        if r["attack"] == "pgd":
            assert r["robust_accuracy"] <= r["clean_accuracy"]


def test_clean_accuracy():
    x, y = data()
    model = tiny(0)
    assert clean_accuracy(model, batches(x, y, 5)) == pytest.approx((predict(model, x) == y).float().mean().item())


def test_training_mode_restored_after_evaluation():
    x, y = data()
    model = tiny(0).train()
    white_box(model, batches(x, y, 12), fast_cfg(), dataset="toy", quiet=True)
    assert model.training and all(p.requires_grad for p in model.parameters())


# ---- the JSONL store ----------------------------------------------------------------------------------------


@pytest.fixture()
def some_records():
    x, y = data(8)
    return white_box(tiny(0), batches(x, y, 8), fast_cfg(sanity_checks=False), dataset="toy", quiet=True)


def test_append_and_read_round_trip(tmp_path, some_records):
    path = tmp_path / "sub" / "results.jsonl"
    append_records(path, some_records[:2])
    append_records(path, some_records[2:])
    assert read_records(path) == some_records
    write_records(path, some_records[:1])
    assert read_records(path) == some_records[:1]


def test_truncated_last_line_is_ignored_with_a_warning(tmp_path, some_records):
    path = tmp_path / "results.jsonl"
    append_records(path, some_records)
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])  # a kill -9 mid-append
    with pytest.warns(UserWarning, match="truncated"):
        assert read_records(path) == some_records[:-1]
    with pytest.warns(UserWarning, match="truncated"):
        append_records(path, some_records[-1:])  # the partial line is cut, not glued onto
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_records(path) == some_records


def test_malformed_line_is_an_error_naming_file_and_line(tmp_path, some_records):
    path = tmp_path / "results.jsonl"
    lines = [json.dumps(r) for r in some_records]
    lines[1] = lines[1][:-10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"results\.jsonl:2"):
        read_records(path)
    path.write_text(json.dumps({"dataset": "toy"}) + "\n")
    with pytest.raises(UserError, match=r"results\.jsonl:1: .*missing keys"):
        read_records(path)
    with pytest.raises(UserError, match="no such results file"):
        read_records(tmp_path / "missing.jsonl")


def test_other_seeds_targets_score_the_same_attacks():
    """A target of another seed (craft_and_score's `others`) is scored on exactly the adversarial images its own
    seed's copy would be: the same counts and bits, its records naming the target's seed and the source's; never
    on white-box-only settings; and the same-seed records are what they were without it."""
    x, y = data()
    a, b = tiny(0), tiny(1)
    cfg = fast_cfg(keep_best=True)
    loader = batches(x, y, 12)
    plain = craft_and_score({"a": a}, {"b": b}, loader, cfg, dataset="toy", seed=3, quiet=True)
    crossed = craft_and_score({"a": a}, {}, loader, cfg, dataset="toy", seed=3, quiet=True, others={("b", 5): b})
    cross = [r for r in crossed if r["target"] == "b"]
    assert cross and all(r["seed"] == 5 and r["source_seed"] == 3 and r["target_seed"] == 5
                         and r["kind"] == "transfer" and is_cross_seed(r) and attack_job_of(r)[3:] == ("a", 3)
                         for r in cross)
    same = {record_key(r)[:7]: r for r in plain if r["target"] == "b"}
    assert len(same) == len(cross)  # transfer settings only, as for a target of the source's own seed
    for r in cross:
        twin = same[record_key({**r, "seed": 3})[:7]]
        assert {c: r[c] for c in COUNTS} == {c: twin[c] for c in COUNTS} and r["robust_bits"] == twin["robust_bits"]
    assert [r for r in crossed if r["target"] == "a"] == [r for r in plain if r["target"] == "a"]
    with pytest.raises(UserError, match="this seed's targets"):
        craft_and_score({"a": a}, {}, loader, cfg, dataset="toy", seed=3, quiet=True, others={("b", 3): b})


def test_record_key_and_format(some_records):
    keys = {record_key(r) for r in some_records}
    assert len(keys) == len(some_records)
    assert record_key(some_records[0]) == ("toy", "standard", (), 0, "model", "model", Setting("fgsm", 0.0), 0)
    table = format_records(some_records)
    lines = table.splitlines()
    assert len(lines) == 2 + len(some_records) and "robust%" in lines[0] and "pgd" in table
    assert format_records([]) == "(no records)"


def test_each_record_stores_the_setting_the_plan_made_and_reads_it_back():
    """One Setting from the attack plan to the record and back: what the crafting ran is what the record says,
    Setting.of(record) equals it (the key of the flags and the report), and its eps is stored exactly."""
    cfg = fast_cfg(attacks=["fgsm", "pgd", "apgd", "minimal"], keep_best=True, apgd_steps=3, minimal_steps=2,
                   minimal_max_eps=16 / 255, minimal_tol=4 / 255)
    x, y = data()
    models = {"a": tiny(0), "b": tiny(1)}
    loader = batches(x, y, 12)
    records = craft_and_score({"a": models["a"]}, models, loader, cfg, dataset="toy", quiet=True) + \
        white_box_measures(models["a"], loader, cfg, dataset="toy", name="a", quiet=True)
    planned = cfg.settings()
    assert {Setting.of(r) for r in records} == set(planned)
    for r in records:
        setting = Setting.of(r)
        assert {k: r[k] for k in setting.fields()} == setting.fields()
        assert cfg.scope(setting) in ("all", "white-box" if r["kind"] == "white-box" else "transfer")
    minimal = next(r for r in records if r["attack"] == "minimal")
    assert minimal["eps"] == 16 / 255  # exact, not rounded: the key rounds, the record does not
    assert Setting("fgsm", 0.1 + 0.05) == Setting("fgsm", 0.15) and len({Setting("fgsm", 0.1 + 0.05),
                                                                          Setting("fgsm", 0.15)}) == 1
    # APGD's two iterates are two settings (two records per target kind) but one column of the report's tables
    apgd = [s for s in planned if s.attack == "apgd"]
    assert len(set(apgd)) == 2 and len({s.column for s in apgd}) == 1


def test_a_panel_is_a_value_shown_as_its_label_and_ordered_by_width():
    from attnrobust.results import Panel

    records = [{"dataset": "d", "width": w, "regime": "FGSM-RS eps 0.1"} for w in (16, 8, 32)]
    panels = sorted(Panel.of(r) for r in records)
    assert [p.value("width") for p in panels] == [8, 16, 32]
    assert str(panels[0]) == "d · FGSM-RS eps 0.1 · width 8"
    assert panels[0].without("width") == Panel("d", "FGSM-RS eps 0.1")
    assert str(Panel.of({"dataset": "d"})) == "d" and Panel.of({"dataset": "d"}) == Panel("d")
    # a record of an axes study: its point in config order, the same panel as a legacy width record
    axes = {"dataset": "d", "axes": {"model_args.stem_stride": 2, "width": 8}}
    assert str(Panel.of(axes)) == "d · stem_stride 2 · width 8"
    assert Panel.of({"dataset": "d", "axes": {"width": 8}}) == Panel.of({"dataset": "d", "width": 8})
    assert sorted([Panel.of(axes), Panel.of({**axes, "axes": {"model_args.stem_stride": 1, "width": 16}})])[0] \
        .value("model_args.stem_stride") == 1


# ---- checkpoints ------------------------------------------------------------------------------------------------


@pytest.fixture()
def checkpoints(tmp_path):
    checkpoint = pytest.importorskip("attnrobust.checkpoint")
    models = pytest.importorskip("attnrobust.models")
    paths = {}
    for name, dataset, classes, seed in [("resnet14", "fashion-mnist-mini", 10, 0),
                                         ("cbam_resnet14", "fashion-mnist-mini", 10, 0),
                                         ("other", "cifar10", 10, 0), ("few", "fashion-mnist-mini", 5, 0)]:
        arch = name if name in ("resnet14", "cbam_resnet14") else "resnet14"
        torch.manual_seed(1)
        model = models.build_model(arch, classes, in_channels=1 if dataset != "cifar10" else 3, width=4)
        meta = {"dataset": dataset, "num_classes": classes, "seed": seed}
        paths[name] = checkpoint.save_checkpoint(tmp_path / f"{name}.safetensors", model, meta)
    return paths


@pytest.mark.slow
def test_evaluate_checkpoints_white_box_and_transfer(checkpoints):
    cfg = fast_cfg(fgsm_eps=[0.0, 0.1], pgd_steps=[2], sanity_n=4)
    wb = evaluate_checkpoints([checkpoints["resnet14"]], None, cfg, n=6, batch_size=4, device="cpu", quiet=True)
    assert {(r["source"], r["target"]) for r in wb} == {("resnet14", "resnet14")}
    assert all(r["n"] == 6 and r["dataset"] == "fashion-mnist-mini" for r in wb)
    tr = evaluate_checkpoints([checkpoints["resnet14"]], [checkpoints["cbam_resnet14"], checkpoints["resnet14"]],
                              cfg, n=6, batch_size=4, device="cpu", quiet=True)
    assert {(r["source"], r["target"]) for r in tr} == {("resnet14", "resnet14"), ("resnet14", "cbam_resnet14")}
    for r in tr:
        if r["target"] == "resnet14":
            assert {c: r[c] for c in COUNTS} == {c: by_key(wb)[record_key(r)][c] for c in COUNTS}


@pytest.mark.slow
def test_evaluate_checkpoints_refuses_mixed_datasets_and_class_counts(checkpoints):
    cfg = fast_cfg()
    with pytest.raises(UserError, match="cifar10"):
        evaluate_checkpoints([checkpoints["resnet14"]], [checkpoints["other"]], cfg, n=4, device="cpu")
    with pytest.raises(UserError, match="classes"):
        evaluate_checkpoints([checkpoints["resnet14"]], [checkpoints["few"]], cfg, n=4, device="cpu")


@pytest.mark.slow
def test_cli_attack_and_transfer_write_records(checkpoints, tmp_path, capsys):
    from attnrobust.cli import main

    out = tmp_path / "results.jsonl"
    common = ["--num-images", "4", "--batch-size", "4", "--set", "attack.fgsm_eps=[0, 0.1]", "--set",
              "attack.pgd_steps=[1, 2]", "--quiet", "--device", "cpu", "--out", str(out)]
    assert main(["attack", str(checkpoints["resnet14"]), *common]) == 0
    assert main(["transfer", "--source", str(checkpoints["resnet14"]), "--target",
                 str(checkpoints["cbam_resnet14"]), *common]) == 0
    printed = capsys.readouterr().out
    assert "robust%" in printed and "records appended" in printed
    records = read_records(out)
    assert len(records) == 4 + 8 and {r["kind"] for r in records} == {"white-box", "transfer"}
    assert main(["attack", str(checkpoints["resnet14"]), *common, "--set", "attack.pgd_eps=2"]) == 2


@pytest.mark.slow
def test_torchrun_two_processes_give_the_records_of_one(checkpoints, tmp_path):
    """Under torchrun each rank attacks its shard of the test images and the counts are all-reduced: the records
    equal a single process's (n not divisible by 2, so an uneven split is covered), and only rank 0 writes."""
    import os
    import subprocess
    import sys

    args = ["--num-images", "13", "--batch-size", "4", "--set", "attack.fgsm_eps=[0, 0.1]", "--set",
            "attack.pgd_steps=[1, 2]", "--set", "attack.keep_best=true", "--quiet", "--device", "cpu"]
    source, target = str(checkpoints["resnet14"]), str(checkpoints["cbam_resnet14"])
    single, double = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "attnrobust", "transfer", "--source", source, "--target", target, *args, "--out",
                           str(double)], capture_output=True, text=True, env=env, timeout=300)
    # (the failing rank's own words come before the launcher's traceback: keep both ends; an unexplained SIGABRT
    # of one rank was seen once, under a loaded full suite)
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-1500:]
    from attnrobust.cli import main

    # the single process is this one, with one thread as each rank has
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["transfer", "--source", source, "--target", target, *args, "--out", str(single)]) == 0
    finally:
        torch.set_num_threads(threads)
    one, two = read_records(single), read_records(double)
    assert len(two) == len(one) == 2 * (2 + 2)
    assert all(r["n"] == 13 for r in two)
    for r in one:
        match = by_key(two)[record_key(r)]
        assert {c: match[c] for c in COUNTS} == {c: r[c] for c in COUNTS}


def test_white_box_measures_minimal_eps_and_autoattack():
    from attnrobust.results import unpack_bits, unpack_floats

    x, y = data()
    cfg = fast_cfg(attacks=["fgsm", "minimal", "autoattack"], minimal_max_eps=0.2, minimal_tol=0.02,
                   minimal_steps=3, autoattack_eps=0.05, autoattack_steps=3, autoattack_queries=20,
                   autoattack_targets=2)
    records = white_box(tiny(0), batches(x, y, 10), cfg, dataset="toy", quiet=True, images="test[:24]")
    by = {r["attack"]: r for r in records if r["attack"] != "fgsm"}
    minimal, aa = by["minimal"], by["autoattack"]
    values = unpack_floats(minimal["min_eps"], minimal["n"])
    clean = unpack_bits(minimal["clean_bits"], minimal["n"])
    assert (values[~clean] == 0).all() and ((values > 0) | ~clean).all()
    assert (unpack_bits(minimal["robust_bits"], minimal["n"]) == np.isinf(values)).all()
    # the curve is read off the per-image values: correct at eps iff minimal eps > eps
    assert minimal["fine_correct"] == [int((values > e).sum()) for e in minimal["fine_grid"]]
    assert minimal["fine_correct"][0] == minimal["target_clean_correct"]
    assert aa["robust_correct"] <= aa["target_clean_correct"] and "gradient_masking" in aa["flags"]
    assert set(aa["broken_by"]) <= {"apgd-ce", "apgd-t", "square"}
    assert all(r["kind"] == "white-box" for r in records)


def test_the_stored_minimal_eps_is_never_above_a_radius_where_another_attack_succeeded():
    """Issue 23: the primary measure is the per-image minimum over every white-box attack of the record set. A
    deliberately weak minimal eps (one cross-entropy step per radius, grid 0.05) leaves images that FGSM, PGD or the
    AutoAttack ensemble broke at a smaller radius; the stored value must be at most that radius, every derived
    field must follow, and a second pass over the records (as a study's union makes) must change nothing."""
    from attnrobust.evaluate import sanity_flags
    from attnrobust.results import unpack_bits, unpack_floats

    x, y = data()
    cfg = fast_cfg(attacks=["fgsm", "pgd", "apgd", "minimal", "autoattack"], fgsm_eps=[0.0, 0.03, 0.06],
                   pgd_eps=0.06, pgd_alpha=0.01, pgd_steps=[8], keep_best=True, apgd_steps=8,
                   minimal_max_eps=0.1, minimal_tol=0.05, minimal_steps=1, minimal_candidates=0,
                   minimal_cross_entropy=True, autoattack_eps=0.04, autoattack_version="custom",
                   autoattack_steps=4, autoattack_queries=20, autoattack_targets=2)
    records = white_box(tiny(0), batches(x, y, 12), cfg, dataset="toy", quiet=True, images="test[:24]")
    (minimal,) = [r for r in records if r["attack"] == "minimal"]
    n = minimal["n"]
    values = unpack_floats(minimal["min_eps"], n)
    checked = 0
    for w in records:
        if w["kind"] == "white-box" and w["attack"] != "minimal":
            broken = unpack_bits(w["clean_bits"], n) & ~unpack_bits(w["robust_bits"], n)
            assert (values[broken] <= np.float32(w["eps"])).all(), (w["attack"], w["eps"])
            checked += int(broken.sum())
    assert checked > 0 and sum(minimal["min_eps_lowered_by"].values()) > 0  # the weak attack was overruled
    assert (unpack_bits(minimal["robust_bits"], n) == np.isinf(values)).all()
    assert minimal["robust_correct"] == int(np.isinf(values).sum())
    assert minimal["fine_correct"] == [int((values > np.float32(e) * (1 + 1e-6)).sum()) for e in minimal["fine_grid"]]
    assert [r for r in sanity_flags(records) if r["attack"] == "minimal"] == [minimal]
    # a common corruption breaks images without any L-inf budget (its eps is 0): it must lower nothing
    corrupted = {**records[0], "attack": "corruption", "eps": 0.0, "steps": None, "corruption": "fog",
                 "severity": 5, "robust_bits": pack_bits(np.zeros(n, bool))}
    assert [r for r in sanity_flags([*records, corrupted]) if r["attack"] == "minimal"] == [minimal]
    assert minimal["min_eps_attack"] == {"steps": 1, "candidates": 0, "cross_entropy": True}
    from attnrobust.report.readme import _minimal_label

    assert _minimal_label(minimal).startswith("PGD-1 per radius on the cross-entropy, grid 12.8/255; lowered")


def test_autoattack_records_name_their_version_and_budgets():
    x, y = data(8)
    records = white_box(tiny(0), batches(x, y, 8), fast_cfg(attacks=["autoattack"], autoattack_eps=0.02),
                        dataset="toy", quiet=True)
    (aa,) = records
    # the default is the fast version; 3 classes: no APGD-T (its DLR loss needs 4), so no targets
    assert aa["autoattack"] == {"version": "fast", "attacks": ["apgd-ce", "square"], "steps": 20, "queries": 1000,
                                "targets": 0}
    assert aa["steps"] == 20
    # the report's threat model names them
    from attnrobust.report.readme import _autoattack_label

    assert _autoattack_label(aa) == ("version fast at eps 0.02 (5.1/255): APGD-CE 20 steps, Square 1000 queries")


@pytest.mark.parametrize("kw, match", [
    (dict(autoattack_version="standard", autoattack_steps=20), "attack.autoattack_steps = 20 contradicts "
                                                               "attack.autoattack_version"),
    (dict(autoattack_version="fast", autoattack_queries=5000), "attack.autoattack_version"),
    (dict(autoattack_version="strong"), "attack.autoattack_version"),
    (dict(minimal_candidates=-1), "attack.minimal_candidates"),
    (dict(minimal_candidates=0), "attack.minimal_candidates"),
    (dict(minimal_cross_entropy="yes"), "attack.minimal_cross_entropy"),
])
def test_autoattack_version_and_minimal_keys_are_checked(kw, match):
    with pytest.raises(UserError, match=match):
        AttackConfig(**kw)


def test_autoattack_version_sets_the_budgets():
    standard = AttackConfig(autoattack_version="standard")
    assert (standard.autoattack_steps, standard.autoattack_queries, standard.autoattack_targets) == (100, 5000, 9)
    assert AttackConfig(autoattack_version="standard", autoattack_steps=100).autoattack_steps == 100  # agrees: ok
    fast = AttackConfig()
    assert (fast.autoattack_version, fast.autoattack_steps, fast.autoattack_queries, fast.autoattack_targets) == (
        "fast", 20, 1000, 3)
    # the explicit keys of configs written before versions existed keep working: fast's values read as fast,
    # anything else as custom (the record then says so)
    assert AttackConfig(autoattack_steps=20, autoattack_queries=1000, autoattack_targets=3).autoattack_version == "fast"
    assert AttackConfig(autoattack_steps=50).autoattack_version == "custom"
    custom = AttackConfig(autoattack_version="custom", autoattack_targets=5)
    assert (custom.autoattack_steps, custom.autoattack_queries, custom.autoattack_targets) == (20, 1000, 5)


def test_minimal_eps_of_a_model_nothing_breaks_is_written_as_json(tmp_path):
    """A robust model (here one whose prediction ignores its input) leaves most images unbroken: their minimal eps
    is inf, the median null, and the record still goes through the JSONL store, which refuses NaN and inf."""
    from attnrobust.results import append_records, read_records, unpack_floats

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.tensor([5.0, 0.0]))

        def forward(self, x):
            return self.bias + 0 * x.flatten(1).sum(1, keepdim=True)

    x, _ = data()
    y = torch.zeros(len(x), dtype=torch.long)  # the constant prediction is right for every image
    cfg = fast_cfg(attacks=["minimal"], minimal_max_eps=0.1, minimal_tol=0.05, minimal_steps=2)
    (record,) = [r for r in white_box(Constant(), batches(x, y, 10), cfg, dataset="toy", quiet=True)
                 if r["attack"] == "minimal"]
    assert record["median_min_eps"] is None and np.isinf(unpack_floats(record["min_eps"], record["n"])).all()
    path = tmp_path / "results.jsonl"
    append_records(path, [record])
    assert read_records(path)[0]["median_min_eps"] is None
