"""Small HTML helpers for the report: escaping, tables, figures, a page shell."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
td, th { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } code, pre { background: #f6f6f6; } pre { padding: 0.5rem; overflow-x: auto; }
.note { color: #666; font-style: italic; } img { max-width: 100%; }
"""


def esc(x: Any) -> str:
    """Return ``str(x)`` escaped for HTML."""
    return html.escape(str(x))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return an HTML table with the given header and rows (cells escaped)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def figure(path: Path, root: Path, caption: str) -> str:
    """Return an <img> with a caption, its src relative to the report's root directory."""
    rel = path.relative_to(root).as_posix()
    return f'<figure><img src="{esc(rel)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def page(title: str, body: str) -> str:
    """Return a whole HTML document."""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n"
    )
