"""The report page as structured blocks, written out as Markdown or as HTML from the same blocks (a table's
cells are never re-split from Markdown text, so a ``|`` in a label cannot shift a column).

A block is one of ``("heading", level, text)``, ``("para", text)``, ``("bullet", text)``,
``("table", header, align, rows)`` (cells as plain text; ``align`` the Markdown separator cells, e.g. ``"---:"``)
and ``("figure", title, file)``. Text may hold ``**bold**`` and ```code``` marks; everything else is literal:
Markdown table cells escape ``\\`` and ``|``, HTML escapes every character that means markup."""

from __future__ import annotations

import base64
import html
from pathlib import Path


def md_cell(text) -> str:
    """A Markdown table cell: backslashes and pipes escaped, line breaks as spaces."""
    text = " ".join(str(text).splitlines())
    return text.replace("\\", "\\\\").replace("|", "\\|")


def md_row(cells) -> str:
    return "| " + " | ".join(md_cell(c) for c in cells) + " |"


def markdown_lines(blocks) -> list[str]:
    """The blocks as Markdown lines, a blank line after each block (consecutive bullets form one list)."""
    out = []
    for i, block in enumerate(blocks):
        kind = block[0]
        if kind == "heading":
            out.append("#" * block[1] + " " + block[2])
        elif kind == "para":
            out.append(block[1])
        elif kind == "bullet":
            out.append("* " + block[1])
        elif kind == "table":
            _, header, align, rows = block
            out += [md_row(header), "| " + " | ".join(align) + " |"] + [md_row(r) for r in rows]
        elif kind == "figure":
            out.append(f"![{block[1]}]({block[2]})")
        else:
            raise ValueError(f"unknown page block {kind!r}")
        following = blocks[i + 1][0] if i + 1 < len(blocks) else None
        if not (kind == "bullet" and following == "bullet"):
            out.append("")
    return out


def inline_html(text) -> str:
    """Escaped text with ``**bold**`` and ```code``` marks as tags."""
    out = html.escape(str(text))
    parts = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def html_lines(blocks, folder: Path) -> list[str]:
    """The blocks as HTML, figures read from ``folder`` and embedded as base64 PNG."""
    out = []
    for block in blocks:
        kind = block[0]
        if kind == "heading":
            out.append(f"<h{block[1]}>{inline_html(block[2])}</h{block[1]}>")
        elif kind == "para":
            out.append(f"<p>{inline_html(block[1])}</p>")
        elif kind == "bullet":
            out.append(f"<p>• {inline_html(block[1])}</p>")
        elif kind == "table":
            _, header, _, rows = block
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{inline_html(c)}</th>" for c in header) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        elif kind == "figure":
            data = base64.b64encode((Path(folder) / block[2]).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(block[1])}" src="data:image/png;base64,{data}"></p>')
        else:
            raise ValueError(f"unknown page block {kind!r}")
    return out
