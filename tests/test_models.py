"""Model registry: published parameter counts, the counts our 32x32 adaptations imply, what each model is
(ModelInfo, twins), forward/backward on every dataset shape, determinism, build_args round trip, errors, the
attention modules against their definitions, attention maps.

Parameter counts are taken on the meta device: no memory, no initialization cost, so even VGG-16's 138M
parameters count in milliseconds. Forward passes use tiny widths (and tiny inputs where only shapes matter).
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnrobust.errors import UserError
from attnrobust.models import (ModelInfo, attention_maps, attention_pairs, build_model, list_models, model_info,
                               model_options, recording_attention)
from attnrobust.models.attention import CBAM, ECA, MHSA, SE, eca_kernel_size, make_attention

GATES = (CBAM, SE, ECA)


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
    assert count_on_meta(name, 1000, in_channels=3, variant="imagenet", width=64) == expected


@pytest.mark.parametrize("name, kw, published_millions", [
    ("eca_resnet50", {}, 25.56),                      # Wang et al.: ECA-Net50, ResNet-50 + a few dozen weights
    ("bot_resnet50", {"input_size": 224}, 20.8),      # Srinivas et al.: BoT50 at 224x224 (14x14, then 7x7 maps)
])
def test_published_parameter_counts_as_rounded(name, kw, published_millions):
    # The papers print millions to the digits given (rounded or cut: BoT50 is 20.85M, printed 20.8M); the exact
    # count is checked by the formula below, which the published counts above anchor.
    got = count_on_meta(name, 1000, in_channels=3, variant="imagenet", width=64, **kw)
    digits = len(str(published_millions).split(".")[1])
    assert abs(got / 1e6 - published_millions) < 10 ** -digits


def test_cbam_adds_exactly_its_spatial_gates_to_se():
    se = count_on_meta("se_resnet50", 1000, variant="imagenet")
    cbam = count_on_meta("cbam_resnet50", 1000, variant="imagenet")
    assert cbam - se == 16 * (7 * 7 * 2 + 2)


def eca_k(channels):
    """ECA's kernel size as the official code writes it: truncate |(log2 C + b) / gamma|, add one when even."""
    t = int(abs((math.log2(channels) + 1) / 2))
    return t if t % 2 else t + 1


