"""symgraph.dask: compiled functions over chunked dask arrays, numpy as the oracle."""
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import symgraph as sg

da = pytest.importorskip("dask.array", reason="dask[array] is not installed (extra 'dask')")
sgd = pytest.importorskip("symgraph.dask", reason="symgraph.dask needs dask")

X, W, B = sg.Variable("x"), sg.Variable("w"), sg.Variable("b")
RNG = np.random.default_rng(7)
XN = RNG.standard_normal((50, 7))
BN = RNG.standard_normal((50, 7))
WN = RNG.standard_normal(7)
# Uneven chunks with size-0 and size-1 chunks along both axes.
X_CHUNKS = ((10, 0, 1, 39), (3, 1, 0, 3))


def _x():
    return da.from_array(XN, chunks=X_CHUNKS)


def _b():
    return da.from_array(BN, chunks=(13, 7))


def close(got, want, rtol=1e-10):
    got = np.asarray(got)
    assert got.shape == np.shape(want)
    assert got.dtype == np.asarray(want).dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12)


def test_elementwise_with_numpy_broadcast_and_uneven_chunks():
    f = sg.compile(sg.exp(X) * W + B)
    y = sgd.apply(f, x=_x(), w=WN, b=_b())
    assert isinstance(y, da.Array)
    close(y.compute(), np.exp(XN) * WN + BN)


def test_positional_inputs_scalars_and_broadcast_column():
    col = RNG.standard_normal((50, 1))
    f = sg.compile(X * W - 2.5, inputs=[X, W])
    close(sgd.apply(f, _x(), col).compute(), XN * col - 2.5)
    f2 = sg.compile(X * W)
    close(sgd.apply(f2, x=_x(), w=3.0).compute(), XN * 3.0)


def test_one_kernel_task_per_chunk():
    f = sg.compile(sg.sqrt(X * X + 1) - X)
    y = sgd.apply(f, x=da.from_array(XN, chunks=(5, 7)))
    # from_array, then one blockwise layer: no intermediate arrays.
    assert len(y.dask.layers) == 2
    close(y.compute(), np.sqrt(XN * XN + 1) - XN)


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1), -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_output_reductions_over_each_axis(op, axis, keepdims):
    f = sg.compile(getattr(sg, op)((X - B) ** 2 * W, axis=axis, keepdims=keepdims))
    y = sgd.apply(f, x=_x(), b=_b(), w=WN, split_every=2)
    close(y.compute(), getattr(np, op)((XN - BN) ** 2 * WN, axis=axis, keepdims=keepdims))


def test_integer_and_bool_reductions():
    xi = RNG.integers(-50, 50, (40, 6)).astype(np.int32)
    x = da.from_array(xi, chunks=((7, 0, 33), (1, 5)))
    for op in ("sum", "mean", "max", "min"):
        f = sg.compile(getattr(sg, op)(X * 3, axis=0))
        close(sgd.apply(f, x=x).compute(), getattr(np, op)(xi * 3, axis=0))
    f = sg.compile(sg.sum(X > 0))
    close(sgd.apply(f, x=x).compute(), np.sum(xi > 0))


def test_float32_reductions_keep_float32():
    x32 = XN.astype(np.float32)
    x = da.from_array(x32, chunks=X_CHUNKS)
    for op in ("sum", "mean", "max", "min"):
        f = sg.compile(getattr(sg, op)(X * 2 + 1, axis=1))
        close(sgd.apply(f, x=x).compute(), getattr(np, op)(x32 * 2 + 1, axis=1), rtol=1e-5)


def test_outputs_of_one_shape_share_one_pass():
    f = sg.compile(X * 2, sg.exp(X) + B)
    y, z = sgd.apply(f, x=_x(), b=_b())
    shared = set(y.dask.layers) & set(z.dask.layers)
    assert any(name.startswith("symgraph_main_chunk") for name in shared), shared


def test_several_outputs_dict_tuple():
    f = sg.compile({"y": X * W, "z": X + B, "s": sg.sum(X * B, axis=1), "m": sg.mean(X)})
    out = sgd.apply(f, x=_x(), w=WN, b=_b())
    assert set(out) == {"y", "z", "s", "m"}
    (got,) = da.compute(out)
    close(got["y"], XN * WN)
    close(got["z"], XN + BN)
    close(got["s"], np.sum(XN * BN, axis=1))
    close(got["m"], np.mean(XN))
    g = sg.compile(X * 2, sg.max(X, axis=1))
    a, m = sgd.apply(g, x=_x())
    close(a.compute(), XN * 2)
    close(m.compute(), XN.max(axis=1))


def test_size_zero_array():
    x = da.from_array(np.zeros((0, 4)), chunks=(2, 2))
    close(sgd.apply(sg.compile(X + 1), x=x).compute(), np.zeros((0, 4)))
    close(sgd.apply(sg.compile(sg.sum(X, axis=0)), x=x).compute(), np.zeros(4))


def test_numpy_only_subexpressions_are_computed_whole():
    # mean(w) over a numpy input must see all of w even when w is split into chunks.
    w = RNG.standard_normal(50)
    f = sg.compile(X * sg.reshape(W - sg.mean(W), (50, 1)))
    close(sgd.apply(f, x=_x(), w=w).compute(), XN * (w - w.mean()).reshape(50, 1))


