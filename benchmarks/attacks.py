"""Attack speed against torchattacks 3.5.1, on the same model, batch and machine, in one run.

    python benchmarks/attacks.py [--batch 32] [--width 16] [--epochs 3] [--repeats 5] [--device cpu]
                                 [--threads N] [--clock wall|cpu] [--part all|issue6|issue12|issue23]
                                 [--min-steps 10] [--queries 100] [--apgd-steps 20] [--aa-eps 8/255]

Prints four ratios (targets from issue 6):
  1. FGSM sweep over eps 0..0.3 (7 values), ours vs torchattacks.FGSM once per eps          target >= 2.5x
  2. PGD at 5, 10, 20 iterations: one 20-step run vs torchattacks.PGD run three times        target >= 1.7x
  3. PGD time per step vs the bare floor (one forward+backward w.r.t. the input)            overhead <= 10%
  4. as 2, keeping the best iterate and pruning broken samples, on a trained model          target >= 3x
and three more (issue 12):
  5. per-image minimal eps (minimal_eps, tol 1/255, --min-steps) vs the naive way, PGD at each eps 1..16/255
     separately (same step rule 2.5 * eps / steps) and scored                               target >= 5x
     (also against PGD with keep_best+pruning at each eps, a stronger baseline, and the forward+backward counts)
  6. Square time per query vs one forward of the model, per image                           target <= 1.2x
  7. APGD-T time per step vs the bare forward+backward floor, per image                     target <= 1.1x
and three more (issue 23, --part issue23):
  8. per-image minimal eps with its defaults (targeted margin towards the linearized-nearest class) vs the
     pre-issue-23 default (cross-entropy only: candidates=0, cross_entropy=True), time per image  target <= 2x
  9. the same vs the naive per-eps sweep (PGD-10 at each of 1..16/255 separately, scored)
 10. AutoAttack time per image at --aa-eps: version standard (100 steps, 9 targets, 5000 queries) and fast (20, 3,
     1000), with each robust accuracy, and the minimal eps curves' robust accuracy at the same eps beside them
     (the primary measure's strength: it should leave no more images robust than the ensemble)
Lines 6 and 7 divide by the image-queries / image-steps actually run (counted by a hook in a separate run), since
images leave the batch when broken; they run at eps 1/255 so that most images stay in the batch throughout.

The model is attnrobust.models' resnet14 (the quick study's bottleneck ResNet) at --width, trained with
attnrobust.train for --epochs on the embedded fashion-mnist-mini subset so that (4) sees a model whose samples
break the way a trained model's do; the batch is the first --batch test images. Times are the minimum over --repeats
interleaved repeats (the minimum is the least disturbed by other processes on a shared machine). Each ratio is
given twice: by wall-clock time and by process CPU time (--clock picks the one the verdicts use); on a machine
other processes load, CPU time is the steadier measure of the work done, since time spent descheduled does not
count. FGSM and PGD times are crafting only; line 1 also gives the ratio with one scoring forward per eps.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from attnrobust.attacks import (apgd_t, attack_hygiene, fgsm, minimal_eps, pgd, predict, robust_accuracy_curve, square,
                                worst_case)
from attnrobust.config import AUTOATTACK_VERSIONS
from attnrobust.checkpoint import load_model
from attnrobust.data import DeviceLoader, load_dataset
from attnrobust.config import TrainConfig
from attnrobust.train import train

EPS = [round(0.05 * i, 2) for i in range(7)]
PGD_EPS, PGD_ALPHA, PGD_STEPS = 0.2, 0.01, [5, 10, 20]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn()."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def train_model(width: int, epochs: int, device: torch.device) -> tuple[torch.nn.Module, float]:
    """attnrobust.train's recipe on fashion-mnist-mini, shortened (no augmentation: it learns faster)."""
    cfg = TrainConfig.for_dataset("fashion-mnist-mini", model="resnet14", width=width, epochs=epochs,
                                  warmup_epochs=0.2, augment=False, n_test=256)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(train(cfg, tmp, device=device, quiet=True), device=device)
    return model, time.perf_counter() - start


