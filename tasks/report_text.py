"""Text a user, the data or a model wrote, made safe for the report's markdown and HTML.

A report mixes three kinds of text, and only the first may shape the page:

- our own markdown (headings, lists, the untrained-model warning);
- text a user or the data supplied (the question, obs values, gene names, document names): escaped
  so that it reads as typed and never becomes a heading, list, link, table or HTML (``md_inline``,
  ``md_quote``);
- markdown a model wrote (the findings): keeps emphasis, lists, tables, code and http(s) links, but
  its headings, raw HTML, images and other link schemes are neutralised (``model_markdown``), so
  nothing it says can look like the report's own structure or run in a browser.

The HTML page is then sanitised by nh3 (``safe_html``) as a last line: a miss in the markdown rules
still runs no script. Control characters (NUL and the rest of C0 but newline and tab) and lone
surrogates are dropped before any of this (``plain``): they never reach a file or an artifact.
"""

from __future__ import annotations

import re
from typing import Any

import markdown as md
import nh3

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Characters that mean something to CommonMark/GFM wherever they stand; `&`, `<`, `>` become the
# entities the Prefect UI's renderer decodes (it shows any other entity as typed).
_INLINE_SPECIAL = re.compile(r"[\\`*_{}\[\]()#|!~]")
# Characters that mean something only at the start of a line: list markers, setext underlines.
_LINE_START = re.compile(r"^([-+=]|\d+(?=[.)]))")
# Backslash escapes python-markdown does not know by itself (CommonMark allows any punctuation).
_MORE_ESCAPES = ("~", "=", "|")
# Container markers (blockquote, list item) that may stand before a heading or an underline.
_CONTAINERS = r"(?:[ \t]*+(?:>|[-+*](?=[ \t])|\d{1,9}[.)](?=[ \t])))*+[ \t]*+"
_HEADING = re.compile(rf"^({_CONTAINERS})(#)", re.MULTILINE)
_UNDERLINE = re.compile(rf"^({_CONTAINERS})([=-])(?=[=-]*[ \t]*$)", re.MULTILINE)
_REFERENCE_DEFINITION = re.compile(rf"^({_CONTAINERS})\[(?=[^\]]*\]:)", re.MULTILINE)
_IMAGE = re.compile(r"!\[")
_NON_WEB_LINK = re.compile(r"\]\((?!\s*https?://)", re.IGNORECASE)

ALLOWED_TAGS = {
    "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "hr", "i", "li", "ol", "p",
    "pre", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "td": {"align"}, "th": {"align"}}


def plain(text: str) -> str:
    """``text`` without control characters (newline and tab kept; CR/CRLF become newlines) or lone surrogates."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    return _CONTROL.sub("", text)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def plain_data(value: Any) -> Any:
    """``plain`` applied to every string (keys too) of JSON-like data: what a report model is made of."""
    if isinstance(value, str):
        return plain(value)
    if isinstance(value, dict):
        return {plain_data(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_data(v) for v in value)
    return value


def _escape_chars(line: str) -> str:
    line = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    line = _INLINE_SPECIAL.sub(lambda m: "\\" + m.group(0), line)
    return _LINE_START.sub(r"\1\\", line) if line[:1].isdigit() else _LINE_START.sub(r"\\\1", line)


def md_inline(text: str, limit: int | None = None) -> str:
    """User text as one line of markdown that reads exactly as typed: whitespace runs (newlines too)
    become one space, so it can start no heading or list; ``limit`` cuts the text before escaping."""
    text = " ".join(plain(text).split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return _escape_chars(text)


def md_unescape(markdown: str) -> str:
    """What :func:`md_inline` escaped, as typed again: for showing our own markdown as plain text
    (a terminal, a JSON field)."""
    import html

    return html.unescape(re.sub(r"\\([\\`*_{}\[\]()#+\-.!|<>~])", r"\1", markdown))


def md_quote(text: str) -> str:
    """User text as a markdown blockquote, line for line, every line escaped (a quoted question)."""
    lines = [_escape_chars(line.strip()) for line in plain(text).strip().split("\n")]
    return "\n".join(f"> {line}  " if line else ">" for line in lines)


def _web_url(url: str | None) -> str | None:
    """An http(s) URL made safe as a markdown link destination; None for anything else."""
    if not url or not re.match(r"https?://", url, re.IGNORECASE):
        return None
    for char, code in (("\\", "%5C"), (" ", "%20"), ("(", "%28"), (")", "%29"), ("<", "%3C"), (">", "%3E")):
        url = url.replace(char, code)
    return plain(url)


def _link_text(text: str) -> str:
    """Text between ``[`` and ``]``: only what could end the link, open a code span or be HTML is
    escaped, since the Prefect UI shows a link's text as written (``predictions_vs_query.png``)."""
    text = " ".join(plain(text).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"[\\`\[\]]", lambda m: "\\" + m.group(0), text)


def md_link(text: str, url: str | None) -> str:
    """``[text](url)`` for an http(s) URL; the text alone (escaped) for anything else."""
    target = _web_url(url)
    return f"[{_link_text(text)}]({target})" if target else md_inline(text)


def md_image(alt: str, url: str | None) -> str:
    """``![alt](url)`` for an http(s) URL; the alt text alone (escaped) for anything else."""
    target = _web_url(url)
    return f"![{_link_text(alt)}]({target})" if target else md_inline(alt)


def md_output(uri: str, url: str | None) -> str:
    """A stored file for a run page: its name linked to ``url`` (one a browser opens), else its URI as text."""
    return md_link(uri.rstrip("/").rsplit("/", 1)[-1], url) if url else md_inline(uri)


def model_markdown(text: str) -> str:
    """Markdown a model wrote, kept as formatting but never as structure or markup.

    Headings and setext underlines are escaped (the model cannot add a heading such as "Model:
    TRAINED" to the report), ``<`` is escaped (no raw HTML, no ``<autolinks>``), images are not
    loaded, links are kept only to http(s), and reference definitions are shown as text.
    """
    text = plain(text).replace("<", "&lt;")
    text = _HEADING.sub(r"\1\\\2", text)
    text = _UNDERLINE.sub(r"\1\\\2", text)
    text = _REFERENCE_DEFINITION.sub(r"\1\\[", text)
    text = _IMAGE.sub(r"!\\[", text)
    return _NON_WEB_LINK.sub(r"]\\(", text)


def markdown_html(markdown_text: str) -> str:
    """Markdown as python-markdown renders it (raw HTML kept: ``safe_html`` is the one to publish),
    knowing every backslash escape the escaping here writes."""
    tables = {"tables": {"use_align_attribute": True}}  # align="right", not a style attribute
    renderer = md.Markdown(extensions=["tables"], extension_configs=tables)
    renderer.ESCAPED_CHARS.extend(c for c in _MORE_ESCAPES if c not in renderer.ESCAPED_CHARS)
    return renderer.convert(markdown_text)


def safe_html(markdown_text: str) -> str:
    """Markdown rendered to HTML and sanitised: plain formatting tags and http(s) links only."""
    return nh3.clean(
        markdown_html(markdown_text),
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https"},
        link_rel="noopener noreferrer nofollow",
        strip_comments=True,
    )


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A GFM table of text cells, each escaped with ``md_inline`` (a ``|`` in a cell stays in the cell)."""
    lines = [
        "| " + " | ".join(md_inline(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines.extend("| " + " | ".join(md_inline(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)
