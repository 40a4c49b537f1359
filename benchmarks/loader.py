"""Loader throughput: the device-resident DeviceLoader against a torch DataLoader doing the same work per sample.

    python benchmarks/loader.py [--device cpu] [--batch-size 256] [--batches 40] [--workers 0,2] [--threads N]

Both sides start from the same uint8 arrays, already padded to 32x32, and produce the same thing: float32 batches
in [0,1] with a random 4-pixel-padded crop (and for CIFAR a random horizontal flip). DeviceLoader gathers whole
batches by index arithmetic; the baseline is the usual Dataset.__getitem__ (pad, slice, flip, scale one image)
collated by a DataLoader with num_workers=0 and, optionally, worker processes. Data: the embedded
fashion-mnist-mini train split (6000 images, "crop") and a synthetic CIFAR-shaped array (10000 x 3x32x32,
"crop_flip"; only its shape matters for speed). Each loader runs a few warm-up batches (worker start-up, thread
pools), then `--batches` timed ones; the ratio is DeviceLoader over each baseline, measured in the same run.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from attnrobust.data import CROP_PAD, DeviceLoader, load_dataset

WARMUP = 3


class PerSampleAugment(Dataset):
    """The textbook baseline: one image at a time, the same crop/flip as DeviceLoader."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: str):
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = F.pad(self.images[i], (CROP_PAD,) * 4)
        dy, dx = torch.randint(0, 2 * CROP_PAD + 1, (2,)).tolist()
        x = x[:, dy:dy + 32, dx:dx + 32]
        if self.augment == "crop_flip" and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.float().div(255), self.labels[i]


def batches_per_second(batches, n: int) -> float:
    it = iter(batches)
    for _ in range(WARMUP):
        next(it)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    return n / (time.perf_counter() - start)


def endless(loader: DeviceLoader):
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=40, help="timed batches per loader")
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers values to compare (default: 0,2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice; 1 is steadier on a busy machine)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    torch.manual_seed(0)

    mini_x, mini_y = load_dataset("fashion-mnist-mini", "train")
    cifar_x = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8)
    cifar_y = torch.randint(0, 10, (10000,))
    print(f"loader benchmark: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {args.device}, batch {args.batch_size}, {args.batches} batches")
    print(f"{'data':<22} {'loader':<34} {'batches/s':>10} {'DeviceLoader is':>16}")
    for name, x, y, augment in (("fashion-mnist-mini", mini_x, mini_y, "crop"),
                                ("cifar-shaped (synth.)", cifar_x, cifar_y, "crop_flip")):
        device_loader = DeviceLoader(x, y, batch_size=args.batch_size, device=args.device, shuffle=True,
                                     augment=augment, drop_last=True)
        ours = batches_per_second(endless(device_loader), args.batches)
        print(f"{name:<22} {'DeviceLoader (' + augment + ')':<34} {ours:>10.1f} {'':>16}")
        padded = device_loader.images.cpu().contiguous()  # same padded uint8 storage as the baseline's input
        for w in workers:
            baseline = DataLoader(PerSampleAugment(padded, y, augment), batch_size=args.batch_size, shuffle=True,
                                  drop_last=True, num_workers=w, persistent_workers=w > 0)

            def forever(loader=baseline):
                while True:
                    for xb, yb in loader:
                        yield xb.to(args.device), yb.to(args.device)

            theirs = batches_per_second(forever(), args.batches)
            print(f"{name:<22} {f'DataLoader per-sample, {w} workers':<34} {theirs:>10.1f} "
                  f"{ours / theirs:>14.1f}x")


if __name__ == "__main__":
    main()
