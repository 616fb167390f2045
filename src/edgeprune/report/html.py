"""report.html: one self-contained page (styles and plots inline, nothing fetched) with every data set's
section."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from .plots import slug
from .sections import PAIRS_TEXT, PAIRS_TITLE, Section
from .tables import Column, cell, columns, pair_columns

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.3rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem;
       margin-top: 2.5rem; }
.scroll { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .8rem; white-space: nowrap; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; }
th { background: #f3f3f3; position: sticky; top: 0; }
td:nth-child(-n+4), th:nth-child(-n+4) { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1.5rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
.note { background: #fff8e1; border-left: 4px solid #f0c040; padding: .4rem .8rem; font-size: .9rem; }
"""


def _table(items: Sequence, cols: list[Column]) -> str:
    head = "".join(f"<th>{html.escape(c.header)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(c, item))}</td>" for c in cols) + "</tr>\n" for item in items)
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table></div>'


def page(title: str, sections: list[Section], intro: list[str]) -> str:
    """The whole page: the intro, links to the data sets, then per data set its runs table, its pairs,
    notes and plots (PNG as data: URLs)."""
    e = html.escape
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>',
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>", *(f"<p>{e(p)}</p>" for p in intro)]
    if len(sections) > 1:
        parts.append("<p>Data sets: " + ", ".join(f'<a href="#data-{slug(s.data)}">{e(s.data)}</a>'
                                                  for s in sections) + "</p>")
    for s in sections:
        parts += [f'<section id="data-{slug(s.data)}"><h2>Data set: {e(s.data)}</h2>',
                  f"<p>{len(s.rows)} runs, all on {e(s.data)}; no run of another data set is in this table or "
                  "its plots.</p>", _table(s.rows, columns(s.rows, data_column=False))]
        if s.pairs:
            parts += [f"<h3>{e(PAIRS_TITLE)}</h3>", f"<p>{e(PAIRS_TEXT)}</p>",
                      "<ul>" + "".join(f"<li>{e(h)}</li>" for h in s.headline) + "</ul>",
                      _table(s.pairs, pair_columns(s.pairs, data_column=False))]
        parts += [f'<p class="note">{e(n)}</p>' for n in s.notes]
        for p in s.plots:
            data = base64.b64encode(p.png).decode("ascii")
            parts.append(f'<figure><img alt="{e(p.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(p.caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
