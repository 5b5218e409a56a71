"""universality_lib.results: record / load round trip, updates, atomic writes, validation."""
from __future__ import annotations

import json
import math
import os

import pytest

from universality_lib import results
from universality_lib.errors import UniversalityError
from universality_lib.results import fmt, load_results, record, value


def test_roundtrip(results_env, monkeypatch):
    monkeypatch.setenv("UNIVERSALITY_PRESET", "smoke")
    record("corr", 0.8123, claim="features match", criterion="corr > 0.5", passed=True, chapter="ch1", unit="")
    record("n_feats", 512, chapter="ch1")
    record("label", "induction", chapter="ch2", note="a string")
    record("curve", [1, 2.5, 3], chapter="ch2")
    record("flag", False, chapter="ch2")

    assert (results_env / "ch1.json").exists()
    loaded = load_results(results_env)
    assert list(loaded) == ["ch1", "ch2"]
    ch1 = {r["name"]: r for r in loaded["ch1"]}
    assert ch1["corr"]["value"] == pytest.approx(0.8123)
    assert ch1["corr"]["claim"] == "features match"
    assert ch1["corr"]["criterion"] == "corr > 0.5"
    assert ch1["corr"]["passed"] is True
    assert ch1["n_feats"]["passed"] is None
    assert ch1["corr"]["preset"] == "smoke"
    assert ch1["corr"]["timestamp"].endswith("Z")
    assert "version" in ch1["corr"]
    ch2 = {r["name"]: r for r in loaded["ch2"]}
    assert ch2["label"]["value"] == "induction"
    assert ch2["curve"]["value"] == [1, 2.5, 3]
    assert ch2["flag"]["value"] is False

    # the default results dir is the env var; load_results(None) reads it too
    assert load_results() == loaded
    # prose helpers
    assert value("corr", chapter="ch1") == pytest.approx(0.8123)
    assert fmt("corr", ".2f", chapter="ch1") == "0.81"
    assert value("label") == "induction"  # unique across chapters -> found without chapter=


def test_chapter_from_env_and_default(results_env, monkeypatch):
    record("x", 1)
    assert (results_env / "misc.json").exists()
    monkeypatch.setenv("UNIVERSALITY_CHAPTER", "03_features")
    record("y", 2)
    assert value("y") == 2
    assert [r["name"] for r in load_results(results_env)["03_features"]] == ["y"]


def test_default_dir_is_cwd_results(tmp_path, monkeypatch):
    monkeypatch.delenv("UNIVERSALITY_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    record("z", 3.0, chapter="c")
    assert (tmp_path / "results" / "c.json").exists()


def test_update_existing_name(results_env):
    record("a", 1, chapter="c")
    record("b", 2, chapter="c")
    record("a", 10, claim="new claim", chapter="c", passed=False)
    recs = load_results(results_env)["c"]
    assert [r["name"] for r in recs] == ["a", "b"]  # updated in place, not appended
    assert recs[0]["value"] == 10
    assert recs[0]["claim"] == "new claim"
    assert recs[0]["passed"] is False


def test_nan_and_inf(results_env):
    record("nan", float("nan"), chapter="c")
    record("vec", [1.0, float("inf"), float("nan")], chapter="c")
    raw = json.loads((results_env / "c.json").read_text())  # strict JSON: no NaN literals
    by = {r["name"]: r for r in raw["records"]}
    assert by["nan"]["value"] is None and by["nan"]["nonfinite"] == "nan"
    assert by["vec"]["value"] == [1.0, None, None]
    assert math.isnan(value("nan"))
    v = value("vec")
    assert v[0] == 1.0 and v[1] == math.inf and math.isnan(v[2])
    loaded = {r["name"]: r for r in load_results(results_env)["c"]}
    assert math.isnan(loaded["nan"]["value"])


def test_numpy_values(results_env):
    np = pytest.importorskip("numpy")
    record("f32", np.float32(0.5), chapter="c", passed=np.bool_(True))
    record("i64", np.int64(7), chapter="c")
    record("arr", np.arange(3), chapter="c")
    assert value("f32") == 0.5
    assert value("i64") == 7
    assert value("arr") == [0, 1, 2]


def test_atomic_no_temp_files_left(results_env):
    for i in range(20):
        record(f"r{i}", i, chapter="c")
    names = sorted(os.listdir(results_env))
    assert names == ["c.json"]
    assert len(load_results(results_env)["c"]) == 20


def test_failed_write_keeps_old_file(results_env, monkeypatch):
    record("keep", 1, chapter="c")
    before = (results_env / "c.json").read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError):
        record("new", 2, chapter="c")
    monkeypatch.undo()
    assert (results_env / "c.json").read_text() == before
    assert sorted(os.listdir(results_env)) == ["c.json"]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(name="", value=1),
        dict(name="   ", value=1),
        dict(name=None, value=1),
        dict(name=3, value=1),
        dict(name="x", value=None),
        dict(name="x", value={"a": 1}),
        dict(name="x", value=object()),
        dict(name="x", value=[1, "two"]),
        dict(name="x", value=1, passed="yes"),
        dict(name="x", value=1, passed=1),
        dict(name="x", value=1, claim=3),
        dict(name="x", value=1, chapter="../evil"),
        dict(name="x", value=1, chapter=""),
    ],
)
def test_bad_inputs_raise(results_env, kwargs):
    name = kwargs.pop("name")
    val = kwargs.pop("value")
    with pytest.raises(UniversalityError):
        record(name, val, **kwargs)
    assert not results_env.exists() or not any(results_env.iterdir())


def test_missing_value_raises(results_env):
    with pytest.raises(UniversalityError, match="no result named"):
        value("nope")


def test_corrupt_file_raises(results_env):
    results_env.mkdir(parents=True)
    (results_env / "c.json").write_text("{not json")
    with pytest.raises(UniversalityError, match="not valid JSON"):
        record("a", 1, chapter="c")
