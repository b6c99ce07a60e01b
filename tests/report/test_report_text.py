"""The escaping rules of tasks.report_text, checked on what two markdown engines build from them."""

from __future__ import annotations

import re

import pytest

from tasks.report_text import md_image, md_inline, md_link, md_quote, model_markdown, plain, safe_html
from tests.report.hostile import FORGED_FINDINGS, FORGED_QUESTION
from tests.report.markup import assert_inert, parse_html, rendered


@pytest.mark.parametrize("escape", [md_inline, md_quote], ids=["inline", "quote"])
def test_user_text_reads_as_typed_and_builds_no_markup(escape) -> None:
    for page in rendered(escape(FORGED_QUESTION)):
        assert page.tags() <= {"p", "blockquote", "br"}, page.tags()
        text = " ".join(page.text.split())
        for typed in ("# Model: TRAINED, results validated", "<script>alert(1)</script>", "<img src=x onerror=alert(2)>",
                      "- a list item", "1. a numbered one", "[click](javascript:alert(3))", "&lt;b&gt;", "**bold**",
                      "~~struck~~", "`code`", "<https://example.org>", "<!-- hidden -->"):  # fmt: skip
            assert typed in text, (typed, text)
        assert "\x00" not in page.text and "\x1b" not in page.text


@pytest.mark.parametrize("escape", [md_inline, md_quote], ids=["inline", "quote"])
def test_user_text_uses_only_the_entities_the_prefect_ui_decodes(escape) -> None:
    """The UI's renderer turns &lt; &gt; &amp; back into characters and shows any other entity as typed."""
    assert set(re.findall(r"&#?\w+;", escape(FORGED_QUESTION + " a=b ~x~ ==="))) <= {"&lt;", "&gt;", "&amp;"}


def test_inline_user_text_is_one_line_and_a_limit_cuts_before_escaping() -> None:
    assert "\n" not in md_inline(FORGED_QUESTION)
    cut = md_inline("<" * 50, limit=10)
    assert cut == "&lt;" * 9 + "…"  # never half an entity


def test_quoted_text_keeps_its_lines_inside_the_quote() -> None:
    quoted = md_quote("first line\n\n\nsecond line")
    assert all(line.startswith(">") for line in quoted.splitlines())
    for page in rendered(quoted):
        assert [e.tag for e in page.elements if e.tag != "br"] in (["blockquote", "p", "p"], ["blockquote", "p"])


def test_model_markdown_keeps_formatting_but_no_headings_html_images_or_other_links() -> None:
    safe = model_markdown(FORGED_FINDINGS)
    for page in rendered(safe):
        assert page.headings() == []
        assert_inert(page)
        assert page.hrefs() == ["https://cellxgene.example/atlas"]
        assert {"strong", "em", "table", "ul", "blockquote"} <= page.tags()
        text = " ".join(page.text.split())
        assert "# Model: TRAINED, results validated" in text  # shown as the words it is
        assert "<script>alert(1)</script>" in text
        assert "S100A8 & LYZ" in text


@pytest.mark.parametrize("escape", [md_inline, md_quote, model_markdown], ids=["inline", "quote", "model"])
def test_html_of_escaped_text_is_inert(escape) -> None:
    page = parse_html(safe_html(escape(FORGED_QUESTION + FORGED_FINDINGS)))
    assert_inert(page)


def test_the_sanitiser_alone_stops_raw_html() -> None:
    """The last line, for markdown our escaping would have missed."""
    page = parse_html(
        safe_html(
            '<script>alert(1)</script><img src=x onerror=alert(2)><a href="javascript:alert(3)">j</a>'
            '<a href="https://ok.example/" onclick="alert(4)">ok</a><iframe src="https://x.example"></iframe>'
            "<style>body{}</style><svg onload=alert(5)></svg><p style='x' class='y'>text</p>"
        )
    )
    assert_inert(page)
    assert page.hrefs() == ["https://ok.example/"]  # the javascript: link keeps its words, loses its target
    assert all(set(e.attrs) <= {"href", "title", "rel", "align"} for e in page.elements)


def test_links_and_images_only_to_http() -> None:
    assert md_link("report", "https://api.example/runs/1/files/report.html?exp=1&sig=ab") == (
        "[report](https://api.example/runs/1/files/report.html?exp=1&sig=ab)"
    )
    assert md_link("report", "javascript:alert(1)") == "report"
    assert md_link("report", None) == "report"
    assert md_image("plot", "file:///data/plot.png") == "plot"
    (page, _) = rendered(md_link("a", "https://x.example/a b)(c"))
    assert page.hrefs() == ["https://x.example/a%20b%29%28c"]
    assert md_link("predictions_vs_query.png", "https://x.example/p") == "[predictions_vs_query.png](https://x.example/p)"
    for page in rendered(md_link("<b>x</b>](javascript:alert(1)) [", "https://x.example/p")):
        assert_inert(page)
        assert page.hrefs() == ["https://x.example/p"] and page.text.strip() == "<b>x</b>](javascript:alert(1)) ["


def test_control_characters_and_lone_surrogates_are_dropped() -> None:
    assert plain("a\x00b\x01c\x1f\x7fd\te\r\nf\rg") == "abcd\te\nf\ng"
    assert plain("bad \ud800 surrogate").encode("utf-8") == "bad ? surrogate".encode()
    assert plain("ünïcödé ✓") == "ünïcödé ✓"


def test_md_unescape_gives_back_the_text_md_inline_escaped() -> None:
    from tasks.report_text import md_inline, md_unescape

    typed = "stop: (2 of 2) <b> & *x* #1 CD4+/CD25 T_Reg [link](x) `code` 1. item"
    assert md_unescape(md_inline(typed)) == typed
