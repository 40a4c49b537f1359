"""Corruptions (attnrobust.corruptions): every corruption of both families, at every severity, on a small batch of
real Fashion-MNIST images (the shipped subset) and CIFAR-shaped images built from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attnrobust.corruptions import FAMILIES, SEVERITIES, corrupt, expand_names, family_of
from attnrobust.errors import UserError

# Published tables that are not monotone in the mean absolute difference to the clean image, and why; every other
# corruption must be strictly monotone in it.
NOT_MONOTONE = {
    ("CIFAR-10-C-style", "saturate"): "severities 1-2 desaturate (x0.3, x0.1), 3-5 oversaturate (x1.5 ...)",
    ("CIFAR-10-C-style", "elastic_transform"): "the table trades the affine jitter (2.56 px at 1) for elastic "
                                               "displacement (at 5: 0.96 px jitter)",
    ("CIFAR-10-C-style", "glass_blur"): "severities 3 and 5 blur more, which smooths the shuffled pixels back",
    ("CIFAR-10-C-style", "motion_blur"): "severities 3 and 4 share sigma 2 (radius 6 vs 8): in the numpy kernel the "
                                         "taps past 3 sigma weigh nothing, so they differ by the random angle only",
    ("MNIST-C-style", "glass_blur"): "severity 1 shuffles twice with max_delta 1, severity 2 once with max_delta 2: "
                                     "on these images 1 changes them slightly more (mean 0.076 vs 0.074)",
    ("MNIST-C-style", "spatter"): "MNIST-C's table moves from many small to few large mud drops at severity 4",
    ("MNIST-C-style", "fog"): "severities 3 and 4 share the strength 2.5 and differ in the fractal's decay only",
}
N = 24


@pytest.fixture(scope="module")
def batches() -> dict[str, np.ndarray]:
    from attnrobust.data import load_dataset

    grey = load_dataset("fashion-mnist-mini", "test")[0][:N].numpy()
    rng = np.random.default_rng(0)
    # CIFAR-shaped: the garments padded to 32x32, each tinted with a random colour over a smooth random background
    from scipy import ndimage

    background = ndimage.gaussian_filter(rng.random((N, 3, 32, 32)), (0, 0, 3, 3))
    background = (background - background.min()) / (background.max() - background.min())
    garment = np.pad(grey[:, 0] / 255, ((0, 0), (2, 2), (2, 2)))[:, None] * rng.random((N, 3, 1, 1))
    rgb = np.rint(255 * np.clip(0.5 * background + garment, 0, 1)).astype(np.uint8)
    return {"MNIST-C-style": grey, "CIFAR-10-C-style": rgb}


CASES = [(label, name) for label, (_, family) in FAMILIES.items() for name in family]


@pytest.mark.parametrize("label,name", CASES, ids=[f"{label[:5]}-{name}" for label, name in CASES])
def test_every_corruption(batches, label, name):
    clean = batches[label]
    distance = []
    for severity in SEVERITIES:
        out = corrupt(clean, name, severity, dataset="d")
        assert out.shape == clean.shape and out.dtype == np.uint8
        distance.append(np.abs(out.astype(float) - clean).mean() / 255)
        if severity in (1, 5):
            again = corrupt(clean, name, severity, dataset="d")
            assert again.tobytes() == out.tobytes()  # same seed, same bytes
            floats = corrupt(clean.astype(np.float32) / 255, name, severity, dataset="d")
            assert floats.dtype == np.float32 and floats.shape == clean.shape
            assert floats.min() >= 0 and floats.max() <= 1
            # the image's draws depend on its index, not on the batch it is in
            single = corrupt(clean[3:4], name, severity, dataset="d", indices=[3])
            assert single.tobytes() == out[3:4].tobytes()
    assert distance[0] > 0, f"{name}: severity 1 leaves the images unchanged"
    if (label, name) in NOT_MONOTONE:
        assert distance[-1] > 0
    else:
        assert all(a < b for a, b in zip(distance, distance[1:])), f"{name}: not monotone: {distance}"


def test_random_corruptions_differ_by_image_index_and_dataset(batches):
    grey = np.repeat(batches["MNIST-C-style"][:1], 2, axis=0)  # the same image twice
    for name in ("shot_noise", "impulse_noise", "glass_blur", "rotate", "fog"):
        out = corrupt(grey, name, 3, dataset="d")
        assert out[0].tobytes() != out[1].tobytes(), name  # different index, different noise
        other = corrupt(grey, name, 3, dataset="other")
        assert other.tobytes() != out.tobytes(), name
    rgb = np.repeat(batches["CIFAR-10-C-style"][:1], 2, axis=0)
    out = corrupt(rgb, "gaussian_noise", 2, dataset="d")
    assert out[0].tobytes() != out[1].tobytes()


def test_unknown_names_and_shapes_are_one_clear_error(batches):
    with pytest.raises(UserError, match=r"attack\.corruptions: unknown corruption 'snow'"):
        corrupt(batches["MNIST-C-style"], "snow", 1, dataset="d")
    with pytest.raises(UserError, match=r"attack\.corruptions: 'defocus_blur' is not in the MNIST-C-style"):
        expand_names(["defocus_blur"], "MNIST-C-style")
    with pytest.raises(UserError, match=r"attack\.corruptions: no corruption family for .* 3x28x28"):
        family_of((3, 28, 28))
    with pytest.raises(UserError, match=r"attack\.severities"):
        corrupt(batches["MNIST-C-style"], "fog", 6, dataset="d")
    assert expand_names(["zigzag", "all"], "MNIST-C-style")[0] == "zigzag"
    assert len(expand_names(["all"], "MNIST-C-style")) == 15
    assert family_of((1, 28, 28)) == "MNIST-C-style" and family_of((3, 32, 32)) == "CIFAR-10-C-style"


def test_closed_forms(batches):
    """Corruptions with a closed form, checked exactly: brightness on grey adds c, contrast keeps the mean,
    stripe at severity 5 inverts 7 columns at each side (MNIST-C's), canny at 5 is binary."""
    grey = batches["MNIST-C-style"]
    out = corrupt(grey.astype(np.float32) / 255, "brightness", 5, dataset="d")
    assert np.allclose(out, np.clip(grey / 255 + 0.5, 0, 1), atol=1e-6)
    stripe = corrupt(grey, "stripe", 5, dataset="d")
    assert np.array_equal(stripe[..., :7], 255 - grey[..., :7]) and np.array_equal(stripe[..., 7:21], grey[..., 7:21])
    edges = corrupt(grey, "canny_edges", 5, dataset="d")
    assert set(np.unique(edges)) <= {0, 255} and (edges == 255).any()
    rgb = batches["CIFAR-10-C-style"].astype(np.float32) / 255
    low = corrupt(rgb, "contrast", 5, dataset="d")
    assert np.allclose(low.mean(axis=(2, 3)), rgb.mean(axis=(2, 3)), atol=2e-3)  # clipping aside


# ---- the study's scenario: config, records, report ------------------------------------------------------------


def test_config_keys_are_checked_and_name_the_key():
    from attnrobust.config import AttackConfig, load_config

    assert AttackConfig().corruptions is None and AttackConfig().corruption_severities() == [1, 2, 3, 4, 5]
    with pytest.raises(UserError, match=r"^attack\.corruptions: expected a list of distinct names"):
        AttackConfig(corruptions=["snowfall"])
    with pytest.raises(UserError, match=r"^attack\.corruptions"):
        AttackConfig(corruptions=["fog", "fog"])
    # [] turns a shipped config's corruptions off, e.g. for a dataset no family is made for
    assert load_config("quick", ["study.datasets=['cifar10']", "attack.corruptions=[]"]).attack.corruptions == []
    for bad in ([0], [6], [1, 1], [], [True]):
        with pytest.raises(UserError, match=r"^attack\.severities"):
            AttackConfig(corruptions=["all"], severities=bad)
    # a CIFAR-10-C corruption asked of a grey 28x28 dataset: named, with the family's valid names
    with pytest.raises(UserError, match=r"^attack\.corruptions: 'defocus_blur' is not in the MNIST-C-style set"):
        load_config("quick", ["attack.corruptions=[\"defocus_blur\"]"])
    cfg = load_config("quick", ["attack.corruptions=[\"all\"]", "attack.severities=[5, 1]"])
    assert cfg.attack.corruption_severities() == [1, 5]
    assert cfg.to_dict()["attack"]["corruptions"] == ["all"]
    # left out, the keys leave the resolved config (and so the config.toml of runs made before them) unchanged
    plain = load_config("quick", ["attack.corruptions=[\"all\"]"])
    plain.attack.corruptions = plain.attack.severities = None
    assert "corruptions" not in plain.to_dict()["attack"] and "severities" not in plain.to_dict()["attack"]


def _tiny_models():
    import torch
    from torch import nn

    def tiny(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 14 * 14, 10)).eval()

    return {"a": tiny(0), "b": tiny(1)}


