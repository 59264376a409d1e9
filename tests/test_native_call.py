"""The native call entry (runtime/native_call.py): the calls it serves give the Python
dispatcher's results, and every call it cannot serve reaches the dispatcher unchanged."""
import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import symgraph as sg
from symgraph import Variable, compile, evaluate
from symgraph.runtime import native_call

pytestmark = pytest.mark.skipif(not native_call.ENABLED, reason="no native entry on this "
                                "interpreter (not 64-bit CPython, or layout probe failed)")


def _model():
    a = Variable("a", (3, 4), "float64")
    b = Variable("b", (4,), "float64")
    return (a * b + b) / 3.0  # correctly rounded ops: bit-exact vs the interpreter


def _inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 4)), rng.standard_normal(4)


def test_declared_shapes_get_a_native_entry_that_matches_the_interpreter():
    y = _model()
    f = compile(y)
    assert f._native is not None
    x1, x2 = _inputs()
    want = evaluate(y, a=x1, b=x2)
    before = f.cache_info().hits
    for got in (f(x1, x2), f(a=x1, b=x2), f(x1, b=x2), f(b=x2, a=x1)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(f._dispatch(x1, x2), want)
    assert f._native.hits == 4
    assert f.cache_info().hits == before + 5  # and one through the dispatcher


def test_names_built_at_run_time_are_matched_by_text():
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    names = "a b".split()  # noqa: SIM905 - not the interned strings
    got = f(**dict(zip(names, (x1, x2))))
    np.testing.assert_array_equal(got, evaluate(y, a=x1, b=x2))
    assert f._native.hits == 1
    with pytest.raises(sg.SymgraphError, match="c"):
        f(**dict(zip("a c".split(), (x1, x2))))  # noqa: SIM905


def test_outputs_are_fresh_arrays():
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    first, second = f(x1, x2), f(x1, x2)
    assert first is not second and not np.shares_memory(first, second)
    assert first.flags.owndata and first.flags.writeable


@pytest.mark.parametrize("call", [
    lambda f, x1, x2: f(x1[:, ::-1].copy()[:, ::-1], x2),          # negative strides
    lambda f, x1, x2: f(np.asfortranarray(x1), x2),                 # Fortran order
    lambda f, x1, x2: f(x1.tolist(), x2),                           # a list
    lambda f, x1, x2: f(x1.astype(">f8"), x2),                      # byte-swapped
    lambda f, x1, x2: f(x1.view(_Sub), x2),                         # an ndarray subclass
    lambda f, x1, x2: f(x1, x2, out=np.empty((4, 3)).T),            # out= not C order
    lambda f, x1, x2: f(_misaligned(x1), x2),                       # unaligned data
])
def test_unusual_valid_calls_take_the_dispatcher_and_match(call):
    """Each of these reaches the dispatcher (the entry serves none of them) and matches."""
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    np.testing.assert_array_equal(call(f, x1, x2), evaluate(y, a=x1, b=x2))
    assert f._native.hits == 0


class _Sub(np.ndarray):
    pass


def _misaligned(x):
    raw = np.empty(x.nbytes + 1, np.uint8)
    view = raw[1:].view(x.dtype).reshape(x.shape)
    view[...] = x
    assert not view.flags.aligned
    return view


@pytest.mark.parametrize("call, error", [
    (lambda f, x1, x2: f(x1), "b"),                                  # missing
    (lambda f, x1, x2: f(x1, x2, x2), "3"),                          # too many
    (lambda f, x1, x2: f(x1, b=x2, c=x2), "c"),                      # unknown name
    (lambda f, x1, x2: f(x1, a=x1, b=x2), "a"),                      # given twice
    (lambda f, x1, x2: f(x1[:2], x2), "a"),                          # wrong shape
    (lambda f, x1, x2: f(x1.astype(np.float32), x2), "a"),           # wrong dtype
    (lambda f, x1, x2: f("text", x2), "a"),                          # not an array
])
def test_bad_calls_still_raise_symgraph_errors(call, error):
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    with pytest.raises(sg.SymgraphError, match=error):
        call(f, x1, x2)


def test_a_failing_status_raises_the_dispatchers_error():
    n = Variable("n", (3,), "int64")
    f = compile(n ** n)
    assert f._native is not None
    np.testing.assert_array_equal(f(np.array([1, 2, 3])), [1, 4, 27])
    with pytest.raises(sg.SymgraphError, match="negative"):
        f(np.array([1, -2, 3]))


def test_reference_counts_do_not_move():
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    n = Variable("n", (3,), "int64")
    g = compile(n ** n)
    bad = np.array([1, -2, 3])
    watched = [x1, x2, x1.dtype, np.empty]
    f(x1, x2), f(x1.tolist(), x2)
    gc.collect()
    before = [sys.getrefcount(o) for o in watched]
    for _ in range(2000):
        f(x1, x2)
        f(a=x1, b=x2)
        f(x1.tolist(), x2)
    bad_before = sys.getrefcount(bad)
    for _ in range(200):
        with pytest.raises(sg.SymgraphError):
            g(bad)
    gc.collect()
    assert [sys.getrefcount(o) for o in watched] == before
    assert sys.getrefcount(bad) == bad_before


def test_the_entry_outlives_the_function_object():
    y = _model()
    x1, x2 = _inputs()
    f = compile(y)
    call = f.__call__
    want = f(x1, x2)
    del f
    gc.collect()
    np.testing.assert_array_equal(call(x1, x2), want)


def test_functions_of_no_inputs_and_0d_inputs():
    f = compile(sg.Constant(np.arange(4.0)) * 2)
    np.testing.assert_array_equal(f(), np.arange(4.0) * 2)
    s = Variable("s", (), "float32")
    g = compile(s + 1)
    assert g._native is not None
    assert g(np.float32(2.0).reshape(())) == np.float32(3.0)
    np.testing.assert_array_equal(g(np.array(2.0, np.float32)), np.array(3.0, np.float32))


def test_first_call_specializations_get_the_entry():
    x = Variable("x")
    f = compile(x * 2)
    assert f._native is None
    data = np.arange(5.0)
    np.testing.assert_array_equal(f(data), data * 2)
    assert f._native is not None
    np.testing.assert_array_equal(f(x=data), data * 2)
    # Another shape is served by the dispatcher, through the same entry.
    np.testing.assert_array_equal(f(np.arange(7.0)), np.arange(7.0) * 2)
    assert f.cache_info().misses == 2


def test_calls_from_many_threads_agree():
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    want = f(x1, x2)
    failures = []

    def work():
        for _ in range(500):
            if not np.array_equal(f(x1, x2), want):
                failures.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_the_disk_cache_keeps_the_entry(tmp_path):
    script = (
        "import numpy as np, symgraph as sg\n"
        "x = sg.Variable('x', (4,), 'float64')\n"
        "f = sg.compile(sg.exp(x) * 3)\n"
        "print(f._native is not None, f.cache_info().compilations, f(np.ones(4))[0])\n")
    env = dict(os.environ, SYMGRAPH_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs[0][:2] == ["True", "1"] and runs[1][:2] == ["True", "0"]
    assert runs[0][2] == runs[1][2]


def test_the_entry_can_be_switched_off():
    script = (
        "import numpy as np, symgraph as sg\n"
        "x = sg.Variable('x', (4,), 'float64')\n"
        "f = sg.compile(x + 1)\n"
        "print(f._native is None, f(np.ones(4)).tolist())\n")
    env = dict(os.environ, SYMGRAPH_NATIVE_CALL="0")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.split(None, 1) == ["True", "[2.0, 2.0, 2.0, 2.0]\n"]


def test_the_signature_names_the_inputs():
    import inspect

    f = compile(_model())
    assert str(inspect.signature(f)) == "(a, b, *, out=None)"


@pytest.mark.parametrize("structure", ["tuple", "list", "dict", "dict-int-keys", "repeated"])
def test_every_output_structure_is_served_natively(structure):
    x = Variable("x", (5,), "float64")
    n = Variable("n", (5,), "int32")
    outs = [x * 2.0, n + 1, (x * n).sum()]
    built = {"tuple": tuple(outs), "list": outs, "dict": dict(zip("abc", outs)),
             "dict-int-keys": dict(zip((7, 8, 9), outs)), "repeated": (outs[0], outs[0], x, outs[1])}
    f = compile(built[structure])
    assert f._native is not None
    data = {"x": np.arange(5.0), "n": np.arange(5, dtype=np.int32)}
    want = evaluate(built[structure], **data)
    gc.collect()
    before = [sys.getrefcount(v) for v in data.values()]
    for _ in range(300):
        got = f(**data)
    assert type(got) is type(want) and f._native.hits == 300
    pairs = zip(got.values(), want.values()) if isinstance(want, dict) else zip(got, want)
    if isinstance(want, dict):
        assert list(got) == list(want)
    for g, w in pairs:
        np.testing.assert_array_equal(g, w)
        assert g.dtype == w.dtype and g.flags.owndata
    if structure == "repeated":
        assert not np.shares_memory(got[0], got[1]) and not np.shares_memory(got[2], data["x"])
    gc.collect()
    assert [sys.getrefcount(v) for v in data.values()] == before


def test_the_same_graph_with_other_structures_gets_its_own_code(tmp_path, monkeypatch):
    """The entry packs outputs per structure, so the disk cache keeps them apart (a dict
    function once found a list function's cached entry and crashed)."""
    monkeypatch.setenv("SYMGRAPH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SYMGRAPH_CACHE", raising=False)
    x = Variable("x", (4,), "float64")
    outs = [x + 1.0, x * 2.0]
    data = np.arange(4.0)
    for built in (outs, tuple(outs), dict(zip("pq", outs)), list(outs)):
        got = compile(built)(x=data)
        assert type(got) is type(built)
        values = list(got.values()) if isinstance(got, dict) else list(got)
        np.testing.assert_array_equal(values[1], data * 2.0)


def test_out_is_filled_natively_and_returned():
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    want = evaluate(y, a=x1, b=x2)
    out = np.full((3, 4), np.nan)
    gc.collect()
    before = sys.getrefcount(out)
    for call in (lambda: f(x1, x2, out=out), lambda: f(b=x2, out=out, a=x1),
                 lambda: f(**{"".join(["o", "ut"]): out, "a": x1, "b": x2})):  # noqa: FLY002
        out[...] = np.nan
        got = call()
        assert got is out
        np.testing.assert_array_equal(out, want)
        del got
    assert f._native.hits == 3
    np.testing.assert_array_equal(f(x1, x2, out=None), want)  # out=None: a fresh array
    assert f._native.hits == 4
    gc.collect()
    assert sys.getrefcount(out) == before


@pytest.mark.parametrize("overlap", ["same", "prefix", "suffix"])
def test_out_sharing_an_inputs_memory_takes_the_dispatcher(overlap):
    """Elementwise kernels may read an input after writing out=: an out= that shares any
    byte with an input gets the dispatcher's temporary, never the kernel directly."""
    x = Variable("x", (8,), "float64")
    f = compile(sg.Constant(np.arange(8.0))[::-1] * 0 + x[::-1] * 2.0)  # reads x reversed
    buf = np.arange(24.0)
    data = buf[8:16]
    out = {"same": buf[8:16], "prefix": buf[4:12], "suffix": buf[12:20]}[overlap]
    want = data[::-1] * 2.0
    before = f._native.hits
    got = f(data, out=out)
    np.testing.assert_array_equal(got, want)
    assert f._native.hits == before


def test_out_checks_still_raise_symgraph_errors():
    y = _model()
    f = compile(y)
    x1, x2 = _inputs()
    with pytest.raises(sg.SymgraphError, match="dtype"):
        f(x1, x2, out=np.empty((3, 4), np.float32))
    with pytest.raises(sg.SymgraphError, match="shape"):
        f(x1, x2, out=np.empty((4, 3)))
    frozen = np.empty((3, 4))
    frozen.flags.writeable = False
    with pytest.raises(sg.SymgraphError, match="read-only"):
        f(x1, x2, out=frozen)
    assert f._native.hits == 0
    n = Variable("n", (3,), "int64")
    g = compile(n ** n)
    with pytest.raises(sg.SymgraphError, match="negative"):
        g(np.array([1, -2, 3]), out=np.empty(3, np.int64))


def test_out_for_several_outputs_takes_the_dispatcher():
    x = Variable("x", (4,), "float64")
    f = compile((x + 1.0, x * 2.0))
    outs = (np.empty(4), np.empty(4))
    got = f(np.arange(4.0), out=outs)
    np.testing.assert_array_equal(got[0], np.arange(4.0) + 1)
    np.testing.assert_array_equal(got[1], np.arange(4.0) * 2)
    assert f._native.hits == 0
