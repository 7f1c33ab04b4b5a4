"""Write the synthetic instrument readings in ./experiments (run it to make more or other ones).

    python make_experiments.py --count 4 --length 200 --seed 7

Each experiment is one CSV file: a slow wave, noise, and three sharp pulses.
The workflow reads every file of ./experiments, as the blog post's does.
"""
from __future__ import annotations

import argparse
import math
import os
import random


def readings(length: int, rng: random.Random) -> list[float]:
    pulses = set(rng.sample(range(10, length - 10), 3))
    return [math.sin(2 * math.pi * i / 50) + rng.gauss(0.0, 0.3) + (6.0 if i in pulses else 0.0) for i in range(length)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiments"))
    opts = p.parse_args()
    rng = random.Random(opts.seed)
    os.makedirs(opts.out, exist_ok=True)
    for n in range(1, opts.count + 1):
        with open(os.path.join(opts.out, f"run-{n:02d}.csv"), "w") as f:
            f.write("sample,signal\n")
            f.writelines(f"{i},{x:.4f}\n" for i, x in enumerate(readings(opts.length, rng)))


if __name__ == "__main__":
    main()