def floor_steps(model, x, y, n: int) -> None:
    """The bare floor: n forward+backward passes w.r.t. the input, parameters frozen, nothing else."""
    with attack_hygiene(model):
        for _ in range(n):
            xr = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)


def best_times(runs: dict, warmup: str, repeats: int, device: torch.device) -> dict:
    """{clock: {name: minimum seconds over interleaved repeats}} for clock in wall, cpu."""
    timed(runs[warmup], device)  # warm-up: allocator, oneDNN primitives
    best = {clock: {name: float("inf") for name in runs} for clock in ("wall", "cpu")}
    for _ in range(repeats):
        for name, fn in runs.items():
            for clock, seconds in zip(("wall", "cpu"), timed(fn, device)):
                best[clock][name] = min(best[clock][name], seconds)
    return best


class PassCounter:
    """Counts images through the model: forwards that build a graph for an input gradient (forward+backward
    passes, in attacks) and pure scoring forwards. Used in separate, untimed runs."""

    def __init__(self, model: torch.nn.Module):
        self.grad = self.score = 0
        self.handle = model.register_forward_pre_hook(self.hook)

    def hook(self, module, args) -> None:
        n = args[0].shape[0]
        if torch.is_grad_enabled() and args[0].requires_grad:
            self.grad += n
        else:
            self.score += n

    def __enter__(self) -> "PassCounter":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs on fashion-mnist-mini (6000 images)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 with --clock cpu is the steadiest on a busy "
                             "machine, where one descheduled thread of two stalls the other at every barrier")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="which time the verdicts use (both are printed)")
    parser.add_argument("--part", choices=["all", "issue6", "issue12", "issue23"], default="all",
                        help="issue6: lines 1-4 (needs torchattacks); issue12: lines 5-7; issue23: lines 8-10")
    parser.add_argument("--min-steps", type=int, default=10, help="PGD steps per radius for line 5")
    parser.add_argument("--queries", type=int, default=100, help="Square queries for line 6")
    parser.add_argument("--apgd-steps", type=int, default=20, help="APGD-T steps per target for line 7")
    parser.add_argument("--aa-eps", type=float, default=8 / 255, help="AutoAttack budget for line 10")
    parser.add_argument("--aa-repeats", type=int, default=1,
                        help="repeats of line 10's AutoAttack runs (standard costs minutes on a CPU)")
    args = parser.parse_args()
    device = torch.device(args.device)

    model, train_s = train_model(args.width, args.epochs, device)
    if args.threads is not None:  # after training, which sets its own thread count
        torch.set_num_threads(args.threads)
    images, labels = load_dataset("fashion-mnist-mini", "test")
    x, y = next(iter(DeviceLoader(images[:args.batch], labels[:args.batch], batch_size=args.batch, device=device)))
    clean = (predict(model, x) == y).float().mean().item()
    print(f"resnet14 width {args.width} ({sum(p.numel() for p in model.parameters()):,} parameters), trained "
          f"{args.epochs} epoch(s) on fashion-mnist-mini in {train_s:.0f} s; batch {args.batch}x1x32x32 on "
          f"{device} ({torch.get_num_threads()} threads); clean accuracy on the batch {clean:.1%}")

    if args.part in ("all", "issue6"):
        issue6(args, model, x, y, device)
    if args.part in ("all", "issue12"):
        issue12(args, model, x, y, device)
    if args.part in ("all", "issue23"):
        issue23(args, model, x, y, device)