def resnet_count(layers, num_classes, in_channels, width, attn, variant="cifar", input_size=32):
    """Parameter count of the bottleneck ResNet as designed, by formula (independent of the model code)."""
    k = 3 if variant == "cifar" else 7
    total = in_channels * width * k * k + 2 * width  # stem conv (no bias) + BN
    side = input_size if variant == "cifar" else math.ceil(input_size / 4)  # the map side entering stage 1
    in_ch = width
    for stage, depth in enumerate(layers):
        p = width * 2 ** stage
        c = 4 * p
        for block in range(depth):
            total += in_ch * p + 2 * p          # 1x1 reduce + BN
            if attn == "mhsa" and stage == len(layers) - 1:
                # q, k, v 1x1 without bias; height and width tables of 2*side-1 offsets x head dim (4 heads),
                # side = the map the block attends over (the first block attends before its 2x2 pooling)
                total += 3 * p * p + 2 * (2 * side - 1) * (p // 4) + 2 * p
            else:
                total += 9 * p * p + 2 * p      # 3x3 + BN
            total += p * c + 2 * c              # 1x1 expand + BN
            if block == 0:                      # projection shortcut (channels change in every first block)
                total += in_ch * c + 2 * c
            if stage > 0 and block == 0:
                side = math.ceil(side / 2)
            h = max(1, c // 16)
            if attn in ("se", "cbam"):          # shared MLP C -> C/16 -> C with biases
                total += c * h + h + h * c + c
            if attn == "cbam":                  # 7x7 conv 2 -> 1 without bias, BN on 1 channel
                total += 7 * 7 * 2 + 2
            if attn == "eca":                   # one 1-D conv of k weights, no bias
                total += eca_k(c)
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


def expected_count(name, num_classes, in_channels, width, **kw):
    info = model_info(name)
    if info.base.startswith("vgg16"):
        return vgg_count(num_classes, in_channels, width, info.base == "vgg16_bn")
    return resnet_count(LAYERS[info.base], num_classes, in_channels, width, info.attention, **kw)


# Two settings that between them vary every argument the count depends on (kept to two: each build of a
# width-64 ResNet-50, even on the meta device, is tens of milliseconds of Python).
@pytest.mark.parametrize("in_channels, num_classes, width", [(1, 10, 8), (3, 100, 64)])
@pytest.mark.parametrize("name", list_models())
def test_cifar_parameter_counts_match_the_design(name, in_channels, num_classes, width):
    got = count_on_meta(name, num_classes, in_channels=in_channels, width=width)
    assert got == expected_count(name, num_classes, in_channels, width)


@pytest.mark.parametrize("input_size", [28, 32, 64])
@pytest.mark.parametrize("variant", ["cifar", "imagenet"])
def test_self_attention_count_follows_input_size(variant, input_size):
    got = count_on_meta("bot_resnet26", 10, width=8, variant=variant, input_size=input_size)
    assert got == resnet_count([2, 2, 2, 2], 10, 3, 8, "mhsa", variant=variant, input_size=input_size)


def test_formula_agrees_with_the_published_imagenet_count():
    # The formula above is what the cifar-variant counts are checked against; it must also give the published one.
    assert resnet_count([3, 4, 6, 3], 1000, 3, 64, "cbam", variant="imagenet") == 28_089_624


@pytest.mark.parametrize("channels, k", [(4, 1), (8, 3), (64, 3), (127, 3), (128, 5), (256, 5), (512, 5),
                                         (1024, 5), (2047, 5), (2048, 7)])
def test_eca_kernel_size(channels, k):
    assert eca_kernel_size(channels) == eca_k(channels) == k


@pytest.mark.parametrize("name, expected", [
    # CIFAR-10 (3 channels, 10 classes), cifar variant, width 64: the sizes the full study trains.
    ("resnet50", 23_520_842), ("cbam_resnet50", 26_053_434), ("se_resnet50", 26_051_834),
    ("vgg16", 14_719_818), ("vgg16_bn", 14_728_266),
])
def test_cifar10_full_size_counts(name, expected):
    assert count_on_meta(name, 10, in_channels=3, width=64) == expected


@pytest.mark.parametrize("name, cls", [("cbam_resnet50", CBAM), ("se_resnet50", SE), ("eca_resnet50", ECA)])
def test_one_attention_module_per_bottleneck(name, cls):
    with torch.device("meta"):
        model = build_model(name, 10)
    assert sum(isinstance(m, cls) for m in model.modules()) == 16
    assert not any(isinstance(m, (*GATES, MHSA)) and not isinstance(m, cls) for m in model.modules())


def test_self_attention_replaces_the_last_stage_3x3_convs_only():
    with torch.device("meta"):
        model = build_model("bot_resnet50", 10)
    last = model.stages[-1]
    assert all(isinstance(block.conv2, MHSA) for block in last)
    assert [block.conv2.max_size for block in last] == [8, 4, 4]  # the first block attends before pooling
    assert [block.conv2.heads for block in last] == [4, 4, 4]
    assert sum(isinstance(m, MHSA) for m in model.modules()) == 3
    assert not any(isinstance(m, GATES) for m in model.modules())


def test_plain_resnet_has_no_attention():
    with torch.device("meta"):
        model = build_model("resnet50", 10)
    assert not any(isinstance(m, (*GATES, MHSA)) for m in model.modules())


# ---------------------------------------------------------------------------------------------------------------
# What each model is: ModelInfo, twins, pairs


@pytest.mark.parametrize("name", list_models())
def test_model_info_is_consistent(name):
    info = model_info(name)
    assert isinstance(info, ModelInfo) and info.name == name
    if info.attention is None:
        assert info.twin is None and info.base == name  # a model without attention is its own base network
        return
    assert info.attention in ("cbam", "se", "eca", "mhsa")
    assert info.twin == info.base and info.twin in list_models()
    twin = model_info(info.twin)
    assert twin.attention is None and twin.base == info.base


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).attention is not None])
def test_twin_differs_only_by_the_attention(name):
    info = model_info(name)
    with torch.device("meta"):
        model = build_model(name, 10, width=8)
        twin = build_model(info.twin, 10, width=8)
    mine = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in twin.state_dict().items()}
    if info.attention == "mhsa":
        # Only the last stage's 3x3 convs differ: MHSA's parameters instead of the conv's.
        last = f"stages.{len(model.stages) - 1}."
        changed = [k for k in mine.keys() | theirs.keys() if k.startswith(last) and ".conv2." in k]
        own = sum(n_params(m) for m in model.modules() if isinstance(m, MHSA))
        replaced = sum(n_params(b.conv2) for b in twin.stages[-1])
        assert n_params(model) - n_params(twin) == own - replaced
    else:
        changed = [k for k in mine if ".attn." in k]   # the gates, which the twin lacks
        own = sum(n_params(m) for m in model.modules() if isinstance(m, GATES))
        assert own > 0 and n_params(model) - n_params(twin) == own
    for key in changed:
        mine.pop(key, None)
        theirs.pop(key, None)
    assert mine == theirs  # every other tensor: same name, same shape


