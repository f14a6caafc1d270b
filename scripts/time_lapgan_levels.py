#!/usr/bin/env python3
"""What a wider LAPGAN costs: the time of one training step (D step and G step) of each conditional
level, at each `--n-feats`, on this machine, with a ratio against the first width.

All widths are timed in one process on the same random batch, after one warm-up step, so the ratio
holds even when the machine is shared; the absolute milliseconds do not.

  python scripts/time_lapgan_levels.py                          (64 px, widths 64 and 128)
  OMP_NUM_THREADS=1 python scripts/time_lapgan_levels.py        (one thread, as in docs/lapgan.md)
  python scripts/time_lapgan_levels.py --widths 64 96 128 --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from srgan_cli.lapgan.models import LapganConfig
from srgan_cli.lapgan.train import LapganTrainConfig, LevelTrainer


def time_levels(
    size: int, widths: list[int], steps: int, batch: int, device: str = "cpu"
) -> list[tuple[int, int, int, float]]:
    """(level, batch, width, seconds per step) for every conditional level and width. The finest
    level gets half the batch, as the shipped pyramid was trained."""
    results = []
    levels = LapganConfig(size=size).levels
    for level in range(1, levels):
        n = batch // 2 if level == levels - 1 else batch
        real = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(level)) * 2 - 1
        real = real.to(device)
        for width in widths:
            config = LapganConfig(size=size, n_feats=width)
            trainer = LevelTrainer(config, level, LapganTrainConfig(), torch.device(device))
            trainer.step(real, None)  # warm-up
            started = time.perf_counter()
            for _ in range(steps):
                trainer.step(real, None)
            results.append((level, n, width, (time.perf_counter() - started) / steps))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64, help="finest side (base 8)")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128], help="--n-feats values")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per level and width")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = time_levels(args.size, args.widths, args.steps, args.batch)
    config = LapganConfig(size=args.size)
    print(
        f"{'level':>5} {'side':>5} {'batch':>5} "
        + " ".join(f"{'n-feats ' + str(w):>14}" for w in args.widths)
    )
    for level in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == level]
        base = mine[0][3]
        cells = " ".join(f"{r[3] * 1000:7.0f} ms x{r[3] / base:4.2f}" for r in mine)
        print(f"{level:>5} {config.side(level):>5} {mine[0][1]:>5} {cells}")


if __name__ == "__main__":
    main()
