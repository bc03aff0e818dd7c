"""Data for training and analysis: addition questions, formal languages, text corpora and tokenizers.

- :mod:`assay.tasks.addition` — n-digit addition (Quirke & Barez): tokens, answers, categories, batches.
- :mod:`assay.tasks.formal` — majority, parity, Dyck-1: generators and reference recognisers.
- :mod:`assay.tasks.text` — corpora from installed packages, a local BPE tokenizer, token windows.
"""