def test_corruption_records_are_paired_and_independent_of_the_batching():
    from attnrobust.config import AttackConfig
    from attnrobust.data import DeviceLoader, load_dataset
    from attnrobust.evaluate import corruption_scores
    from attnrobust.results import COUNT_KEYS, record_key, unpack_bits

    x, y = load_dataset("fashion-mnist-mini", "test")
    x, y = x[:20], y[:20]
    cfg = AttackConfig(corruptions=["shot_noise", "rotate"], severities=[1, 5])
    models = _tiny_models()

    def run(batch):
        return corruption_scores(models, DeviceLoader(x, y, batch_size=batch), cfg, dataset="fashion-mnist-mini",
                                 seed=3, quiet=True, images="test[:20]")

    records = run(8)
    assert len(records) == 2 * 2 * 2 and len({record_key(r) for r in records}) == 8
    for r in records:
        assert (r["attack"], r["source"], r["kind"], r["seed"], r["eps"]) == ("corruption", r["target"], "white-box",
                                                                              3, 0.0)
        assert r["corruption_family"] == "MNIST-C-style" and r["severity"] in (1, 5)
        robust = unpack_bits(r["robust_bits"], r["n"])
        clean = unpack_bits(r["clean_bits"], r["n"])
        assert r["robust_correct"] == robust.sum() and r["target_clean_correct"] == clean.sum()
        assert r["robust_correct_on_target_clean"] == (robust & clean).sum()
    # a second job of the same process reads the corrupted batches it kept (evaluate._CORRUPTED): same records
    assert run(8) == records
    # the same images whatever the batch size (each image seeded by its index): every count and bit equal
    assert [{k: r[k] for k in (*COUNT_KEYS, "robust_bits", "clean_bits")} for r in run(20)] == \
        [{k: r[k] for k in (*COUNT_KEYS, "robust_bits", "clean_bits")} for r in records]