def test_model_info_unknown_name():
    with pytest.raises(UserError, match="unknown model 'resnet51'; valid models: resnet14"):
        model_info("resnet51")
    with pytest.raises(UserError, match="unknown model 'resnet51'; valid models: resnet14"):
        model_options("resnet51")


@pytest.mark.parametrize("name", list_models())
def test_model_options_are_what_build_model_fills_in(name):
    options = model_options(name)
    with torch.device("meta"):
        args = build_model(name, 10, width=1, **options).build_args   # width 1: the smallest model builds too
    assert {k: args[k] for k in options} == options
    assert ("cbam_bn_momentum" in options) == (model_info(name).attention == "cbam")
    assert ("input_size" in options) == (model_info(name).attention == "mhsa")
    options.clear()
    assert model_options(name) or model_info(name).base.startswith("vgg")  # a copy: the registry is untouched


def test_attention_pairs():
    names = ["vgg16_bn", "eca_resnet14", "resnet14", "cbam_resnet14", "bot_resnet26", "se_resnet50", "resnet50",
             "cbam_resnet14"]
    assert attention_pairs(names) == [("eca_resnet14", "resnet14"), ("cbam_resnet14", "resnet14"),
                                      ("se_resnet50", "resnet50")]   # bot_resnet26's twin is absent
    assert attention_pairs([]) == [] and attention_pairs(["resnet14"]) == []
    assert attention_pairs(n for n in ("bot_resnet14", "resnet14")) == [("bot_resnet14", "resnet14")]
    with pytest.raises(UserError, match="unknown model 'cbam_resnet51'"):
        attention_pairs(["resnet50", "cbam_resnet51"])
    with pytest.raises(UserError, match="list of model names"):
        attention_pairs("cbam_resnet14")


# ---------------------------------------------------------------------------------------------------------------
# Running


@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])  # Fashion-MNIST unpadded, CIFAR
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_reaches_the_input(name, in_channels, size):
    torch.manual_seed(0)
    model = build_model(name, 100, in_channels=in_channels, width=4)
    x = torch.rand(2, in_channels, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 100)
    assert torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet14", "cbam_resnet14", "eca_resnet14", "bot_resnet14", "vgg16_bn"])
def test_imagenet_variant_runs_on_small_inputs(name):
    model = build_model(name, 10, in_channels=1, variant="imagenet", width=4)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_eval_mode_is_deterministic(name):
    torch.manual_seed(0)
    model = build_model(name, 10, width=4)
    model(torch.rand(4, 3, 8, 8))  # one train-mode forward so the BN running statistics are not the defaults
    model.eval()
    x = torch.rand(3, 3, 8, 8)
    out = model(x)
    assert out.shape == (3, 10) and torch.equal(out, model(x))


def test_self_attention_refuses_inputs_beyond_its_position_tables():
    model = build_model("bot_resnet14", 10, width=4, input_size=16)
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 10)
    with pytest.raises(UserError, match=r"self-attention on a 5x5 feature map, larger than the 4x4 .* input_size"):
        model(torch.rand(1, 3, 20, 20))


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
    assert args == {"name": "cbam_resnet14", "num_classes": 10, "in_channels": 3, "variant": "cifar", "width": 8,
                    "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "zero_init_residual": True,
                    "stem_stride": 1, "cbam_bn_momentum": 0.01}
    assert build_model("bot_resnet14", 10, width=8).build_args["input_size"] == 32
    assert "input_size" not in build_model("eca_resnet14", 10, width=8).build_args


