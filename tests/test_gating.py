"""models.gating: the gates' hand-written backward passes compute the published modules' function (tests/
plain_gates.py) -- outputs, input gradients and parameter gradients within float tolerance, in train and eval
mode, channels_last and not -- and a whole model's attack gradient is unchanged by them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attnrobust.models import build_model
from attnrobust.models.attention import CBAM, ECA, SE
from attnrobust.models.gating import spatial_conv
from plain_gates import PLAIN, plain_gates

GATES = {"cbam": lambda c: CBAM(c, bn_momentum=0.1), "se": SE, "eca": ECA}


def _outputs_and_grads(module, x, g, forward):
    x = x.detach().requires_grad_(True)
    out = forward(x)
    grads = torch.autograd.grad(out, [x, *module.parameters()], g)
    return out.detach(), grads


@pytest.mark.parametrize("name", sorted(GATES))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "rows_and_columns_swapped"])
def test_gate_matches_plain_expression(name, train, layout):
    torch.manual_seed(0)
    module = GATES[name](32).train(train)
    for p in module.parameters():  # away from the initial zeros and ones, so every path carries gradient
        torch.nn.init.normal_(p, std=0.5)
    x, g = torch.randn(4, 32, 9, 7), torch.randn(4, 32, 9, 7)
    if layout == "channels_last":
        module = module.to(memory_format=torch.channels_last)
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    elif layout == "rows_and_columns_swapped":  # dense, but its positions do not flatten by a view (a transpose)
        x, g = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (x, g))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    out, grads = _outputs_and_grads(module, x, g, module)
    module.load_state_dict(state)  # the same BN running statistics for the plain pass
    ref, ref_grads = _outputs_and_grads(module, x, g, lambda t: PLAIN[type(module)](module, t))
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4), (got - want).abs().max()
    # the gradient comes back in the input's layout (a mismatch makes every later op a strided one), where that
    # is one of the two a model uses
    model_layouts = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    if layout in model_layouts:
        assert grads[0].is_contiguous(memory_format=model_layouts[layout])


def test_tied_maxima_share_the_gradient():
    """A zero map (a block's zero-initialized BN, before the first step) ties every channel at the max: the
    gradient through the max over channels is shared evenly, so it sums to what one untied max would get."""
    module = CBAM(16, bn_momentum=0.1).eval()
    torch.nn.init.normal_(module.spatial.conv.weight)
    torch.nn.init.ones_(module.spatial.bn.weight)
    x = torch.zeros(2, 16, 5, 5, requires_grad=True)
    (grad,) = torch.autograd.grad(module(x).sum(), [x])
    assert torch.isfinite(grad).all()
    x2 = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(PLAIN[CBAM](module, x2).sum(), [x2])  # amax: shared evenly too
    assert torch.allclose(grad, ref, atol=1e-6)


@pytest.mark.parametrize("name", ["cbam_resnet14", "se_resnet14", "eca_resnet14"])
def test_attack_gradient_of_a_model_is_unchanged(name):
    torch.manual_seed(0)
    model = build_model(name, 10, in_channels=1, width=4, mean=[0.5], std=[0.5]).eval()
    for m in model.modules():  # trained-like gates (the zero-initialized BN would make every gate 0.5)
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def input_grad():
        xa = x.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(model(xa), y), [xa])[0]

    got = input_grad()
    with plain_gates():
        want = input_grad()
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), (got - want).abs().max()


def test_keep_freed_memory_is_idempotent():
    from attnrobust.runtime import keep_freed_memory
    keep_freed_memory()
    keep_freed_memory()
    assert torch.ones(3).sum().item() == 3


@pytest.mark.parametrize("name", sorted(GATES))
def test_second_derivative_raises_instead_of_a_wrong_number(name):
    """create_graph=True raises at once: the gate's node is one step from this loss, so the incoming gradient has no
    graph, and a lenient backward would return a first derivative whose own derivative is silently zero."""
    module = GATES[name](16)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(module(x).sum(), [x], create_graph=True)
    (grad,) = torch.autograd.grad(module(x).sum(), [x])  # a first derivative alone is fine
    assert torch.isfinite(grad).all()


def _trained_like(name, channels=16):
    torch.manual_seed(0)
    module = GATES[name](channels)
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return module


@pytest.mark.parametrize("name", sorted(GATES))
def test_some_parameters_frozen_or_input_without_gradient(name):
    """Gradients for just what is asked: a frozen half of the parameters gets none and the rest match the plain
    expression's; with an input that needs no gradient the parameters still get theirs."""
    module = _trained_like(name).train()
    frozen = list(module.parameters())[::2]
    for p in frozen:
        p.requires_grad_(False)
    live = [p for p in module.parameters() if p.requires_grad]
    x, g = torch.randn(3, 16, 6, 5), torch.randn(3, 16, 6, 5)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    for input_grad in (True, False) if live else (True,):  # (ECA has one parameter, frozen here)
        module.load_state_dict(state)
        xa = x.clone().requires_grad_(input_grad)
        got = torch.autograd.grad(module(xa), [xa] * input_grad + live, g)
        module.load_state_dict(state)
        xb = x.clone().requires_grad_(input_grad)
        want = torch.autograd.grad(PLAIN[type(module)](module, xb), [xb] * input_grad + live, g)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    module(x.requires_grad_()).sum().backward()
    assert all(p.grad is None for p in frozen) and all(p.grad is not None for p in live)
    assert x.grad is not None


@pytest.mark.parametrize("name", sorted(GATES))
def test_retained_graph_gives_the_same_gradient_twice_and_no_grad_the_same_output(name):
    module = _trained_like(name).eval()
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    out = module(x)
    first = torch.autograd.grad(out.sum(), [x, *module.parameters()], retain_graph=True)
    second = torch.autograd.grad(out.sum(), [x, *module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with torch.no_grad():  # the plain path: no graph, no position of the max kept
        assert torch.allclose(module(x), out, atol=1e-6)


def test_flop_counter_and_module_hooks_see_through_the_gates():
    """torch's FlopCounterMode tracks modules with hooks on their inputs during the backward, which the gates'
    sub-networks, differentiated inside the gate's backward, must not trip over."""
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model("cbam_resnet14", 10, in_channels=1, width=4, mean=[0.5], std=[0.5])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(torch.rand(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
    assert counter.get_total_flops() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels_last", "contiguous"])
def test_spatial_conv_is_the_convolution(channels_last):
    """The folded depthwise form computes F.conv2d(pooled, weight, padding=k // 2): values and both gradients
    (gradcheck in float64), odd and even sides, either layout."""
    torch.manual_seed(0)
    for h, w, k in ((7, 6, 7), (4, 4, 3), (1, 3, 7)):
        pooled = torch.randn(3, 2, h, w, dtype=torch.float64)
        if channels_last:
            pooled = pooled.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(1, 2, k, k, dtype=torch.float64)
        assert torch.allclose(spatial_conv(pooled, weight), F.conv2d(pooled, weight, padding=k // 2))
        assert torch.autograd.gradcheck(spatial_conv, (pooled.requires_grad_(), weight.requires_grad_()))


@pytest.mark.parametrize("name", ["cbam_resnet14", "se_resnet14", "eca_resnet14"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_gates_under_autocast_are_as_close_to_fp32_as_the_plain_ones(name, dtype):
    """Mixed precision (CPU autocast here; CUDA's takes the same code): the gates' nodes mix half and full
    precision tensors as autograd's own formulas would, so the whole gradient is as near the fp32 one as the plain
    expressions' gradient under the same autocast is. fp16, CUDA's usual AMP dtype, once failed in CBAM's
    spatial conv backward (fp16 maps against the fp32 weight in one convolution_backward)."""
    import contextlib
    torch.manual_seed(0)
    model = build_model(name, 10, in_channels=1, width=8, mean=[0.5], std=[0.5])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def gradient(half: bool, plain: bool) -> torch.Tensor:
        model.load_state_dict(state)
        model.zero_grad()
        with plain_gates() if plain else contextlib.nullcontext():
            with torch.autocast("cpu", dtype=dtype) if half else contextlib.nullcontext():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    exact = gradient(False, True)
    ours, plain = gradient(True, False), gradient(True, True)
    assert torch.isfinite(ours).all()
    err_ours, err_plain = ((g - exact).norm() / exact.norm() for g in (ours, plain))
    assert err_ours <= 1.5 * err_plain + 0.01, (err_ours, err_plain)


def test_ddp_reduces_the_gates_parameter_gradients(tmp_path):
    """Under DistributedDataParallel (gloo, one process: the reducer, its buckets and its per-parameter hooks all
    run) the gate nodes' parameter gradients arrive as any op's do: every parameter reduced (a second step would
    refuse to start otherwise), each equal to the unwrapped model's."""
    import copy

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(0)
    model = build_model("cbam_resnet14", 10, in_channels=1, width=4, mean=[0.5], std=[0.5])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    twin = copy.deepcopy(model)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(model)
        for _ in range(2):
            F.cross_entropy(wrapped(x), y).backward()
    finally:
        dist.destroy_process_group()
    for _ in range(2):
        F.cross_entropy(twin(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.grad is not None, name
        assert torch.allclose(p.grad, q.grad, atol=1e-6, rtol=1e-5), name


@pytest.mark.parametrize("name", sorted(GATES))
def test_a_compiled_model_trains_through_the_gates(name):
    """Under torch.compile (train.compile) the gates run eagerly, a break in the compiled graph: traced, their
    sub-networks' backward was compiled and refused the retain_graph the gate's node passes it (a RuntimeError
    about donated buffers at the first backward: here for SE and ECA; CBAM's raised it inside a whole
    cbam_resnet14, 15 s of tracing, too long for this suite). aot_eager is inductor's compiled autograd without
    its C++ compilation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), GATES[name](32), torch.nn.ReLU()).train()
    for p in model[1].parameters():
        torch.nn.init.normal_(p, std=0.5)
    compiled_twin = copy.deepcopy(model)
    compiled = torch.compile(compiled_twin, backend="aot_eager")
    x = torch.randn(4, 3, 8, 8)
    for _ in range(2):  # the second step runs the compiled code without recompiling
        compiled(x).square().sum().backward()
        model(x).square().sum().backward()
    for got, want in zip(compiled_twin.parameters(), model.parameters()):
        torch.testing.assert_close(got.grad, want.grad)
