"""Paper 3 (Quirke & Barez, ICLR 2024): what a transformer that adds n-digit numbers computes, and where it fails.

Modules, each with one job:

- :mod:`assay.addition.rules` — exact sub-results per column (BA, MC1, MS9, carries), categories and
  the look-back rules (the paper's two-column rule and its depth-k generalisation), vectorised.
- :mod:`assay.addition.evaluate` — the model's answers, per-digit losses and accuracy per category
  with Wilson intervals; the check that a model speaks the addition vocabulary.
- :mod:`assay.addition.ablation` — position and head ablations (zero and mean) through temporary hooks.
- :mod:`assay.addition.attention` — each head's attention per answer position (the double staircase).
- :mod:`assay.addition.probes` — linear probes of each head's output for BA / MC1 / MS9 of each column.
- :mod:`assay.addition.failures` — every wrong answer among many random questions, classified, and the
  look-back rules and the declared algorithm compared with the model question by question.
- :mod:`assay.addition.training` — the recipe's training loop plus a per-step, per-digit training loss log.
- :mod:`assay.addition.report` — ``assay addition analyze``: markdown report, figures, JSON summary.
"""
