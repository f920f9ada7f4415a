"""The documentation holds together: every relative link and anchor resolves, and every
`make` target it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "models").glob("*/README.md")]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# `make X` in prose, and command lines that start with make in code blocks.
MAKE = re.compile(r"(?:`|^(?:[A-Z_]+=\S+ )*)make ([a-z][a-z0-9-]+)", re.M)


def prose(page: Path) -> str:
    """The page without its fenced code blocks (links there are examples, not links)."""
    return re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose(page), flags=re.M)}


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, flags=re.M))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z]+:", target):
            continue  # an absolute URL: not ours to check offline
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_make_target_named_exists(page):
    missing = sorted(set(MAKE.findall(page.read_text())) - make_targets())
    assert not missing, missing


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 300
