"""Prover vs enumeration on tiny models: time ratio, and how tight the certified margin is.

Enumeration runs the model (float64, batched) on every free string of length 0..n_free, |A|^L of
them per length, and is ground truth for models this small; the prover's work grows with n_free
polynomially. For each claim: both times, their ratio, the certified margin against the true minimum
margin, and whether the prover's verdict agrees (a proof must never happen when enumeration finds a
different argmax; failing to prove a true claim is looseness, not an error).

    python benchmarks/prove_vs_bruteforce.py
"""

from __future__ import annotations

import time

import numpy as np

from assay.prove import prove
from assay.prove.bruteforce import enumerate_claim
from assay.prove.toy import toy_model


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'vocab':>5} {'n_free':>6} {'strings':>8} {'prove s':>8} {'enum s':>8} {'enum/prove':>10} "
          f"{'proven':>6} {'true':>5} {'margin':>8} {'true min':>8}")
    for vocab in (6, 16, 48):
        m = toy_model(1, d_vocab=vocab, qk=0.3, embed=3.0, unembed=2.0, n_ctx=64)
        for n_free in (1, 2, 3):
            if vocab ** n_free > 200_000:
                continue
            for _ in range(2):
                prefix = rng.integers(0, vocab, 40).tolist()
                suffix = [int(rng.integers(vocab))]
                t0 = time.process_time()
                r = prove(m, prefix, n_free, suffix=suffix)
                tp = time.process_time() - t0
                t0 = time.process_time()
                e = enumerate_claim(m, prefix, n_free, suffix)
                te = time.process_time() - t0
                true_claim = e.argmax_tokens == {r.token}
                assert not (r.proven and not true_claim), "false proof"
                print(f"{vocab:5d} {n_free:6d} {e.n_strings:8d} {tp:8.3f} {te:8.3f} {te / tp:10.2f} "
                      f"{str(r.proven):>6} {str(true_claim):>5} {r.best_margin:8.3f} {e.min_margin[r.token]:8.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
