"""Every relative link and image in README.md and docs/*.md points at a file that exists, and every
#anchor at a heading of that file, so moving a page or renaming a heading cannot leave a dead link.

Links are read with markdown-it-py (the CommonMark parser rich already depends on), so link-like text
inside code spans and code blocks is not taken for a link. Anchors follow GitHub's heading slugs.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

from vqnet.report import render

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_MD = MarkdownIt("commonmark").enable("table")


def _tokens(path: Path):
    for token in _MD.parse(path.read_text(encoding="utf-8")):
        yield token
        yield from token.children or ()


def _slug(text: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@cache
def _anchors(path: Path) -> frozenset[str]:
    tokens = list(_MD.parse(path.read_text(encoding="utf-8")))
    seen: dict[str, int] = {}
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type == "heading_open":
            slug = _slug("".join(c.content for c in inline.children or ()))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            if n:
                seen[f"{slug}-{n}"] = 1
    return frozenset(seen)


def _targets(path: Path) -> list[str]:
    out = []
    for token in _tokens(path):
        if token.type == "link_open":
            out.append(str(token.attrs["href"]))
        elif token.type == "image":
            out.append(str(token.attrs["src"]))
    return out


def _broken(page: Path, target: str) -> str | None:
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:  # http(s), mailto: not ours to check
        return None
    file = (page.parent / unquote(parts.path)).resolve() if parts.path else page
    if not file.is_file():
        return f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}"
    if parts.fragment and file.suffix == ".md" and unquote(parts.fragment) not in _anchors(file):
        return f"{target}: {file.name} has no heading #{parts.fragment}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = [b for t in _targets(page) if (b := _broken(page, t))]
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_pages_link_something() -> None:
    # The check above is only as good as its link extraction: the README links into docs/.
    assert any(t.startswith("docs/") for t in _targets(ROOT / "README.md"))
    assert _slug("The `.vqn` file") == "the-vqn-file"
    assert _slug("What limits quality at 0.03 bpp") == "what-limits-quality-at-003-bpp"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_tables_match_the_committed_results(page: Path) -> None:
    # The tables between `<!-- table: ... -->` markers are `vqnet report`'s output from results/;
    # a page edited by hand, or results re-run without `vqnet report`, fails here.
    text = page.read_text()
    assert render(text, ROOT) == text, f"{page.name}: tables out of date; run `vqnet report`"
