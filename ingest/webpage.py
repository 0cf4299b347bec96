"""HTML to sections: the main text under its headings, without scripts, styles or navigation.

Uses the standard library's tolerant parser (it never raises on broken markup). Boilerplate is
recognised by element (nav, aside, script, ...), ARIA role, and class or id names that sites
use for menus, headers, footers and tables of contents. When the page marks its content with
<main> or <article>, only that is kept.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from rag.records import Section

# Elements whose content is never document text.
_DROP = frozenset({
    "script", "style", "noscript", "template", "svg", "math", "canvas", "iframe", "object",
    "embed", "head", "nav", "aside", "form", "button", "select", "option", "textarea",
    "dialog",
})  # fmt: skip
# Page chrome when outside the main content; an <article> may have its own header.
_CHROME = frozenset({"header", "footer"})
_DROP_ROLES = frozenset({"navigation", "banner", "contentinfo", "search", "menu", "menubar"})
_DROP_NAMES = re.compile(
    r"^(nav.*|menu|.*-menu|menubar|sidebar|breadcrumbs?|toc|site-(header|footer)|footer|"
    r"header|cookie.*|skip-?link|pagination|share|social)$"
)
_MAIN = frozenset({"main", "article"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset({
    "p", "div", "section", "li", "dt", "dd", "blockquote", "pre", "table", "tr", "ul", "ol",
    "dl", "figure", "figcaption", "address", "hr", "br", "h1", "h2", "h3", "h4", "h5", "h6",
    "main", "article", "header", "footer", "caption", "details", "summary",
})  # fmt: skip
_VOID = frozenset({
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
    "source", "track", "wbr",
})  # fmt: skip
_SPACES = re.compile(r"[ \t\r\n\f\v]+")


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, drops content, is main)
        self.dropping = 0
        self.main_depth = 0
        self.pre_depth = 0
        # Runs of text, each tagged with whether it lies inside <main>/<article>.
        self.parts: list[tuple[str, str | int, bool]] = []  # ("text"|"break"|"h<n>", value)
        self.heading: list[str] | None = None
        self.heading_level = 0
        self.title: list[str] = []
        self.in_title = False
        self.saw_main = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        if tag in _VOID:
            if tag in ("br", "hr") and not self.dropping:
                self._break()
            return
        attributes = dict(attrs)
        names = f"{attributes.get('class') or ''} {attributes.get('id') or ''}".lower().split()
        drops = (
            tag in _DROP
            or (tag in _CHROME and not self.main_depth)
            or (attributes.get("role") or "").lower() in _DROP_ROLES
            or any(_DROP_NAMES.match(name) for name in names)
            or "hidden" in attributes
        )
        is_main = tag in _MAIN or (attributes.get("role") or "").lower() == "main"
        self.stack.append((tag, drops, is_main))
        self.dropping += drops
        self.main_depth += is_main
        self.saw_main |= is_main and not self.dropping
        self.pre_depth += tag == "pre"
        if self.dropping:
            return
        if tag in _HEADINGS:
            self.heading, self.heading_level = [], _HEADINGS[tag]
        if tag in _BLOCKS:
            self._break()
        if tag == "li":
            self._text("- ")
        elif tag in ("td", "th") and self.parts and self.parts[-1][0] == "text":
            self._text(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        if tag in _VOID or not any(t == tag for t, _, _ in self.stack):
            return  # a stray end tag; closing the wrong element would drop real text
        while self.stack:
            open_tag, drops, is_main = self.stack.pop()
            was_dropping = self.dropping
            self.dropping -= drops
            self.main_depth -= is_main
            self.pre_depth -= open_tag == "pre"
            if not was_dropping and open_tag in _HEADINGS and self.heading is not None:
                title = " ".join("".join(self.heading).split())
                if title:
                    self.parts.append(("h", self.heading_level, self.main_depth > 0))
                    self.parts.append(("title", title, self.main_depth > 0))
                self.heading = None
            if not self.dropping and open_tag in _BLOCKS:
                self._break()
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        if self.dropping or self.in_title:
            return
        if self.heading is not None:
            self.heading.append(data)  # emitted whole when the heading closes
            return
        self._text(data if self.pre_depth else _SPACES.sub(" ", data))

    def _text(self, text: str) -> None:
        if text:
            self.parts.append(("text", text, self.main_depth > 0))

    def _break(self) -> None:
        # A block right inside a list item continues the item's "- " line.
        if self.parts and self.parts[-1][:2] != ("text", "- "):
            self.parts.append(("break", 0, self.main_depth > 0))


def parse_html(text: str) -> list[Section]:
    """Sections of the page's main text, split at h1-h6 with their heading paths."""
    extractor = _Extractor()
    extractor.feed(text)
    extractor.close()
    parts = [p for p in extractor.parts if p[2]] if extractor.saw_main else extractor.parts
    return _sections(parts, " ".join("".join(extractor.title).split()))


def _sections(parts: list[tuple[str, str | int, bool]], title: str) -> list[Section]:
    """Join text runs into paragraphs; a heading starts a new section that begins with it."""
    sections: list[Section] = []
    # The page title names only the text before the first heading (level 0 is dropped below).
    path: list[tuple[int, str]] = [(0, title)] if title else []
    body: list[str] = []
    offset = 0
    level = 0

    def close() -> None:
        nonlocal offset, body
        text = _paragraphs("".join(body))
        if text:
            heading = " > ".join(t for _, t in path)
            sections.append(Section(text=text, heading=heading, char_start=offset))
            offset += len(text) + 2  # sections are joined by a blank line in the page's text
        body = []

    for kind, value, _ in parts:
        if kind == "text":
            body.append(str(value))
        elif kind == "break":
            body.append("\n")
        elif kind == "h":
            close()
            level = int(value)
        elif kind == "title":
            path = [(lvl, t) for lvl, t in path if 0 < lvl < level] + [(level, str(value))]
            body.append(f"{value}\n")
    close()
    return sections


def _paragraphs(text: str) -> str:
    """Trim each line and keep at most one blank line between blocks."""
    lines = [line.strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip()