def issue6(args, model, x, y, device) -> None:
    import torchattacks

    def ta(attack):
        attack.set_device(device)
        return attack

    def score(advs):
        for adv in advs:
            predict(model, adv)

    ta_fgsm = [ta(torchattacks.FGSM(model, eps=e)) for e in EPS]
    ta_pgd = [ta(torchattacks.PGD(model, eps=PGD_EPS, alpha=PGD_ALPHA, steps=s, random_start=False))
              for s in PGD_STEPS]
    runs = {
        "ours fgsm": lambda: fgsm(model, x, y, EPS),
        "ta fgsm": lambda: [a(x, y) for a in ta_fgsm],
        "ours fgsm+score": lambda: score(fgsm(model, x, y, EPS)),
        "ta fgsm+score": lambda: score([a(x, y) for a in ta_fgsm]),
        "ours pgd": lambda: pgd(model, x, y, PGD_EPS, PGD_ALPHA, PGD_STEPS),
        "ta pgd": lambda: [a(x, y) for a in ta_pgd],
        "floor x20": lambda: floor_steps(model, x, y, max(PGD_STEPS)),
        "ours pgd keep_best": lambda: pgd(model, x, y, PGD_EPS, PGD_ALPHA, PGD_STEPS, keep_best=True),
    }
    best = best_times(runs, "ours pgd", args.repeats, device)

    # how fast samples break (explains ratio 4)
    out = pgd(model, x, y, PGD_EPS, PGD_ALPHA, PGD_STEPS, keep_best=True)
    acc = {s: (predict(model, out[s]) == y).float().mean().item() for s in PGD_STEPS}
    steps = max(PGD_STEPS)
    t, other = best[args.clock], best["cpu" if args.clock == "wall" else "wall"]
    other_name = "cpu" if args.clock == "wall" else "wall"

    def line(label, num, den, target, more=""):
        ratio = t[num] / t[den]
        verdict = "ok" if ratio >= target else "MISSED"
        print(f"{label:<58} {ratio:6.2f}x  (target >= {target}x: {verdict}; {other_name} clock "
              f"{other[num] / other[den]:.2f}x){more}")

    print(f"\nratios by {args.clock} clock (minimum of {args.repeats} repeats)")
    line("1. FGSM 7-eps sweep vs torchattacks.FGSM per eps", "ta fgsm", "ours fgsm", 2.5,
         f"  [{t['ours fgsm']:.2f} s vs {t['ta fgsm']:.2f} s; with scoring "
         f"{t['ta fgsm+score'] / t['ours fgsm+score']:.2f}x]")
    line("2. PGD 5/10/20 one run vs torchattacks.PGD three runs", "ta pgd", "ours pgd", 1.7,
         f"  [{t['ours pgd']:.2f} s vs {t['ta pgd']:.2f} s; ideal 35/20 = 1.75x]")
    overhead = t["ours pgd"] / t["floor x20"] - 1
    print(f"{'3. PGD per-step overhead over bare forward+backward':<58} {100 * overhead:+6.1f}%  (target <= 10%: "
          f"{'ok' if overhead <= 0.10 else 'MISSED'}; {other_name} clock "
          f"{100 * (other['ours pgd'] / other['floor x20'] - 1):+.1f}%)  [{1000 * t['ours pgd'] / steps:.0f} ms vs "
          f"{1000 * t['floor x20'] / steps:.0f} ms per step]")
    line("4. PGD 5/10/20 keep_best+pruning vs torchattacks three runs", "ta pgd", "ours pgd keep_best", 3.0,
         f"  [{t['ours pgd keep_best']:.2f} s; robust accuracy "
         f"{', '.join(f'{s}: {acc[s]:.1%}' for s in PGD_STEPS)}]")


