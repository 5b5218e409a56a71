import json

import pytest

from universality_lib import cache
from universality_lib.errors import IntegrityError


def test_building_is_atomic_and_verified(tmp_path):
    dest = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with cache.building(dest) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash mid-way")
    # nothing half-written is left (only the empty lock file of the entry)
    assert not dest.exists() and [p.name for p in tmp_path.iterdir()] == [".art.lock"]
    with cache.building(dest) as tmp:
        (tmp / "a.txt").write_text("hello")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.bin").write_bytes(b"\x00\x01")
    assert set(cache.read_manifest(dest)) == {"a.txt", "sub/b.bin"}
    digest = cache.verify_manifest(dest)
    assert len(digest) == 64
    (dest / "a.txt").write_text("hellO")
    with pytest.raises(IntegrityError, match="does not match its recorded sha256"):
        cache.verify_manifest(dest)
    (dest / "a.txt").unlink()
    with pytest.raises(IntegrityError, match="missing"):
        cache.verify_manifest(dest)


def test_no_manifest_is_refused(tmp_path):
    with pytest.raises(IntegrityError, match="no MANIFEST"):
        cache.verify_manifest(tmp_path)


def test_cached_folder_builds_once_and_rebuilds_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path))
    calls = []

    def build(tmp):
        calls.append(1)
        cache.atomic_write_json(tmp / "x.json", {"v": len(calls)})

    f = cache.cached_folder("kind", "key", build)
    assert cache.cached_folder("kind", "key", build) == f and len(calls) == 1
    (f / "x.json").write_text("{}")  # corrupt it
    f = cache.cached_folder("kind", "key", build, verbose=False)
    assert len(calls) == 2 and json.loads((f / "x.json").read_text()) == {"v": 2}


def test_stable_hash_is_order_free():
    assert cache.stable_hash({"a": 1, "b": [1, 2]}) == cache.stable_hash({"b": [1, 2], "a": 1})
    assert cache.stable_hash({"a": 1}) != cache.stable_hash({"a": 2})
