"""Figures (matplotlib, Agg) and the HTML report written by ``assay demo``."""
