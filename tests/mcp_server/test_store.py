"""Image ids: only ids the store could have issued reach the disk, so no path escapes it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_server.store import ID_PATTERN, InvalidIdError, LocalStore, check_id, new_id


@given(st.text(max_size=80))
@settings(max_examples=300, deadline=None)
def test_check_id_accepts_only_issued_shapes(candidate: str) -> None:
    try:
        checked = check_id(candidate, "image_id")
    except InvalidIdError:
        return
    assert ID_PATTERN.match(checked)
    assert "/" not in checked and "." not in checked and "\x00" not in checked


@pytest.mark.parametrize(
    "attack", ["../" * 8 + "etc/passwd", "/etc/passwd", "..", "a" * 31 + "/", "%2e%2e%2f" * 4, ""]
)
def test_traversal_attempts_never_touch_the_disk(tmp_path: Path, attack: str) -> None:
    store = LocalStore(tmp_path / "store", ttl_seconds=60)
    with pytest.raises(InvalidIdError):
        asyncio.run(store.get_image(attack))


def test_ids_are_unguessable_and_images_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", ttl_seconds=60)
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(ID_PATTERN.match(i) for i in ids)
    image_id = asyncio.run(store.put_image(b"\x89PNG fake", "image/png"))
    stored = asyncio.run(store.get_image(image_id))
    assert stored is not None and stored.data == b"\x89PNG fake"
    assert stored.mime_type == "image/png"


def test_expired_images_are_gone(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store", ttl_seconds=-1)
    image_id = asyncio.run(store.put_image(b"old", "image/png"))
    assert asyncio.run(store.get_image(image_id)) is None
    assert not list((tmp_path / "store" / "images").iterdir())
