"""Parallel code generation: a module split into parts, compiled in separate processes and
linked in one engine, gives bit for bit the code's results unsplit."""
from __future__ import annotations

import re

import numpy as np
import pytest
import llvmlite.binding as llvm

import symgraph as sg
from symgraph.codegen import cpu
from symgraph.codegen.split import _declaration, split_module
from symgraph.interpret import evaluate
from symgraph.runtime import cache as persistent_cache
from symgraph.runtime import compiled, worker

from helpers import run_in_threads


def _model(scale=1.0):
    """Many kernels of several kinds: elementwise with outlined math and exact trig, a
    reduction, a matmul with an epilogue, threaded loops, and a constant array."""
    x = sg.Variable("x", (64, 64), "float64")
    w = sg.Variable("w", (64, 64), "float64")
    table = sg.Constant(np.linspace(-1, 1, 64) * scale)
    h = sg.relu(x @ w + table)
    outs = [h]
    for i in range(12):
        h = sg.sin(h * (1.0 + i / 7)) + sg.exp(-h * h) * sg.tanh(h) - table
        outs.append(sg.sum(h * h, axis=1))
        h = sg.transpose(h) @ w  # a matmul between elementwise groups: a new kernel
    outs.append(sg.max(h, axis=0))
    return outs, [x, w]


def _inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 64)), rng.standard_normal((64, 64)) / 8


def _results(monkeypatch, split, num_threads=2, scale=1.0):
    monkeypatch.setattr(compiled, "SPLIT_MIN_INSTRUCTIONS", 0 if split else 10**12)
    outs, variables = _model(scale)
    f = sg.compile(outs, inputs=variables, num_threads=num_threads)
    return f, f(*_inputs())


@pytest.fixture(autouse=True)
def _no_disk_cache(monkeypatch):
    monkeypatch.setenv("SYMGRAPH_CACHE", "0")


@pytest.mark.parametrize("num_threads", [1, 2])
def test_split_code_is_bit_identical(monkeypatch, num_threads):
    monkeypatch.setattr(worker, "parallel_parts", lambda: 3)
    _, whole = _results(monkeypatch, False, num_threads)
    f, parts = _results(monkeypatch, True, num_threads)
    assert len(f.pass_log) and len(whole) == len(parts)
    for a, b in zip(whole, parts):
        assert a.tobytes() == b.tobytes()
    want = evaluate(_model()[0], **dict(zip(["x", "w"], _inputs())))
    for a, b in zip(parts, want):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_split_parts_verify_and_hold_each_kernel_once(monkeypatch):
    monkeypatch.setattr(compiled, "SPLIT_MIN_INSTRUCTIONS", 10**12)
    outs, variables = _model()
    text = sg.compile(outs, inputs=variables, num_threads=2).llvm_ir
    for count in (2, 3, 4):
        parts = split_module(text, count)
        assert len(parts) == count
        cpu.initialize()
        for part in parts:
            llvm.parse_assembly(part).verify()
        entry = text.split('define i32 @"symgraph_main"(', 1)[1].split("\n}\n", 1)[0]
        kernels = set(re.findall(r'call void @("symgraph_main\.k\d+[^"]*")', entry))
        assert len(kernels) > 10
        for k in kernels:  # each kernel is defined once, and declared where it is called
            defined = [p for p in parts if f"define void @{k}(" in p
                       or f"define internal void @{k}(" in p]
            assert len(defined) == 1, k
            assert f"define internal void @{k}(" in parts[0] or f"declare void @{k}(" in parts[0]
        # The entry is defined only in the first part; the others see no entry at all.
        assert 'define i32 @"symgraph_main"(' in parts[0]
        assert all('define i32 @"symgraph_main"(' not in p for p in parts[1:])


def test_same_kernel_names_in_two_functions_do_not_cross_link(monkeypatch):
    """Two split functions whose kernels share names, each linked in its own engine."""
    monkeypatch.setattr(worker, "parallel_parts", lambda: 2)
    f, a = _results(monkeypatch, True, scale=1.0)
    g, b = _results(monkeypatch, True, scale=-3.0)
    _, a_whole = _results(monkeypatch, False, scale=1.0)
    _, b_whole = _results(monkeypatch, False, scale=-3.0)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, a_whole))
    assert all(x.tobytes() == y.tobytes() for x, y in zip(b, b_whole))
    assert any(x.tobytes() != y.tobytes() for x, y in zip(a, b))


def test_split_module_is_cached_as_several_objects(monkeypatch, tmp_path):
    monkeypatch.setenv("SYMGRAPH_CACHE", "1")
    monkeypatch.setenv("SYMGRAPH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(worker, "parallel_parts", lambda: 2)
    f, first = _results(monkeypatch, True)
    g, again = _results(monkeypatch, True)  # a new function: loaded from the disk cache
    assert f.cache_info().compilations == 1 and g.cache_info().compilations == 0
    (entry,) = tmp_path.rglob("*.o")
    objects, _, _ = persistent_cache.read(entry.parent.name + entry.stem)
    assert len(objects) == 2
    assert all(x.tobytes() == y.tobytes() for x, y in zip(first, again))


def test_workers_off_means_no_split(monkeypatch):
    monkeypatch.setenv("SYMGRAPH_COMPILE_WORKER", "0")
    assert worker.parallel_parts() == 1


def test_a_small_module_is_not_split():
    text = 'define i32 @"f"(i32 %".1")\n{\nentry:\n  ret i32 %".1"\n}\n'
    assert split_module(text, 4) == [text]


def test_declaration_drops_names_and_attributes():
    define = ('define internal void @"m.k1.add"(ptr noalias %".1", ptr noalias %"x y", i64 %".3")'
              ' noinline\n{\nentry:\n  ret void\n}')
    assert _declaration(define) == 'declare void @"m.k1.add"(ptr noalias, ptr noalias, i64)'


def test_threads_compiling_split_modules_at_once(monkeypatch):
    monkeypatch.setattr(worker, "parallel_parts", lambda: 3)
    _, whole = _results(monkeypatch, False, scale=2.0)
    monkeypatch.setattr(compiled, "SPLIT_MIN_INSTRUCTIONS", 0)
    results, errors = [None] * 3, []

    def one(t):
        try:
            outs, variables = _model(2.0)
            results[t] = sg.compile(outs, inputs=variables, num_threads=2)(*_inputs())
        except Exception as exc:  # reported below
            errors.append(exc)

    run_in_threads(one, 3)
    assert not errors
    for got in results:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, whole))
