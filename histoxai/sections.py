"""Render a report given as (kind, content) sections as Markdown or as one self-contained HTML page.

Kinds: 'h1' | 'h2' | 'h3' (text), 'p' (text), 'list' (texts), 'pre' (text), 'table' (DataFrame; rows
listed in frame.attrs['training_rows'] are highlighted in HTML), 'image' ((caption, path relative to
the report's folder); embedded in HTML). The evaluate and report steps both write their reports this way.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from histoxai.metrics import format_value, markdown_table

STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}td:first-child,th:first-child"
         "{text-align:left}th{background:#eee}tr.training{background:#fff3c4}"
         "figure{display:inline-block;margin:6px}img{max-width:100%}figcaption{font-size:90%}")


def render_markdown(sections: Iterable[tuple[str, object]]) -> str:
    parts = []
    for kind, content in sections:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"{'#' * int(kind[1])} {content}\n")
        elif kind == "p":
            parts.append(f"{content}\n")
        elif kind == "list":
            parts.append("".join(f"- {item}\n" for item in content))
        elif kind == "pre":
            parts.append(f"```\n{content.rstrip()}\n```\n")
        elif kind == "table":
            parts.append(markdown_table(content))
        elif kind == "image":
            parts.append(f"![{content[0]}]({content[1]})\n")
    return "\n".join(parts)


def _html_table(frame: pd.DataFrame) -> str:
    highlighted = set(frame.attrs.get("training_rows", []))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cells = "".join(f"<td>{html.escape(format_value(v))}</td>" for v in row)
        body.append(f"<tr class=\"training\">{cells}</tr>" if i in highlighted else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(sections: Iterable[tuple[str, object]], title: str, image_root: Path | None = None) -> str:
    """Self-contained HTML (the pipeline UI shows it as is); images are read from image_root and embedded."""
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>"]
    for kind, content in sections:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(str(content))}</{kind}>")
        elif kind == "p":  # Markdown backslash escapes mean nothing in HTML
            parts.append(f"<p>{html.escape(str(content).replace(chr(92), ''))}</p>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(str(content))}</pre>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in content) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(content))
        elif kind == "image":
            data = base64.b64encode((Path(image_root) / content[1]).read_bytes()).decode()
            caption = html.escape(content[0])
            parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{caption}\">"
                         f"<figcaption>{caption}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "".join(parts)