def issue12(args, model, x, y, device) -> None:
    steps, queries, apgd_steps = args.min_steps, args.queries, args.apgd_steps
    grid = [j / 255 for j in range(1, 17)]
    small = 1 / 255  # lines 6 and 7: most images survive, so the batch stays near full size

    def naive(keep_best: bool) -> list[float]:
        # the way a curve is made without minimal eps: PGD at each radius of the grid, each scored
        return [(predict(model, pgd(model, x, y, e, 2.5 * e / steps, [steps], keep_best=keep_best)[steps]) == y)
                .float().mean().item() for e in grid]

    def forwards(n: int) -> None:
        with attack_hygiene(model), torch.inference_mode():
            for _ in range(n):
                model(x)

    runs = {
        "minimal_eps": lambda: minimal_eps(model, x, y, max_eps=16 / 255, tol=1 / 255, steps=steps),
        "naive pgd": lambda: naive(False),
        "naive pgd keep_best": lambda: naive(True),
        "square": lambda: square(model, x, y, small, queries=queries, generator=torch.Generator().manual_seed(0)),
        "forwards": lambda: forwards(queries),
        "apgd-t": lambda: apgd_t(model, x, y, small, steps=apgd_steps),
        "floor": lambda: floor_steps(model, x, y, apgd_steps),
    }
    best = best_times(runs, "minimal_eps", args.repeats, device)

    # the work each one did, counted in separate untimed runs: images through forward+backward / forward only
    counts = {}
    for name in ("minimal_eps", "naive pgd", "naive pgd keep_best", "square", "apgd-t"):
        with PassCounter(model) as counter:
            runs[name]()
        counts[name] = counter
    n = x.shape[0]
    found = minimal_eps(model, x, y, max_eps=16 / 255, tol=1 / 255, steps=steps)
    curve = robust_accuracy_curve(found, grid)
    gap = max(abs(a - b) for a, b in zip(curve, naive(True)))

    t, other = best[args.clock], best["cpu" if args.clock == "wall" else "wall"]
    other_name = "cpu" if args.clock == "wall" else "wall"
    print(f"\nratios by {args.clock} clock (minimum of {args.repeats} repeats); passes are per image")
    c = counts["minimal_eps"]
    ratio = t["naive pgd"] / t["minimal_eps"]
    print(f"{'5. minimal eps (1/255 grid) vs PGD at each of 1..16/255':<58} {ratio:6.2f}x  (target >= 5x: "
          f"{'ok' if ratio >= 5 else 'MISSED'}; {other_name} clock {other['naive pgd'] / other['minimal_eps']:.2f}x)"
          f"  [{t['minimal_eps']:.2f} s vs {t['naive pgd']:.2f} s; {c.grad / n:.1f} fwd+bwd + {c.score / n:.1f} fwd "
          f"vs {counts['naive pgd'].grad / n:.1f} + {counts['naive pgd'].score / n:.1f}]")
    kb = counts["naive pgd keep_best"]
    print(f"{'   vs PGD keep_best+pruning at each radius':<58} {t['naive pgd keep_best'] / t['minimal_eps']:6.2f}x  "
          f"[{t['naive pgd keep_best']:.2f} s; {kb.grad / n:.1f} fwd+bwd + {kb.score / n:.1f} fwd; curves differ by "
          f"at most {gap:.1%}; robust accuracy at 0, 4, 8, 16/255: "
          f"{', '.join(f'{a:.1%}' for a in robust_accuracy_curve(found, [0, 4 / 255, 8 / 255, 16 / 255]))}]")
    sq = counts["square"].score
    per_query = (t["square"] / sq) / (t["forwards"] / (queries * n))
    print(f"{'6. Square time per image-query vs one forward per image':<58} {per_query:6.2f}x  (target <= 1.2x: "
          f"{'ok' if per_query <= 1.2 else 'MISSED'}; {other_name} clock "
          f"{(other['square'] / sq) / (other['forwards'] / (queries * n)):.2f}x)  [{queries} queries at eps 1/255; "
          f"{sq / (queries * n):.0%} of the full-batch queries run; no backward: {counts['square'].grad == 0}]")
    at = counts["apgd-t"]
    per_step = (t["apgd-t"] / at.grad) / (t["floor"] / (apgd_steps * n))
    print(f"{'7. APGD-T time per image-step vs forward+backward floor':<58} {per_step:6.2f}x  (target <= 1.1x: "
          f"{'ok' if per_step <= 1.1 else 'MISSED'}; {other_name} clock "
          f"{(other['apgd-t'] / at.grad) / (other['floor'] / (apgd_steps * n)):.2f}x)  [{apgd_steps} steps x 9 "
          f"targets at eps 1/255; {at.grad / n:.1f} fwd+bwd + {at.score / n:.1f} fwd per image]")


