"""Forward-pass speed: assay's Transformer vs transformers' GPT2LMHeadModel, same weights, same inputs.

Each model is imported from a random-init GPT2LMHeadModel with :func:`assay.model.importers.from_hf_gpt2`,
then both are timed in the same process on the same token batches (float32, CPU, ``torch.inference_mode``).
Runs alternate between the models so that drift in machine load hits both alike; the table shows the
median of the runs and the ratio ours / HF (below 1 = ours is faster). HF is timed with its default
attention (``sdpa``, a fused kernel) and with ``eager`` (explicit softmax, like ours).

This is a measurement, not a test: it never asserts anything about time.

    python benchmarks/forward.py            # tiny and GPT-2-small-size models
    python benchmarks/forward.py --quick    # a few seconds: tiny, and GPT-2-small at one short size
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

SIZES = {
    # name: (GPT2Config kwargs, [(batch, seq), ...])
    "tiny": (dict(n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=512), [(1, 128), (8, 512)]),
    "gpt2-small": (
        dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
        [(1, 128), (1, 512), (8, 128), (8, 512)],
    ),
}
QUICK = {"tiny": [(1, 128), (8, 512)], "gpt2-small": [(1, 128)]}


def median_seconds(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Return the median wall time of each function over ``repeats`` interleaved runs (after one warm-up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    """Print the table of median forward times and ratios (ours / HF) for each size."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few small sizes only (seconds)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per cell (default 5; 3 when large)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args(argv)

    import transformers

    from assay.model.importers import from_hf_gpt2

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    header = (
        f"{'model':<11} {'batch':>5} {'seq':>4} {'ours ms':>9} {'HF sdpa ms':>10} {'HF eager ms':>11} "
        f"{'ours/sdpa':>9} {'ours/eager':>10} {'max|dlogit|':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, (kw, shapes) in SIZES.items():
        if args.quick:
            shapes = QUICK[name]
        torch.manual_seed(0)
        config = transformers.GPT2Config(**kw, bos_token_id=0, eos_token_id=0)
        hf_sdpa = transformers.GPT2LMHeadModel(config).eval()
        config_eager = transformers.GPT2Config(**kw, bos_token_id=0, eos_token_id=0)
        config_eager._attn_implementation = "eager"
        hf_eager = transformers.GPT2LMHeadModel(config_eager).eval()
        hf_eager.load_state_dict(hf_sdpa.state_dict())
        ours = from_hf_gpt2(hf_sdpa)
        for batch, seq in shapes:
            tokens = torch.randint(0, kw["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                diff = (ours(tokens) - hf_sdpa(tokens).logits).abs().max().item()
                big = batch * seq * kw["n_embd"] >= 8 * 512 * 768
                repeats = args.repeats or (3 if big else 5)
                t = median_seconds(
                    {
                        "ours": partial(ours, tokens),
                        "sdpa": partial(hf_sdpa, tokens),
                        "eager": partial(hf_eager, tokens),
                    },
                    repeats,
                )
            print(
                f"{name:<11} {batch:>5} {seq:>4} {t['ours'] * 1e3:>9.1f} {t['sdpa'] * 1e3:>10.1f} "
                f"{t['eager'] * 1e3:>11.1f} {t['ours'] / t['sdpa']:>9.2f} {t['ours'] / t['eager']:>10.2f} "
                f"{diff:>11.1e}",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.1f} at end (with other work on the CPUs, trust ratios over times)")


if __name__ == "__main__":
    main()
