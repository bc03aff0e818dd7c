"""assay: what a small transformer provably does, and why."""

__version__ = "0.1.0"
