"""cache: a manifest must cover its whole folder, a malformed one is a failed verification, folders are swapped
in by renames (a kill leaves the old or the new one), one writer per entry, stale temporary folders go, and
files are created with the usual permissions."""
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from universality_lib import cache, zoo
from universality_lib.errors import IntegrityError, UniversalityError

WEIGHTS = b"\x00\x01\x02\x03" * 64


def _entry(folder: Path) -> Path:
    with cache.building(folder) as tmp:
        (tmp / "config.json").write_text('{"d_model": 32}\n')
        (tmp / "model.safetensors").write_bytes(WEIGHTS)
    return folder


def _flip_weights(folder: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))


def _one_line(text: str) -> str:
    return text.splitlines()[0] + "\n"


DAMAGED = {  # manifest text -> the bytes of a damaged manifest
    "emptied": lambda text: b"",
    "one line": lambda text: _one_line(text).encode(),
    "garbage": lambda text: b"this is not a manifest\n",
    "non-UTF-8": lambda text: b"\xff\xfe" + text.encode("utf-16-le"),
    "short digest": lambda text: text.replace(text[:64], text[:12], 1).encode(),
    "outside the folder": lambda text: (text + "0" * 64 + "  ../escape\n").encode(),
    "listed twice": lambda text: (text + text.splitlines()[-1] + "\n").encode(),
}


@pytest.mark.parametrize("how", list(DAMAGED))
def test_a_damaged_manifest_never_lets_a_corrupt_folder_pass(tmp_path, how):
    folder = _entry(tmp_path / "T")
    manifest = folder / cache.MANIFEST
    text = manifest.read_text()
    manifest.write_bytes(DAMAGED[how](text))
    _flip_weights(folder)
    with pytest.raises(IntegrityError, match="damaged|does not list|not match"):
        cache.verify_manifest(folder)


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path):
    folder = _entry(tmp_path / "T")
    (folder / "extra.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match="does not list extra.bin"):
        cache.verify_manifest(folder)


def test_required_files_must_be_listed(tmp_path):
    folder = tmp_path / "T"
    with cache.building(folder) as tmp:
        (tmp / "config.json").write_text("{}")
    with pytest.raises(IntegrityError, match="does not list model.safetensors"):
        cache.verify_manifest(folder, required=("config.json", "model.safetensors"))


@pytest.mark.parametrize("how", ["garbage", "non-UTF-8", "emptied"])
def test_a_malformed_manifest_in_the_cache_is_rebuilt(tmp_path, monkeypatch, capsys, how):
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path))
    calls = []

    def build(tmp):
        calls.append(1)
        (tmp / "model.safetensors").write_bytes(WEIGHTS)

    folder = cache.cached_folder("kind", "key", build)
    manifest = folder / cache.MANIFEST
    manifest.write_bytes(DAMAGED[how](manifest.read_text()))
    again = cache.cached_folder("kind", "key", build)
    assert again == folder and len(calls) == 2
    cache.verify_manifest(again)
    out = capsys.readouterr().out
    assert "failed verification" in out and "git checkout" not in out


def test_the_fix_depends_on_where_the_folder_lives(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path / "cache"))
    shipped = zoo.shipped_dir("tiny") / "T"
    assert "git checkout" in cache.fix_for(shipped)
    entry = tmp_path / "cache" / "saes" / "key"
    assert "rebuilt" in cache.fix_for(entry) and "git checkout" not in cache.fix_for(entry)
    folder = _entry(tmp_path / "cache" / "kind" / "key")
    (folder / cache.MANIFEST).write_text("")
    with pytest.raises(IntegrityError) as e:
        cache.verify_manifest(folder)
    assert "git checkout" not in str(e.value) and "rebuilt" in str(e.value)


def test_the_shipped_checkpoints_pass_the_full_check():
    for name in ("T", "T2", "M", "tokenizer"):
        cache.verify_manifest(zoo.shipped_dir("tiny") / name)


