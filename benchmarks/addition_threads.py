"""Questions per second of an addition model's forward pass with 1 and 2 torch threads (prints the ratio).

Why ``assay addition`` defaults to ``--threads 1``: on a shared 2-core machine with other work running,
two OpenMP threads can be much slower than one (the second thread spins waiting for a core). Run:

    .venv/bin/python benchmarks/addition_threads.py [MODEL] [--batch 64] [--repeat 20]

MODEL defaults to the shipped addition-1l (or a random model of its shape if it is absent).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from assay.addition.evaluate import answer_stats
from assay.tasks import addition


def questions_per_second(model, batch: int, repeat: int, threads: int) -> float:
    """Return the median questions/s over ``repeat`` forward passes of ``batch`` questions."""
    torch.set_num_threads(threads)
    a, b = addition.random_operands(np.random.default_rng(0), batch)
    answer_stats(model, a, b, 5)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        answer_stats(model, a, b, 5)
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="addition-1l")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    from assay.errors import BadInput
    from assay.model import ModelConfig, Transformer, load

    try:
        model = load(args.model)
    except BadInput:
        from assay.recipes import get_recipe

        model = Transformer(ModelConfig(**get_recipe("addition-1l").model, d_vocab=12))
    model.eval()
    q1 = questions_per_second(model, args.batch, args.repeat, 1)
    q2 = questions_per_second(model, args.batch, args.repeat, 2)
    print(f"batch {args.batch}: 1 thread {q1:.0f} questions/s, 2 threads {q2:.0f} questions/s, "
          f"ratio 2/1 = {q2 / q1:.2f}")


if __name__ == "__main__":
    main()