@pytest.mark.parametrize("name", ["resnet14", "cbam_resnet14", "bot_resnet14"])
def test_stem_stride_halves_the_first_stage_and_changes_no_parameter(name):
    # the quick configs' CPU budget: the stem conv with stride 2, so every stage works on a quarter of the pixels
    sides = {}
    for stride in (1, 2):
        model = build_model(name, 10, in_channels=1, width=8, stem_stride=stride).eval()
        sides[stride] = [model.stem(torch.rand(2, 1, 28, 28)).shape[-1]]
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
        assert model.build_args["stem_stride"] == stride
        assert build_model(**model.build_args).stem[0].stride == (stride, stride)
    assert sides == {1: [28], 2: [14]}
    counts = {s: sum(p.numel() for p in build_model(name, 10, width=8, stem_stride=s).parameters()) for s in (1, 2)}
    # a stride changes no weight; only BoTNet's relative-position tables follow the (halved) side they cover
    assert (counts[1] == counts[2]) == (name != "bot_resnet14")


def spatial_momenta(model):
    return {m.spatial.bn.momentum for m in model.modules() if isinstance(m, CBAM)}


def test_cbam_bn_momentum_default_and_override():
    assert spatial_momenta(build_model("cbam_resnet14", 10, width=8)) == {0.01}  # the official CBAM value
    quick = build_model("cbam_resnet26", 10, width=8, cbam_bn_momentum=0.1)
    assert spatial_momenta(quick) == {0.1}
    assert quick.build_args["cbam_bn_momentum"] == 0.1
    assert spatial_momenta(build_model(**quick.build_args)) == {0.1}
    # Only the spatial gate's BN: every other BN keeps PyTorch's default.
    assert {m.momentum for m in quick.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    assert {m.momentum for m in build_model("cbam_resnet14", 10, width=8).modules()
            if isinstance(m, nn.BatchNorm2d)} == {0.01, 0.1}


def test_initialization():
    model = build_model("cbam_resnet14", 10, width=8)
    bottlenecks = [m for m in model.modules() if hasattr(m, "bn3")]
    assert bottlenecks and all(torch.equal(b.bn3.weight, torch.zeros_like(b.bn3.weight)) for b in bottlenecks)
    cbams = [m for m in model.modules() if isinstance(m, CBAM)]
    assert all(c.spatial.bn.weight.item() == 0 for c in cbams)  # spatial gate starts at 0.5, as in the official code
    assert model.stem[1].weight.eq(1).all()
    plain = build_model("resnet14", 10, width=8, zero_init_residual=False)
    assert all(m.bn3.weight.eq(1).all() for m in plain.modules() if hasattr(m, "bn3"))
    torch.manual_seed(0)
    bot = build_model("bot_resnet50", 10, width=16)
    qkv = torch.cat([m.qkv.weight.flatten() for m in bot.modules() if isinstance(m, MHSA)])
    assert 0.009 < qkv.std() < 0.011  # the model's generic Kaiming init did not overwrite MHSA's own


def test_normalization_is_inside_the_model():
    torch.manual_seed(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    normed = build_model("resnet14", 10, width=8, mean=mean, std=std).eval()
    plain = build_model("resnet14", 10, width=8).eval()
    assert normed.mean.shape == normed.std.shape == (1, 3, 1, 1)
    assert torch.equal(plain.mean, torch.zeros(1, 3, 1, 1)) and torch.equal(plain.std, torch.ones(1, 3, 1, 1))
    weights = {k: v for k, v in normed.state_dict().items() if k not in ("mean", "std")}
    plain.load_state_dict(weights, strict=False)
    x = torch.rand(2, 3, 16, 16)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x), plain((x - m) / s))


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "resnet51"}, "valid models: resnet14, cbam_resnet14"),
    ({"name": "resnet50", "variant": "tiny"}, "valid variants: cifar, imagenet"),
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
    ({"name": "se_resnet14", "cbam_bn_momentum": 0.1}, "valid extra arguments: zero_init_residual"),
    ({"name": "resnet14", "cbam_bn_momentum": 0.1}, "unknown argument 'cbam_bn_momentum' for model 'resnet14'"),
    ({"name": "cbam_resnet14", "cbam_bn_momentum": 0.0}, "cbam_bn_momentum must be a number in (0, 1]"),
    ({"name": "cbam_resnet14", "cbam_bn_momentum": 1.5}, "cbam_bn_momentum must be a number in (0, 1]"),
    ({"name": "cbam_resnet14", "cbam_bn_momentum": float("nan")}, "cbam_bn_momentum must be a number in (0, 1]"),
    ({"name": "cbam_resnet14", "cbam_bn_momentum": 1}, "cbam_bn_momentum must be a float"),
    ({"name": "cbam_resnet14", "cbam_bn_momentum": "0.1"}, "cbam_bn_momentum must be a float"),
    ({"name": "bot_resnet14", "input_size": 0}, "input_size must be a positive integer"),
    ({"name": "bot_resnet14", "input_size": 32.0}, "input_size must be a int"),
    ({"name": "eca_resnet14", "input_size": 32}, "valid extra arguments: zero_init_residual"),
    ({"name": "resnet14", "stem_stride": 3}, "stem_stride must be 1 (the CIFAR stem) or 2"),
    ({"name": "resnet14", "stem_stride": 2.0}, "stem_stride must be a int"),
    ({"name": "vgg16_bn", "stem_stride": 2}, "unknown argument 'stem_stride'"),
    ({"name": "resnet14", "stem_stride": 2, "variant": "imagenet"}, "stem_stride applies to the \"cifar\" stem"),
])
def test_bad_arguments_raise_one_line_user_errors(kwargs, fragment):
    kwargs = {"num_classes": 10, "width": 8, **kwargs}
    with pytest.raises(UserError) as err:
        build_model(**kwargs)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_attention_lists_choices():
    with pytest.raises(UserError, match="valid choices: none, cbam, se, eca"):
        make_attention("gc", 64)