def test_the_shipped_zoo_was_trained_by_its_preset():
    from universality_lib import corpus, presets

    p = presets.get("tiny")
    tok = corpus.load_tokenizer(p)
    for name in ("T", "T2", "M"):
        meta = zoo.train_meta(p, name)
        recipe, trained = json.loads(json.dumps(p.to_dict()["train"])), meta["train"]
        assert all(trained[k] == recipe[k] for k in trained) and set(trained) <= set(recipe)
        # a model shipped before a curriculum field existed lacks it: it trained with the field's default, which
        # leaves the batches as they were (tests/test_train.py), so its family's config must be the recipe's
        family = "mamba" if name == "M" else "transformer"
        filled = {**presets.TrainConfig().__dict__, **trained, "betas": tuple(trained["betas"])}
        assert presets.TrainConfig(**filled).for_family(family) == p.train.for_family(family)
        assert meta["steps"] == p.train.for_family(family).steps  # a Mamba's own token budget, when it has one
        assert meta["tokenizer_sha"] == corpus.tokenizer_hash(tok)
        m = zoo.load(p, name)
        assert m.cfg.n_layers == (p.mamba.n_layers if name == "M" else p.transformer.n_layers)
        assert m.cfg.d_model == 96 and all(t.dtype == torch.float32 for t in m.parameters())


# ----------------------------------------------------------------------------- a kill while swapping
KILL_WHILE_SWAPPING = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from universality_lib import cache

    dest = Path(sys.argv[1]).absolute()
    real = os.replace

    def replace(src, dst):  # kill -9 just before the new folder goes in
        if Path(dst).absolute() == dest and Path(src).name.startswith("." + dest.name + "."):
            os._exit(9)
        real(src, dst)

    os.replace = replace
    with cache.building(dest) as tmp:
        (tmp / "v.txt").write_text("new")
""")


def test_a_kill_while_swapping_keeps_the_old_folder(tmp_path):
    dest = tmp_path / "ckpt"
    with cache.building(dest) as tmp:
        (tmp / "v.txt").write_text("old")
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_SWAPPING, str(dest)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    cache.recover(dest)  # what every later read or write does first
    assert (dest / "v.txt").read_text() == "old"
    cache.verify_manifest(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckpt.lock", "ckpt"]  # nothing orphaned


def test_stale_temporary_folders_are_cleaned(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(tmp_path))
    kind = tmp_path / "kind"
    for stale in (".key.abcd1234.tmp", ".key.tmp-0123456789ab"):  # an earlier version's and this one's
        (kind / stale).mkdir(parents=True)
        (kind / stale / "half.bin").write_bytes(b"half")
    (kind / ".key2.tmp-0123456789ab").mkdir()  # another entry's: not ours to touch
    cache.cached_folder("kind", "key", lambda tmp: (tmp / "a.txt").write_text("a"))
    assert sorted(p.name for p in kind.iterdir()) == [".key.lock", ".key2.tmp-0123456789ab", "key"]


# ----------------------------------------------------------------------------- two writers at once
TWO_WRITERS = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from universality_lib import cache

    count = Path(sys.argv[1])

    def build(tmp):
        with open(count, "a") as f:
            f.write("built\\n")
        time.sleep(1.5)
        (tmp / "a.txt").write_text("a")

    print(cache.cached_folder("kind", "key", build))
""")


def test_two_writers_build_an_entry_once(tmp_path):
    env = {**os.environ, "UNIVERSALITY_CACHE": str(tmp_path / "cache")}
    count = tmp_path / "count.txt"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_WRITERS, str(count)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1] for o in outs]
    assert count.read_text() == "built\n"  # the second one waited and used the first one's result
    folders = {o[0].strip().splitlines()[-1] for o in outs}
    assert folders == {str(tmp_path / "cache" / "kind" / "key")}
    assert "waiting for it" in "".join(o[0] for o in outs)


# ----------------------------------------------------------------------------- permissions, unwritable places
def test_files_and_folders_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        cache.atomic_write_bytes(tmp_path / "f.bin", b"x")
        with cache.building(tmp_path / "entry") as tmp:
            cache.atomic_write_json(tmp / "a.json", {"a": 1})
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "f.bin") == 0o644
    assert mode(tmp_path / "entry") == 0o755
    assert mode(tmp_path / "entry" / "a.json") == 0o644 and mode(tmp_path / "entry" / cache.MANIFEST) == 0o644


def test_an_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("UNIVERSALITY_CACHE", str(blocker / "cache"))
    with pytest.raises(UniversalityError, match="cannot create the cache folder .*set UNIVERSALITY_CACHE"):
        cache.cached_folder("kind", "key", lambda tmp: None)
    with pytest.raises(UniversalityError, match="cannot write in"):
        with cache.building(blocker / "entry"):
            pass
    assert blocker.read_text() == "not a folder"