def issue23(args, model, x, y, device) -> None:
    steps, n = args.min_steps, x.shape[0]
    grid = [j / 255 for j in range(1, 17)]
    shown = [4 / 255, 8 / 255, 16 / 255]

    def naive() -> list[float]:
        return [(predict(model, pgd(model, x, y, e, 2.5 * e / steps, [steps])[steps]) == y).float().mean().item()
                for e in grid]

    new = dict(max_eps=16 / 255, tol=1 / 255, steps=steps)  # the defaults (candidates=9, targeted only)
    old = dict(new, candidates=0, cross_entropy=True)  # the default before issue 23
    runs = {"new": lambda: minimal_eps(model, x, y, **new), "old": lambda: minimal_eps(model, x, y, **old),
            "naive pgd": naive}
    best = best_times(runs, "new", args.repeats, device)
    counts = {}
    for name in ("new", "old", "naive pgd"):
        with PassCounter(model) as counter:
            runs[name]()
        counts[name] = counter

    def aa(version: str) -> dict:
        steps_v, queries_v, targets_v = AUTOATTACK_VERSIONS[version]
        return worst_case(model, x, y, args.aa_eps, steps=steps_v, queries=queries_v, n_target_classes=targets_v,
                          generator=torch.Generator().manual_seed(0))

    aa_runs = {"standard": lambda: aa("standard"), "fast": lambda: aa("fast")}
    aa_best = best_times(aa_runs, "fast", args.aa_repeats, device)
    aa_robust = {v: run()["robust"].float().mean().item() for v, run in aa_runs.items()}

    t, other = best[args.clock], best["cpu" if args.clock == "wall" else "wall"]
    other_name = "cpu" if args.clock == "wall" else "wall"
    curves = {name: robust_accuracy_curve(minimal_eps(model, x, y, **kw), shown) for name, kw in
              (("new", new), ("old", old))}
    print(f"\nissue 23, ratios by {args.clock} clock (minimum of {args.repeats} repeats); passes are per image")
    ratio = t["new"] / t["old"]
    c, o = counts["new"], counts["old"]
    print(f"{'8. minimal eps, new default vs the pre-issue-23 default':<58} {ratio:6.2f}x cost  (target <= 2x: "
          f"{'ok' if ratio <= 2 else 'MISSED'}; {other_name} clock {other['new'] / other['old']:.2f}x)  "
          f"[{t['new'] / n * 1e3:.1f} vs {t['old'] / n * 1e3:.1f} ms per image; {c.grad / n:.1f} fwd+bwd + "
          f"{c.score / n:.1f} fwd (+ up to 9 backward for the target choice) vs {o.grad / n:.1f} + "
          f"{o.score / n:.1f}]")
    nv = counts["naive pgd"]
    print(f"{'9. minimal eps, new default vs PGD at each of 1..16/255':<58} {t['naive pgd'] / t['new']:6.2f}x faster"
          f"  ({other_name} clock {other['naive pgd'] / other['new']:.2f}x)  [{nv.grad / n:.1f} fwd+bwd + "
          f"{nv.score / n:.1f} fwd per image]")
    ta, oa = aa_best[args.clock], aa_best["cpu" if args.clock == "wall" else "wall"]
    print(f"{'10. AutoAttack standard vs fast, time per image':<58} {ta['standard'] / ta['fast']:6.2f}x  "
          f"[standard {ta['standard'] / n:.3f} s, fast {ta['fast'] / n:.3f} s per image at eps "
          f"{args.aa_eps * 255:.3g}/255 ({other_name} clock {oa['standard'] / n:.3f} / {oa['fast'] / n:.3f} s); "
          f"robust accuracy standard {aa_robust['standard']:.1%}, fast {aa_robust['fast']:.1%}]")
    sweep = dict(zip(grid, naive()))
    print("    minimal eps robust accuracy at " + ", ".join(f"{e * 255:.0f}" for e in shown) + "/255: new "
          + ", ".join(f"{v:.1%}" for v in curves["new"]) + "; old " + ", ".join(f"{v:.1%}" for v in curves["old"])
          + "; naive PGD sweep " + ", ".join(f"{sweep[e]:.1%}" for e in shown))


if __name__ == "__main__":
    main()