# ---------------------------------------------------------------------------------------------------------------
# Attention modules against their definitions


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


def test_eca_matches_its_definition():
    torch.manual_seed(0)
    eca = ECA(256)
    w = eca.conv.weight.flatten()
    assert w.numel() == 5 and eca.conv.bias is None
    x = torch.randn(2, 256, 3, 4)
    desc = x.mean((2, 3))
    padded = F.pad(desc, (2, 2))  # zero padding at both ends of the channel axis
    # gate[c] = sigmoid(sum_j w[j] * desc[c + j - 2]): each channel from its 2 neighbours on either side
    gate = torch.sigmoid(sum(w[j] * padded[:, j:j + 256] for j in range(5)))
    torch.testing.assert_close(eca(x), x * gate[:, :, None, None])


def naive_mhsa(m: MHSA, x: torch.Tensor) -> torch.Tensor:
    """BoTNet's MHSA by its definition, one query position at a time: softmax over keys of
    q.k + q.(r_h[y' - y] + r_w[x' - x]) with q scaled by 1/sqrt(d), weighting the values."""
    b, c, h, w = x.shape
    d, s = c // m.heads, m.max_size
    q, k, v = m.qkv(x).split(c, dim=1)
    out = torch.zeros(b, c, h, w)
    for head in range(m.heads):
        ch = slice(head * d, (head + 1) * d)
        for y in range(h):
            for x0 in range(w):
                qp = q[:, ch, y, x0] * d ** -0.5
                logits = torch.stack([(qp * (k[:, ch, y1, x1] + m.rel_h[y1 - y + s - 1] + m.rel_w[x1 - x0 + s - 1]))
                                      .sum(1) for y1 in range(h) for x1 in range(w)], dim=1)
                out[:, ch, y, x0] = (v[:, ch].flatten(2) * logits.softmax(1)[:, None, :]).sum(2)
    return out


@pytest.mark.parametrize("h, w, stride", [(3, 4, 1), (5, 5, 1), (5, 4, 2)])
def test_mhsa_matches_its_definition(h, w, stride):
    torch.manual_seed(0)
    m = MHSA(8, max_size=5, stride=stride)
    nn.init.normal_(m.qkv.weight)  # larger than the init, so content and position both shape the attention
    x = torch.randn(2, 8, h, w)
    expected = naive_mhsa(m, x)
    if stride == 2:
        expected = F.avg_pool2d(expected, 2, 2, ceil_mode=True)
        assert expected.shape[-2:] == (3, 2)
    torch.testing.assert_close(m(x), expected)


