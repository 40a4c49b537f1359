"""What scoring a source's attacks on the other seeds' targets (eval.transfer_sources = "other-seeds", issue 37)
adds to an attack job's time, against the same job scoring its own seed's models only, in one run.

    python benchmarks/cross_scoring.py [--config fashion-mnist-cpu] [--seeds 10] [--n 2000] [--strong-n 500]
                                       [--repeats 2] [--threads N] [--device cpu]

One attack job's transfer part (evaluate.craft_and_score, as jobs.run_attack_job calls it: FGSM on --n images,
the other attacks of the config on --strong-n of them) for each model of the config as the source, at the config's
model arguments and width, on 28x28 grey images:
  same-seed   the source scored on its own seed's models (the study's models, one seed)
  other-seeds the same, plus the other --seeds - 1 seeds' models of the other architectures (Job.others)
Crafting is the same in both (once per source and setting); the difference is one forward pass per extra target,
adversarial image and setting, and one clean forward per extra target and image. Prints, per source, both times,
their ratio and the added seconds, by wall-clock and by process CPU time, the minimum over --repeats interleaved
repeats. The models are freshly initialised: a forward pass costs what a trained model's does, and the configs
attack without keep_best pruning, so crafting does not depend on the weights either. The white-box measures
(minimal eps, AutoAttack) and corruptions an attack job also runs are left out: the ratio is an upper bound on what
other-seeds adds to a whole attack job.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from attnrobust.config import load_config
from attnrobust.data import DeviceLoader
from attnrobust.evaluate import craft_and_score
from attnrobust.models import build_model
from attnrobust.runtime import set_threads


def _models(cfg, seed: int, device) -> dict:
    torch.manual_seed(seed)
    out = {}
    for name in cfg.study.models:
        train = cfg.train_config(cfg.study.datasets[0], name, seed)
        model = build_model(name, 10, in_channels=1, width=train.width, **dict(train.model_args))
        out[name] = model.to(device).eval()
    return out


def _timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion-mnist-cpu")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--n", type=int, default=2000, help="images FGSM attacks")
    parser.add_argument("--strong-n", type=int, default=500, help="images the other attacks attack")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(args.config)
    fgsm_cfg = replace(cfg.attack, attacks=[a for a in cfg.attack.attacks if a == "fgsm"])
    strong_cfg = replace(cfg.attack, attacks=[a for a in cfg.attack.attacks if a in ("pgd", "apgd")],
                         sanity_checks=False)
    images = torch.randint(0, 256, (args.n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 10, (args.n,), generator=torch.Generator().manual_seed(1))
    loaders = [(fgsm_cfg, DeviceLoader(images, labels, batch_size=cfg.eval.batch_size, device=device)),
               (strong_cfg, DeviceLoader(images[:args.strong_n], labels[:args.strong_n],
                                         batch_size=cfg.eval.batch_size, device=device))]
    cells = {s: _models(cfg, s, device) for s in range(args.seeds)}

    def job(source: str, cross: bool) -> None:
        others = {(m, s): model for s, cell in cells.items() if s != 0 for m, model in cell.items()
                  if m != source} if cross else None
        for attack_cfg, loader in loaders:
            if attack_cfg.attacks:
                craft_and_score({source: cells[0][source]}, cells[0], loader, attack_cfg, dataset="bench", seed=0,
                                quiet=True, others=others)

    print(f"{args.config}: {args.seeds} seeds, FGSM on {args.n} images, "
          f"{'/'.join(strong_cfg.attacks) or 'nothing'} on {args.strong_n}, {threads} thread(s), {device}")
    print(f"{'source':<16} {'targets':>8} {'same-seed s':>12} {'other-seeds s':>14} {'ratio':>6} {'added s':>8}"
          f"   (wall | cpu)")
    for source in cfg.study.models:
        best = {False: [float("inf")] * 2, True: [float("inf")] * 2}
        for _ in range(args.repeats):
            for cross in (False, True):  # interleaved: a slow spell of the machine hits both
                best[cross] = [min(a, b) for a, b in zip(best[cross], _timed(lambda: job(source, cross)))]
        extra = (args.seeds - 1) * (len(cfg.study.models) - 1)
        for clock, i in (("wall", 0), ("cpu", 1)):
            same, cross = best[False][i], best[True][i]
            print(f"{source:<16} {len(cfg.study.models):>3}+{extra:<4} {same:>12.2f} {cross:>14.2f} "
                  f"{cross / same:>6.2f} {cross - same:>8.2f}   {clock}")


if __name__ == "__main__":
    main()
