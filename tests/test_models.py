"""Model registry: published parameter counts, the counts our 32x32 adaptations imply, forward/backward on every
dataset shape, determinism, build_args round trip, errors, attention maps.

Parameter counts are taken on the meta device: no memory, no initialization cost, so even VGG-16's 138M
parameters count in milliseconds.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from attnrobust.errors import UserError
from attnrobust.models import attention_maps, build_model, list_models, recording_attention
from attnrobust.models.attention import CBAM, SE, make_attention


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_on_meta(name: str, num_classes: int, **kw) -> int:
    with torch.device("meta"):
        return n_params(build_model(name, num_classes, **kw))


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("name, expected", [
    ("resnet50", 25_557_032),        # He et al. / torchvision
    ("se_resnet50", 28_088_024),     # Hu et al.
    ("cbam_resnet50", 28_089_624),   # Woo et al.: SE + 16 blocks x (7*7*2 conv + BN gamma, beta)
    ("vgg16", 138_357_544),          # Simonyan & Zisserman, configuration D
    ("vgg16_bn", 138_365_992),       # + 13 BN layers x 2 x channels (8,448)
])
def test_published_parameter_counts(name, expected):
    assert count_on_meta(name, 1000, in_channels=3, stem="imagenet", width=64) == expected


def test_cbam_adds_exactly_its_spatial_gates_to_se():
    se = count_on_meta("se_resnet50", 1000, stem="imagenet")
    cbam = count_on_meta("cbam_resnet50", 1000, stem="imagenet")
    assert cbam - se == 16 * (7 * 7 * 2 + 2)


def resnet_count(layers, num_classes, in_channels, width, attn, stem="cifar"):
    """Parameter count of the bottleneck ResNet as designed, by formula (independent of the model code)."""
    k = 3 if stem == "cifar" else 7
    total = in_channels * width * k * k + 2 * width  # stem conv (no bias) + BN
    in_ch = width
    for stage, depth in enumerate(layers):
        p = width * 2 ** stage
        c = 4 * p
        for block in range(depth):
            total += in_ch * p + 2 * p          # 1x1 reduce + BN
            total += 9 * p * p + 2 * p          # 3x3 + BN
            total += p * c + 2 * c              # 1x1 expand + BN
            if block == 0:                      # projection shortcut (channels change in every first block)
                total += in_ch * c + 2 * c
            h = max(1, c // 16)
            if attn in ("se", "cbam"):          # shared MLP C -> C/16 -> C with biases
                total += c * h + h + h * c + c
            if attn == "cbam":                  # 7x7 conv 2 -> 1 without bias, BN on 1 channel
                total += 7 * 7 * 2 + 2
            in_ch = c
    return total + in_ch * num_classes + num_classes


def vgg_count(num_classes, in_channels, width, batch_norm):
    """VGG-16 with the 32x32 head: 13 convs with biases (+ BN), then a single Linear from 512*width/64 features."""
    total, ch = 0, in_channels
    for v in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512):
        out = v * width // 64
        total += ch * out * 9 + out + (2 * out if batch_norm else 0)
        ch = out
    return total + ch * num_classes + num_classes


LAYERS = {"resnet14": [1, 1, 1, 1], "resnet26": [2, 2, 2, 2], "resnet50": [3, 4, 6, 3]}


def expected_count(name, num_classes, in_channels, width):
    if name.startswith("vgg16"):
        return vgg_count(num_classes, in_channels, width, name == "vgg16_bn")
    attn, _, base = name.rpartition("_")
    return resnet_count(LAYERS[base], num_classes, in_channels, width, attn or None)


@pytest.mark.parametrize("width", [8, 16, 64])
@pytest.mark.parametrize("in_channels, num_classes", [(1, 10), (3, 10), (3, 100)])
@pytest.mark.parametrize("name", list_models())
def test_cifar_parameter_counts_match_the_design(name, in_channels, num_classes, width):
    got = count_on_meta(name, num_classes, in_channels=in_channels, width=width)
    assert got == expected_count(name, num_classes, in_channels, width)


def test_formula_agrees_with_the_published_imagenet_count():
    # The formula above is what the cifar-stem counts are checked against; it must also give the published one.
    assert resnet_count([3, 4, 6, 3], 1000, 3, 64, "cbam", stem="imagenet") == 28_089_624


@pytest.mark.parametrize("name, expected", [
    # CIFAR-10 (3 channels, 10 classes), cifar stem, width 64: the sizes the full study trains.
    ("resnet50", 23_520_842), ("cbam_resnet50", 26_053_434), ("se_resnet50", 26_051_834),
    ("vgg16", 14_719_818), ("vgg16_bn", 14_728_266),
])
def test_cifar10_full_size_counts(name, expected):
    assert count_on_meta(name, 10, in_channels=3, width=64) == expected


@pytest.mark.parametrize("name, cls, other", [("cbam_resnet50", CBAM, SE), ("se_resnet50", SE, CBAM)])
def test_one_attention_module_per_bottleneck(name, cls, other):
    with torch.device("meta"):
        model = build_model(name, 10)
    assert sum(isinstance(m, cls) for m in model.modules()) == 16
    assert not any(isinstance(m, other) for m in model.modules())


def test_plain_resnet_has_no_attention():
    with torch.device("meta"):
        model = build_model("resnet50", 10)
    assert not any(isinstance(m, (CBAM, SE)) for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------
# Running


@pytest.mark.parametrize("in_channels, num_classes", [(1, 10), (3, 10), (1, 100), (3, 100)])
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_reaches_the_input(name, in_channels, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels=in_channels, width=8)
    x = torch.rand(2, in_channels, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet14", "cbam_resnet14", "vgg16_bn"])
def test_imagenet_stem_runs_on_small_inputs(name):
    model = build_model(name, 10, in_channels=1, stem="imagenet", width=8)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_eval_mode_is_deterministic(name):
    torch.manual_seed(0)
    model = build_model(name, 10, width=8)
    model(torch.rand(4, 3, 32, 32))  # one train-mode forward so the BN running statistics are not the defaults
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x), model(x))


# ---------------------------------------------------------------------------------------------------------------
# build_args, normalization, initialization


@pytest.mark.parametrize("name", list_models())
def test_build_args_round_trip(name):
    torch.manual_seed(0)
    model = build_model(name, 100, in_channels=1, width=8, mean=(0.3,), std=(0.2,))
    args = json.loads(json.dumps(model.build_args))
    assert args == model.build_args
    assert args["name"] == name
    torch.manual_seed(0)
    again = build_model(**args)
    assert again.build_args == model.build_args
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same architecture -> same initial weights


def test_build_args_fill_in_defaults():
    args = build_model("cbam_resnet14", 10, width=8).build_args
    assert args == {"name": "cbam_resnet14", "num_classes": 10, "in_channels": 3, "stem": "cifar", "width": 8,
                    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "zero_init_residual": True}


def test_normalization_is_inside_the_model():
    torch.manual_seed(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    normed = build_model("resnet14", 10, width=8, mean=mean, std=std).eval()
    plain = build_model("resnet14", 10, width=8).eval()
    assert normed.mean.shape == normed.std.shape == (1, 3, 1, 1)
    assert torch.equal(plain.mean, torch.zeros(1, 3, 1, 1)) and torch.equal(plain.std, torch.ones(1, 3, 1, 1))
    weights = {k: v for k, v in normed.state_dict().items() if k not in ("mean", "std")}
    plain.load_state_dict(weights, strict=False)
    x = torch.rand(2, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x), plain((x - m) / s))


def test_initialization():
    model = build_model("cbam_resnet14", 10, width=8)
    bottlenecks = [m for m in model.modules() if hasattr(m, "bn3")]
    assert bottlenecks and all(torch.equal(b.bn3.weight, torch.zeros_like(b.bn3.weight)) for b in bottlenecks)
    cbams = [m for m in model.modules() if isinstance(m, CBAM)]
    assert all(c.spatial.bn.weight.item() == 0 for c in cbams)  # spatial gate starts at 0.5, as in the official code
    assert model.stem[1].weight.eq(1).all()
    plain = build_model("resnet14", 10, width=8, zero_init_residual=False)
    assert all(m.bn3.weight.eq(1).all() for m in plain.modules() if hasattr(m, "bn3"))


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "resnet51"}, "valid models: resnet14, cbam_resnet14"),
    ({"name": "resnet50", "stem": "tiny"}, "valid stems: cifar, imagenet"),
    ({"name": "resnet50", "in_channels": 2}, "in_channels must be one of 1, 3"),
    ({"name": "vgg16", "width": 0}, "width must be a positive integer"),
    ({"name": "vgg16", "width": 8.0}, "width must be a positive integer"),
    ({"name": "resnet14", "num_classes": 0}, "num_classes must be a positive integer"),
    ({"name": "vgg16", "zero_init_residual": True}, "valid extra arguments: none"),
    ({"name": "resnet14", "attn": "cbam"}, "valid extra arguments: zero_init_residual"),
    ({"name": "resnet14", "zero_init_residual": 1}, "zero_init_residual must be a bool"),
    ({"name": "resnet14", "mean": (0.5, 0.5)}, "mean must be 3 finite numbers"),
    ({"name": "resnet14", "std": (0.5, 0.0, 0.5)}, "std must be positive"),
    ({"name": "resnet14", "std": "abc"}, "std must be"),
])
def test_bad_arguments_raise_one_line_user_errors(kwargs, fragment):
    kwargs = {"num_classes": 10, "width": 8, **kwargs}
    with pytest.raises(UserError) as err:
        build_model(**kwargs)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_attention_lists_choices():
    with pytest.raises(UserError, match="valid choices: none, cbam, se"):
        make_attention("eca", 64)


# ---------------------------------------------------------------------------------------------------------------
# Attention modules and maps


def test_cbam_matches_its_definition():
    torch.manual_seed(0)
    cbam = CBAM(32).eval()
    nn.init.normal_(cbam.spatial.bn.weight)  # make the spatial gate non-trivial
    x = torch.randn(2, 32, 5, 6)
    mlp = cbam.channel.mlp
    cg = torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    y = x * cg
    pooled = torch.cat([y.amax(1, keepdim=True), y.mean(1, keepdim=True)], 1)  # [max, mean], official order
    sg = torch.sigmoid(cbam.spatial.bn(cbam.spatial.conv(pooled)))
    torch.testing.assert_close(cbam(x), y * sg)


def test_cbam_same_output_with_and_without_autograd():
    # The max-pooling op is picked by whether autograd records (for speed); the values must not depend on it.
    torch.manual_seed(0)
    cbam = CBAM(32).eval()
    nn.init.normal_(cbam.spatial.bn.weight)
    x = torch.randn(2, 32, 5, 6)
    with torch.no_grad():
        expected = cbam(x)
    got = cbam(x.clone().requires_grad_(True))
    assert torch.equal(got.detach(), expected)


def test_attention_maps_shapes_values_and_order():
    torch.manual_seed(0)
    model = build_model("cbam_resnet26", 10, width=8)
    model.train()
    x = torch.rand(3, 3, 32, 32)
    maps = attention_maps(model, x)
    assert model.training  # state restored
    assert len(maps) == 8
    sizes = [32, 32, 16, 16, 8, 8, 4, 4]  # forward order: stage by stage, the cifar stem keeps 32x32 in stage 1
    chans = [32, 32, 64, 64, 128, 128, 256, 256]
    for m, hw, c in zip(maps, sizes, chans):
        assert m["channel"].shape == (3, c)
        assert m["spatial"].shape == (3, 1, hw, hw)
        for gate in m.values():
            assert not gate.requires_grad
            assert (gate > 0).all() and (gate < 1).all()
    assert all(m.sink is None for m in model.modules() if isinstance(m, CBAM))
    model.eval()
    again = attention_maps(model, x)
    assert not model.training
    model.train()
    model.stem.eval()  # a mixed state comes back module by module
    modes = [m.training for m in model.modules()]
    attention_maps(model, x)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(a["spatial"], b["spatial"]) for a, b in zip(maps, again))


def test_attention_maps_without_cbam_is_empty():
    assert attention_maps(build_model("se_resnet14", 10, width=8), torch.rand(1, 3, 32, 32)) == []


def test_recording_stops_after_an_error():
    model = build_model("cbam_resnet14", 10, width=8)
    with pytest.raises(RuntimeError):
        with recording_attention(model):
            model(torch.rand(1, 2, 32, 32))  # wrong channel count
    assert all(m.sink is None for m in model.modules() if isinstance(m, CBAM))
