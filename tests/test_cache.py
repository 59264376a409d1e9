"""The persistent compile cache: hits, misses, corrupt and stale entries, concurrency."""
import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import symgraph as sg
from symgraph.runtime import cache


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("SYMGRAPH_CACHE_DIR", str(path))
    monkeypatch.delenv("SYMGRAPH_CACHE", raising=False)
    return path


def build(scale=2.0, opt_level=2):
    x = sg.Variable("x", (8, 8), "float64")
    y = sg.tanh(x @ np.full((8, 8), scale)) + sg.exp(-x).sum(axis=0)
    return sg.compile(y, opt_level=opt_level)


def entries(path):
    return sorted(glob.glob(os.path.join(path, "*", "*.o")))


def delta(before):
    after = cache.stats()
    return {k: after[k] - before[k] for k in after}


XV = np.random.default_rng(0).random((8, 8))


def test_miss_then_hit_gives_identical_results(cache_dir):
    before = cache.stats()
    first = build()
    assert delta(before)["misses"] == 1 and delta(before)["writes"] == 1
    assert len(entries(cache_dir)) == 1
    before = cache.stats()
    second = build()
    assert delta(before) == {"hits": 1, "misses": 0, "corrupt": 0, "writes": 0}
    assert first(XV).tobytes() == second(XV).tobytes()
    np.testing.assert_allclose(second(XV), sg.evaluate(second.structure.exprs[0], x=XV))
    # a hit skips the passes, yet every stage is still there when asked for
    assert "define" in second.llvm_ir and second.asm
    assert second.as_text("final") == first.as_text("final")
    assert second.memory_plan == first.memory_plan
    assert [r.name for r in second.pass_log] == [r.name for r in first.pass_log]


def test_key_changes_with_constants_and_options_not_locations(cache_dir):
    build(2.0)
    build(3.0)
    build(2.0, opt_level=0)
    assert len(entries(cache_dir)) == 3
    before = cache.stats()
    build(2.0)  # same graph built at another call site: a hit
    assert delta(before)["hits"] == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage", "other_key"])
def test_corrupt_entries_are_rebuilt(cache_dir, damage):
    want = build()(XV)
    (entry,) = entries(cache_dir)
    data = bytearray(open(entry, "rb").read())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "empty":
        data = b""
    elif damage == "garbage":
        data = os.urandom(len(data))
    else:  # a valid entry filed under this key: a stale or misplaced file
        build(5.0)
        other = next(e for e in entries(cache_dir) if e != entry)
        data = open(other, "rb").read()
    with open(entry, "wb") as fh:
        fh.write(data)
    before = cache.stats()
    f = build()
    d = delta(before)
    assert d["hits"] == 0 and d["corrupt"] == 1 and d["writes"] == 1
    assert f(XV).tobytes() == want.tobytes()
    before = cache.stats()
    build()
    assert delta(before)["hits"] == 1  # rewritten entry is good again


def test_cache_can_be_turned_off(cache_dir, monkeypatch):
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")
    before = cache.stats()
    f = build()
    assert f(XV).shape == (8, 8)
    assert delta(before) == {"hits": 0, "misses": 0, "corrupt": 0, "writes": 0}
    assert not os.path.exists(cache_dir)


def test_default_directory_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("SYMGRAPH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == os.path.join(str(tmp_path), "symgraph")


def test_unwritable_directory_still_compiles(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SYMGRAPH_CACHE_DIR", str(blocker / "cache"))
    assert build()(XV).shape == (8, 8)


SCRIPT = textwrap.dedent("""
    import numpy as np, symgraph as sg
    from symgraph.runtime import cache
    x = sg.Variable("x", (16,), "float64")
    f = sg.compile(sg.sin(x) * 3 + x.sum())
    print(cache.stats()["hits"], repr(f(np.arange(16.0)).tobytes().hex()))
""")


def run_script(env):
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=120)


def test_fresh_process_hits_and_concurrent_writers(cache_dir):
    env = dict(os.environ, SYMGRAPH_CACHE_DIR=str(cache_dir))
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    results = {out.split()[1] for out, _ in outputs}
    assert len(results) == 1
    assert len(entries(cache_dir)) == 1
    assert not glob.glob(os.path.join(cache_dir, "*", ".tmp-*"))
    done = run_script(env)
    assert done.returncode == 0, done.stderr
    hits, result = done.stdout.split()
    assert hits == "1" and result in results


GENERIC_SCRIPT = textwrap.dedent("""
    import numpy as np, symgraph as sg
    x = sg.Variable("x", ("batch", 16), "float64")
    f = sg.compile(sg.tanh(x @ np.full((16, 4), 0.1)).sum(axis=1))
    outs = [f(np.ones((n, 16))).tobytes().hex() for n in (1, 7, 300)]
    info = f.cache_info()
    print(info.hits, info.misses, info.compilations, " ".join(outs))
""")


def test_shape_generic_code_is_cached_and_a_disk_load_is_a_hit(cache_dir):
    env = dict(os.environ, SYMGRAPH_CACHE_DIR=str(cache_dir))
    runs = [subprocess.run([sys.executable, "-c", GENERIC_SCRIPT], env=env, capture_output=True,
                           text=True, timeout=120) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    first, second = (r.stdout.split() for r in runs)
    assert first[:3] == ["3", "1", "1"]  # generated once, then three calls served
    assert second[:3] == ["4", "0", "0"]  # loaded from disk (a hit), no compilation
    assert first[3:] == second[3:]
    assert len(entries(cache_dir)) == 1