def _corruption_record(seed, model, corruption, severity, correct, n=200, clean=180):
    from attnrobust.results import Setting, make_record, pack_bits

    return make_record(dataset="fashion-mnist-mini", seed=seed, source=model, target=model,
                       setting=Setting("corruption", corruption=corruption, severity=severity), images=f"test[:{n}]",
                       robust_bits=pack_bits([i < correct for i in range(n)]),
                       clean_bits=pack_bits([i < clean for i in range(n)]),
                       counts={"n": n, "target_clean_correct": clean, "source_clean_correct": clean,
                               "both_clean_correct": clean, "robust_correct": correct,
                               "robust_correct_on_both": min(correct, clean),
                               "robust_correct_on_target_clean": min(correct, clean)},
                       corruption_family="MNIST-C-style")


def test_corruption_verdicts_their_own_family_and_ce_vs_twin(tmp_path):
    """Attention far better on fog, equal on rotate, over 3 seeds: fog 'helps', rotate neither; CE vs twin is the
    ratio of errors summed over severities; the adversarial verdicts and tables do not see these records."""
    import json

    from attnrobust.report import build_report
    from attnrobust.report.corruptions import corruption_verdicts

    records = []
    for seed in (0, 1, 2):
        for sev in (1, 3, 5):
            for model, fog in (("resnet14", 120 - 10 * sev), ("cbam_resnet14", 160 - 10 * sev + seed)):
                records.append(_corruption_record(seed, model, "fog", sev, fog))
                records.append(_corruption_record(seed, model, "rotate", sev, 150 - 10 * sev))
                records.append(_corruption_record(seed, model, "stripe", sev, 25 - sev))  # ~10%: chance
    rows = {r["attack"]: r for r in corruption_verdicts(records)}
    assert set(rows) == {"all corruptions", "fog", "rotate", "stripe"}
    assert rows["fog"]["verdict"] == "helps" and rows["fog"]["seeds"] == 3
    # identical outcomes: no difference to find; whether 3 seeds of 200 images prove equivalence within the margin
    # is the statistics' business (tests/test_stats.py), not this test's
    assert rows["rotate"]["verdict"] in ("equivalent", "inconclusive") and rows["rotate"]["difference"] == 0
    assert rows["fog"]["margin"] == 2.0 and rows["fog"]["sim_low"] < rows["fog"]["ci_low"]
    assert all(r["p_holm"] >= r["p_value"] for r in rows.values())
    # CE: twin errors (200 - 110) + (200 - 90) + (200 - 70) = 330; attention's (mean over seeds +1) = 210
    assert rows["fog"]["ce_vs_twin"] == pytest.approx(100 * 207 / 330)
    assert rows["rotate"]["ce_vs_twin"] == pytest.approx(100.0)
    assert rows["all corruptions"]["ce_vs_twin"] == pytest.approx((100 * 207 / 330 + 100 + 100) / 3)
    # relative CE: the clean error (20 of 200 images for both) subtracted from each of the 3 severities' errors
    assert rows["fog"]["relative_ce_vs_twin"] == pytest.approx(100 * (207 - 3 * 20) / (330 - 3 * 20))

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = build_report(run)
    readme = (report / "README.md").read_text()
    assert "## Common corruptions" in readme and "figures/corruptions_fashion-mnist-mini.png" in readme
    assert "figures/corruption_samples_fashion-mnist-mini.png" in readme  # the shipped subset is at hand
    assert "| fog | 5 |" in readme and "Holm family of their own" in readme
    assert "**At chance**: stripe:" in readme  # 10 classes: 11-12% at every severity, for both models
    verdicts = readme[readme.index("## Verdicts"):readme.index("## Threat model")]
    assert "common corruptions (3 seeds): mean corruption accuracy" in verdicts and "fog: helps" in verdicts
    text = (report / "verdicts.txt").read_text()
    assert "Common corruptions" in text and "fog" in text
    # no adversarial rows were made from them: the adversarial table stays empty, Table II has no fog column
    assert text.startswith("verdicts: none") and "fog" not in (report / "table2.md").read_text()
    lines = (report / "corruptions.csv").read_text().splitlines()
    assert lines[0] == "dataset,model,corruption,severity,seeds,accuracy_pct,ci95_pct" and len(lines) == 1 + 18


