"""Shared by the hostile-input tests: one server with a token, and a tally of inputs tried."""

from __future__ import annotations

from collections import Counter

TOKEN = "reliability-token-4b1d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Inputs tried per class, printed at the end of the session for docs/reliability.md.
TRIED: Counter[str] = Counter()
