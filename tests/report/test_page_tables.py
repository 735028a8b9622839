"""A label holding ``|`` (or markup) keeps every table of the page in its columns, in Markdown and in HTML."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from test_report import make_sweep
from test_where import make_layer_sweep

from dsteer_eval.cli import main


def _md_cells(line: str) -> list[str]:
    """The cells of a Markdown table row: split on the pipes that are not escaped."""
    return [c.strip().replace("\\|", "|").replace("**", "") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _md_tables(md: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in md.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            cells = _md_cells(line)
            if not set("".join(cells)) <= set("-: "):  # the separator row
                current.append(cells)
        else:
            current = None
    return tables


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def _html_tables(page: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def _check(folder, label):
    md = (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    md_tables, html_tables = _md_tables(md), _html_tables(page)
    assert md_tables and len(md_tables) == len(html_tables)
    for table in md_tables:
        assert len({len(row) for row in table}) == 1, table  # every row as wide as the header
    for table in html_tables:
        assert len({len(row) for row in table}) == 1, table
    return md_tables, html_tables, md, page


def test_a_pipe_in_a_label_keeps_the_card_in_its_columns(tmp_path, capsys):
    label = "own | <script>alert(1)</script>"
    assert main(["report", str(make_sweep(tmp_path / "a", planted=True)), str(make_sweep(tmp_path / "b", planted=False)),
                 "--labels", f"{label},other", "--out", str(tmp_path / "rep")]) == 0
    md_tables, html_tables, md, page = _check(tmp_path / "rep", label)
    card_md = next(t for t in md_tables if t[0][0] == "task / metric")
    card_html = next(t for t in html_tables if t[0][0] == "task / metric")
    assert len(card_md[0]) == len(card_html[0])
    for card in (card_md, card_html):
        row = next(r for r in card if r[0] == f"{label}: toy_task / margin" and r[2] == "L2_a-1")
        assert row[1] == "dpo" and row[3] == "50.0 % [50.0 %, 50.0 %]"
    assert "own \\| <script>" in md and "<script>alert" not in page and "own | &lt;script&gt;alert(1)" in page


def test_a_pipe_in_a_label_keeps_the_where_table_in_its_columns(tmp_path, capsys):
    assert main(["report", str(make_layer_sweep(tmp_path / "s")), "--labels", "position | all",
                 "--out", str(tmp_path / "rep")]) == 0
    md_tables, html_tables, md, page = _check(tmp_path / "rep", "position | all")
    for tables in (md_tables, html_tables):
        where = next(t for t in tables if t[0][0] == "sweep")
        assert [r[0] for r in where[1:]] == ["position | all"] * 3 and [r[1] for r in where[1:]] == \
            ["1", "2 ← chosen", "3+4"]
