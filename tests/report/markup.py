"""What a browser would build from the report's markdown or HTML: the tags, attributes and text.

Markdown is rendered by two engines with raw HTML *enabled*: python-markdown as report.html uses it
(before nh3) and markdown-it (CommonMark with GFM tables, like the marked parser of the Prefect UI),
so a test proves the escaping itself, not a sanitiser behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

from markdown_it import MarkdownIt

from tasks.report_text import markdown_html

_COMMONMARK = MarkdownIt("commonmark").enable(["table", "strikethrough"])


@dataclass
class Element:
    tag: str
    attrs: dict[str, str | None]
    text: str = ""


class Page(HTMLParser):
    """Every element of an HTML fragment, in document order, with the text inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self.text = ""
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.elements.append(element)
        if tag not in ("img", "br", "hr", "meta"):
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index].tag == tag:
                del self._open[index:]
                break

    def handle_data(self, data: str) -> None:
        self.text += data
        for element in self._open:
            element.text += data

    def tags(self) -> set[str]:
        return {e.tag for e in self.elements}

    def headings(self) -> list[str]:
        return [" ".join(e.text.split()) for e in self.elements if e.tag in ("h1", "h2", "h3", "h4", "h5", "h6")]

    def hrefs(self) -> list[str]:
        return [e.attrs["href"] or "" for e in self.elements if "href" in e.attrs]

    def event_handlers(self) -> list[str]:
        return [name for e in self.elements for name in e.attrs if name.lower().startswith("on")]


def parse_html(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def rendered(markdown_text: str) -> list[Page]:
    """The markdown as python-markdown and as a CommonMark engine render it (raw HTML allowed)."""
    return [
        parse_html(markdown_html(markdown_text)),
        parse_html(_COMMONMARK.render(markdown_text)),
    ]


def assert_inert(page: Page) -> None:
    """Nothing on the page runs, loads or links anywhere but http(s)."""
    assert not page.tags() & {"script", "img", "iframe", "object", "embed", "svg", "style", "form", "input"}, page.tags()
    assert page.event_handlers() == []
    assert all(href.lower().startswith(("http://", "https://")) for href in page.hrefs()), page.hrefs()