def test_softmax_across_chunks_rechunks_with_warning():
    f = sg.compile(sg.softmax(X, axis=1))
    with pytest.warns(sgd.RechunkWarning, match="axis 1"):
        y = sgd.apply(f, x=_x())
    e = np.exp(XN - XN.max(1, keepdims=True))
    close(y.compute(), e / e.sum(1, keepdims=True))


def test_softmax_along_unchunked_axis_needs_no_rechunk():
    f = sg.compile(sg.softmax(X, axis=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", sgd.RechunkWarning)
        y = sgd.apply(f, x=da.from_array(XN, chunks=(9, 7)))
    e = np.exp(XN - XN.max(1, keepdims=True))
    close(y.compute(), e / e.sum(1, keepdims=True))


@pytest.mark.parametrize("rhs_shape", [(7, 3), (7,)])
def test_matmul_small_rhs_per_row_chunk_and_chunked_contraction(rhs_shape):
    m = RNG.standard_normal(rhs_shape)
    f = sg.compile(sg.relu(X - B) @ W)
    want = np.maximum(XN - BN, 0) @ m
    for x in (da.from_array(XN, chunks=(9, 7)), _x()):
        close(sgd.apply(f, x=x, b=_b(), w=m).compute(), want, rtol=1e-9)


@pytest.mark.parametrize("build, b, what", [
    (lambda: X.T + 1, BN, "transpose"),
    (lambda: sg.sum(X, axis=1) + B, BN[:, 0], "dropped inner axes"),
    (lambda: B @ (X * 2), BN.T, "matmul"),
    (lambda: sg.concatenate([X, B]), BN, "concat"),
])
def test_unsupported_graphs_are_refused(build, b, what):
    f = sg.compile(build(), inputs=[X, B])
    with pytest.raises(sg.SymgraphError, match=what):
        sgd.apply(f, x=_x(), b=da.from_array(b))


def test_argument_errors():
    f = sg.compile(X + B)
    with pytest.raises(sg.ArgumentError, match="missing"):
        sgd.apply(f, x=_x())
    with pytest.raises(sg.ArgumentError, match="unknown"):
        sgd.apply(f, x=_x(), b=BN, c=1)
    with pytest.raises(sg.ShapeError):
        sgd.apply(f, x=_x(), b=np.ones(3))
    with pytest.raises(sg.ArgumentError, match="compiled function"):
        sgd.apply(X + B, x=_x(), b=BN)


def test_compiled_functions_pickle():
    f = sg.compile(sg.sum((X - B) ** 2, axis=0))
    g = pickle.loads(pickle.dumps(f))
    close(g(x=XN, b=BN), f(x=XN, b=BN))


def test_threaded_scheduler():
    f = sg.compile(sg.sum(sg.tanh(X) * B))
    y = sgd.apply(f, x=da.from_array(XN, chunks=(5, 7)), b=BN)
    close(y.compute(scheduler="threads", num_workers=2), np.sum(np.tanh(XN) * BN))


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_symgraph_imports_without_dask():
    r = _run("import sys, symgraph; print('dask' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    r = _run("import sys; sys.modules['dask'] = None; sys.modules['dask.array'] = None\n"
             "import symgraph.dask")
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "symgraph[dask]" in r.stderr


# --- dask.distributed ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed", reason="distributed is not installed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


def test_distributed_results_match(client):
    f = sg.compile({"y": X * W + B, "s": sg.sum((X - B) ** 2, axis=0),
                    "m": sg.mean(sg.exp(X), axis=1)})
    out = sgd.apply(f, x=_x(), w=WN, b=_b())
    got = client.compute(out).result()
    close(got["y"], XN * WN + BN)
    close(got["s"], np.sum((XN - BN) ** 2, axis=0))
    close(got["m"], np.mean(np.exp(XN), axis=1))
    # The kernels ran in the worker processes (rebuilt there from their pickles).
    loaded = client.run(lambda: len(__import__("symgraph.dask").dask._LOADED))
    assert any(loaded.values())


def test_distributed_survives_a_killed_worker(client):
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    big = RNG.standard_normal((400, 50))
    f = sg.compile(sg.sum(sg.exp(X) * W, axis=0))
    # A slow chunk source spreads the work over time, so the kill lands mid-computation.
    x = da.from_array(big, chunks=(4, 50)).map_blocks(_slow_copy, dtype=big.dtype)
    future = client.compute(sgd.apply(f, x=x, w=WN[:1]))
    deadline = time.monotonic() + 30
    while not any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert not future.done()
    victim = next(a for a, tasks in client.processing().items() if tasks)
    pids = client.run(os.getpid)
    os.kill(pids[victim], signal.SIGKILL)
    close(future.result(timeout=60), np.sum(np.exp(big) * WN[:1], axis=0), rtol=1e-9)
    assert pids[victim] not in client.run(os.getpid).values()


def _slow_copy(block):
    time.sleep(0.02)
    return block.copy()