@pytest.mark.figures
def test_corruption_figures_are_drawn(tmp_path, batches):
    """The two figures of the corruption section, drawn for real: small multiples and the sample mosaic."""
    from attnrobust.report.figures import Plot, Series, image_grid, small_multiples

    panels = [Plot(name, "severity", "accuracy (%)", [Series("a", [0, 1, 3], [90, 80, 60], "#1f77b4"),
                                                         Series("b", [0, 1, 3], [88, 70, 50], "#d62728", "dashed",
                                                                err=[None, 2.0, 3.0])], [0, 1, 3])
              for name in ("fog", "rotate", "zigzag", "stripe", "scale", "shear")]
    small_multiples(tmp_path / "curves.png", "severity", panels, columns=4)
    grey = batches["MNIST-C-style"][:2]
    image_grid(tmp_path / "grid.png", "samples", [[grey, corrupt(grey, "fog", 5, dataset="d")]], ["fog"],
               ["clean", "5"])
    rgb = batches["CIFAR-10-C-style"][:2]
    image_grid(tmp_path / "rgb.png", "samples", [[rgb, rgb], [rgb, rgb]], ["a", "b"], ["clean", "1"])
    for name in ("curves.png", "grid.png", "rgb.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["brightness", "saturate"])
def test_hsv_corruptions_equal_the_hsv_round_trip(batches, name):
    """CIFAR-10-C's brightness and saturate go RGB -> HSV -> RGB (skimage); ours stays in RGB. The standard
    library's colorsys has the same HSV: pixel by pixel, the results agree."""
    import colorsys

    from attnrobust.corruptions import CIFAR_C

    rgb = batches["CIFAR-10-C-style"][:2].astype(np.float32) / 255
    rgb[0, :, 0, 0] = [0.5, 0.5, 0.5]  # a grey pixel: hue 0 (red) in skimage and colorsys alike
    rgb[0, :, 0, 1] = 0  # black
    for severity in (1, 4, 5):
        out = corrupt(rgb, name, severity, dataset="d")
        c = CIFAR_C[name].levels[severity - 1]
        for n, i, j in [(0, 0, 0), (0, 0, 1), *((n, i, j) for n in range(2) for i in (3, 17) for j in (5, 30))]:
            h, s, v = colorsys.rgb_to_hsv(*rgb[n, :, i, j].astype(float))
            if name == "brightness":
                v = min(v + c, 1.0)
            else:
                s = min(max(s * c[0] + c[1], 0.0), 1.0)
            assert np.allclose(out[n, :, i, j], colorsys.hsv_to_rgb(h, s, v), atol=1e-6), (severity, n, i, j)


def test_attack_verb_scores_corruptions(tmp_path, capsys):
    import torch

    from attnrobust.checkpoint import save_checkpoint
    from attnrobust.cli import main
    from attnrobust.models import build_model
    from attnrobust.results import read_records

    torch.manual_seed(0)  # an untrained model will do: the records' shape is under test, not the accuracy
    ckpt = save_checkpoint(tmp_path / "m.safetensors", build_model("resnet14", 10, in_channels=1, width=2),
                           {"dataset": "fashion-mnist-mini", "num_classes": 10, "seed": 0})
    out = tmp_path / "records.jsonl"
    assert main(["attack", str(ckpt), "--set", 'attack.attacks=["fgsm"]', "--set", "attack.fgsm_eps=[0.1]",
                 "--num-images", "16", "--quiet", "--set", 'attack.corruptions=["fog", "rotate"]',
                 "--set", "attack.severities=[1, 5]", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    records = [r for r in read_records(out) if r["attack"] == "corruption"]
    assert sorted((r["corruption"], r["severity"]) for r in records) == [("fog", 1), ("fog", 5), ("rotate", 1),
                                                                         ("rotate", 5)]
    assert "fog 5" in printed and all(r["n"] == 16 for r in records)
    assert main(["attack", str(ckpt), "--set", 'attack.attacks=["fgsm"]', "--num-images", "16",
                 "--set", 'attack.corruptions=["snow"]']) == 2
    assert "attack.corruptions" in capsys.readouterr().err


# ---- the reference code's own outputs (tests/fixtures/corruption_reference.md says how they were made) ----------

REFERENCE_FILE = Path(__file__).parent / "fixtures" / "corruption_reference.npz"
with np.load(REFERENCE_FILE) as _file:
    REFERENCE = dict(_file)
REFERENCE_CASES = sorted({tuple(k.split("__")[:2]) for k in REFERENCE if k.count("__") == 2
                          and not k.endswith("fractions")})


@pytest.mark.parametrize("family,name", REFERENCE_CASES, ids=[f"{f}-{n}" for f, n in REFERENCE_CASES])
def test_equals_the_reference_code_given_the_same_draws(family, name):
    """MNIST-C's corruptions.py and CIFAR-10-C's make_cifar_c.py, fed this tool's random draws, made these images:
    ours are the same to 1/255 (rounding) at every stored severity; the Canny edges are the same pixels."""
    images = REFERENCE[f"{family}_images"]
    severities = [int(k.split("__")[2]) for k in REFERENCE if k.startswith(f"{family}__{name}__")]
    for severity in severities:
        ours = corrupt(images, name, severity, dataset="reference-fixture", indices=np.arange(len(images)))
        diff = np.abs(ours.astype(int) - REFERENCE[f"{family}__{name}__{severity}"])
        assert diff.max() <= 1, f"{name} {severity}: {(diff > 1).sum()} values differ by up to {diff.max()}/255"


@pytest.mark.parametrize("family", ["mnist", "cifar"])
def test_impulse_noise_has_the_reference_statistics(family):
    """skimage's salt and pepper draws from its own generator, so the reference can only be compared in
    distribution: over 50 draws of the same images, the share of values changed, and of values set to 1, agree
    with the reference's within 4 standard errors."""
    images = REFERENCE[f"{family}_images"]
    repeated = np.repeat(images, 50, axis=0)
    n = repeated.size
    for severity, (changed, salt) in enumerate(REFERENCE[f"{family}__impulse_noise__fractions"], start=1):
        out = corrupt(repeated, "impulse_noise", severity, dataset="reference-fixture")
        moved = out != repeated
        for ours, theirs in ((moved.mean(), changed), ((moved & (out == 255)).mean(), salt)):
            assert abs(ours - theirs) <= 4 * np.sqrt(2 * theirs * (1 - theirs) / n), (severity, ours, theirs)