def test_mhsa_parameter_count():
    m = MHSA(64, max_size=8)
    assert n_params(m) == 3 * 64 * 64 + 2 * (2 * 8 - 1) * (64 // 4)


# ---------------------------------------------------------------------------------------------------------------
# Attention maps


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


@pytest.mark.parametrize("name", ["eca_resnet26", "se_resnet26"])
def test_attention_maps_of_channel_gates(name):
    torch.manual_seed(0)
    model = build_model(name, 10, width=8).eval()
    x = torch.rand(2, 3, 8, 8)
    maps = attention_maps(model, x)
    assert [list(m) for m in maps] == [["channel"]] * 8
    assert [m["channel"].shape[1] for m in maps] == [32, 32, 64, 64, 128, 128, 256, 256]
    assert all(((m["channel"] > 0) & (m["channel"] < 1)).all() for m in maps)
    # The last gate is the one the last block applied: recompute it from that block's own input.
    block = model.stages[-1][-1]
    feats = model.stages[-1][:-1](model.stages[:-1](model.stem(model.normalize(x))))
    with torch.no_grad():
        out = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(feats))))))))
        torch.testing.assert_close(out * maps[-1]["channel"][:, :, None, None], block.attn(out))
    assert all(m.sink is None for m in model.modules() if isinstance(m, GATES))


@pytest.mark.parametrize("name", ["resnet14", "vgg16", "bot_resnet14"])
def test_attention_maps_without_gates_is_empty(name):
    assert attention_maps(build_model(name, 10, width=4), torch.rand(1, 3, 8, 8)) == []


def test_recording_stops_after_an_error():
    model = build_model("cbam_resnet14", 10, width=8)
    with pytest.raises(RuntimeError):
        with recording_attention(model):
            model(torch.rand(1, 2, 32, 32))  # wrong channel count
    assert all(m.sink is None for m in model.modules() if isinstance(m, CBAM))


@pytest.mark.parametrize("name", ["resnet14", "cbam_resnet14", "se_resnet14", "bot_resnet14", "vgg16_bn"])
def test_folded_batchnorm_is_the_same_function_for_attacks(name):
    """models.fold_batchnorm (what the attacks get, checkpoint.load_attack_model): every BN after a conv folded
    away, the same logits and input gradients as the eval-mode model, and no training afterwards."""
    from attnrobust.models import fold_batchnorm
    torch.manual_seed(0)
    model = build_model(name, 10, in_channels=1, width=8, mean=[0.5], std=[0.5])
    for m in model.modules():  # trained-like statistics, so the fold has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    folded = fold_batchnorm(copy.deepcopy(model))
    left = [n for n, m in folded.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    # what stays: CBAM's spatial BN (its conv is computed by gating.spatial_conv) and BoTNet's BN after MHSA
    assert all(".spatial." in n or (name.startswith("bot") and n.endswith("bn2")) for n in left), left
    x = torch.rand(4, 1, 28, 28)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = model(xa), folded(xb)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    (ga,), (gb,) = torch.autograd.grad(want.sum(), [xa]), torch.autograd.grad(got.sum(), [xb])
    assert torch.allclose(gb, ga, atol=1e-5, rtol=1e-4)
    with pytest.raises(UserError, match="folded"):
        folded.train()(x)


def test_fold_leaves_a_sequential_with_its_own_forward_alone():
    """A Sequential subclass whose forward uses a conv's output twice (a residual around its BN) is not a chain:
    folding its BN into the conv would change the function, so fold_batchnorm leaves it."""
    from attnrobust.models import fold_batchnorm

    class ConvPlusBN(torch.nn.Sequential):
        def forward(self, x):
            y = self[0](x)
            return y + self[1](y)

    torch.manual_seed(0)
    model = torch.nn.Sequential(ConvPlusBN(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4)),
                                torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    folded = fold_batchnorm(copy.deepcopy(model))
    assert isinstance(folded[0][1], torch.nn.BatchNorm2d)  # left as it was
    assert isinstance(folded[2], torch.nn.Identity)  # the plain chain beside it folded
    x = torch.rand(3, 2, 6, 6)
    assert torch.allclose(folded(x), model(x), atol=1e-6)
