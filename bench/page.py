"""docs/performance.md holds one block per benchmark, between `<!-- NAME:start -->` and
`<!-- NAME:end -->`; each benchmark rewrites its own block and leaves the prose around it."""

from __future__ import annotations

from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "performance.md"


def write_block(name: str, markdown: str) -> None:
    text = PAGE.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"{PAGE}: no {start} ... {end} block to write the results into")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    PAGE.write_text(f"{before}{start}\n{markdown}{end}{after}")
