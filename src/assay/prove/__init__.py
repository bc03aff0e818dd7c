"""Overwhelm proofs (paper 1): certify that a fixed prefix decides a causal model's next token.

- :func:`prove` (model, prefix, n_free, suffix=(), allowed=None) -> :class:`ProveResult`
- :func:`check` (certificate, model) -> True, or raises :class:`CertificateError`
- :func:`design` (model, n_fix, n_free, ...) -> :class:`DesignResult`

See docs/prove.md for the claim, every bound and why it is sound.
"""

from assay.prove.api import ProveResult, prove
from assay.prove.check import CertificateError, check
from assay.prove.design import DesignResult, design

__all__ = ["CertificateError", "DesignResult", "ProveResult", "check", "design", "prove"]
