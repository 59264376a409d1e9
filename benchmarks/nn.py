"""Issue 6's models: SGEMM 1024^3, the 512-256-128-2 MLP at batch 1 and 256, and conv2d
(8, 64, 56, 56) with 64 3x3 filters, against numpy and (when installed) torch, jax.jit and
onnxruntime, at one and two threads; and symgraph itself at one and two threads (the tanh/exp
expression, SGEMM, conv2d), each loop judged as compute-bound (two threads >= 1.7x one) or,
when its data comes from memory faster than one core's arithmetic could double, as
memory-bound (within 1.15x of the bandwidth bound). numpy's BLAS threads are pinned with
threadpoolctl when it is installed; jax's thread count is fixed when it starts, so its rows
say so."""
from __future__ import annotations

import contextlib
import os

import numpy as np

import peers
from elementwise import TANH, measure_bandwidth
from harness import fmt_ratio, fmt_time, measure_interleaved, optional, table

import symgraph as sg

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
SETTLE_S = 0.15  # pause before each multi-threaded sample (see measure_interleaved)


@contextlib.contextmanager
def blas_threads(n):
    """numpy's BLAS (and torch) limited to n threads while timing."""
    threadpoolctl = optional("threadpoolctl")
    torch = optional("torch")
    old = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(n)
    ctx = threadpoolctl.threadpool_limits(n) if threadpoolctl else contextlib.nullcontext()
    with ctx:
        yield
    if torch:
        torch.set_num_threads(old)


def _mlp(rng, batch):
    sizes = [512, 256, 128, 2]
    ws = [rng.standard_normal((i, o)).astype(np.float32) * 0.05 for i, o in zip(sizes, sizes[1:])]
    bs = [rng.standard_normal(o).astype(np.float32) * 0.05 for o in sizes[1:]]
    x = rng.standard_normal((batch, 512)).astype(np.float32)
    return x, ws, bs


def _numpy_mlp(x, ws, bs):
    h = np.maximum(x @ ws[0] + bs[0], 0)
    h = np.maximum(h @ ws[1] + bs[1], 0)
    return h @ ws[2] + bs[2]


def _symgraph_mlp(ws, bs, batch, threads):
    """The MLP of examples/mlp.py: the weights are Constants of the compiled model, as jax.jit
    holds them in its closure and onnxruntime as initializers; the batch is the input."""
    x = sg.Variable("x", (batch, 512), "float32")
    h = x
    for i, (w, b) in enumerate(zip(ws, bs)):
        h = h @ sg.Constant(w) + sg.Constant(b)
        if i < len(ws) - 1:
            h = sg.relu(h)
    return sg.compile(h, num_threads=threads)


def _jax_mlp(ws, bs):
    """jax.jit of the MLP (its XLA thread pool is whatever jax started with)."""
    jax = optional("jax")
    if jax is None:
        return None
    import jax.numpy as jnp

    jw = [jnp.asarray(w) for w in ws]
    jb = [jnp.asarray(v) for v in bs]

    @jax.jit
    def mlp(x):
        h = jnp.maximum(x @ jw[0] + jb[0], 0)
        h = jnp.maximum(h @ jw[1] + jb[1], 0)
        return h @ jw[2] + jb[2]

    return lambda x: mlp(x).block_until_ready()


def _onnx_mlp(ws, bs, threads):
    """The MLP as an ONNX graph (MatMul, Add, Relu) in an onnxruntime session."""
    onnx, ort = optional("onnx"), optional("onnxruntime")
    if onnx is None or ort is None:
        return None
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(a, f"w{i}") for i, a in enumerate(ws)]
    inits += [numpy_helper.from_array(a, f"b{i}") for i, a in enumerate(bs)]
    nodes, h = [], "x"
    for i in range(3):
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]))
        h = f"a{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [h], [f"r{i}"]))
            h = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 512])],
        [helper.make_tensor_value_info(h, TensorProto.FLOAT, [None, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle threads sleep, as symgraph's and OpenMP's do here (OMP_WAIT_POLICY=PASSIVE):
    # engines are timed in turn, and a spinning pool would take a core from the next one.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]


def run(quick=False):
    rng = np.random.default_rng(0)
    torch = optional("torch")
    repeat = 5 if quick else 9
    rows = []  # (case, threads, engine, seconds)

    n = 512 if quick else 1024
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    for threads in sorted({1, min(2, CORES)}):
        f = sg.compile(sg.Variable("a") @ sg.Variable("b"), num_threads=threads)
        f(a, b)
        with blas_threads(threads):
            _add(rows, f"sgemm {n}^3", threads, {"symgraph": lambda: f(a, b),
                                                 "numpy": lambda: a @ b}, repeat)

    for batch, calls in ((1, 1000), (256, 1)):
        x, ws, bs = _mlp(rng, batch)
        for threads in sorted({1, min(2, CORES)}):
            f = _symgraph_mlp(ws, bs, batch, threads)
            np.testing.assert_allclose(f(x), _numpy_mlp(x, ws, bs), rtol=1e-4, atol=1e-5)

            def sg_many():
                for _ in range(calls):
                    f(x)

            def np_many():
                for _ in range(calls):
                    _numpy_mlp(x, ws, bs)

            case = f"mlp batch {batch} x{calls}"
            engines = {"symgraph": sg_many, "numpy": np_many}
            with blas_threads(threads):
                if torch:
                    tx = torch.from_numpy(x)
                    tw = [torch.from_numpy(w) for w in ws]
                    tb = [torch.from_numpy(v) for v in bs]

                    def torch_mlp(x_):
                        h = torch.relu(x_ @ tw[0] + tb[0])
                        h = torch.relu(h @ tw[1] + tb[1])
                        return h @ tw[2] + tb[2]

                    scripted = torch.jit.trace(torch_mlp, (tx,))

                    def torch_many(fn=torch_mlp):
                        with torch.no_grad():
                            for _ in range(calls):
                                fn(tx)

                    engines["torch"] = torch_many
                    engines["torch.jit"] = lambda: torch_many(scripted)
                for engine, fn in (("onnxruntime", _onnx_mlp(ws, bs, threads)),
                                   ("jax.jit", _jax_mlp(ws, bs) if threads == 1 else None)):
                    if fn is None:
                        continue
                    np.testing.assert_allclose(fn(x), _numpy_mlp(x, ws, bs), rtol=1e-4, atol=1e-4)

                    def peer_many(fn=fn):
                        for _ in range(calls):
                            fn(x)

                    engines[engine] = peer_many
                _add(rows, case, threads, engines, repeat)

    shape = (2, 64, 56, 56) if quick else (8, 64, 56, 56)
    img = rng.standard_normal(shape).astype(np.float32)
    ker = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    for threads in sorted({1, min(2, CORES)}):
        f = sg.compile(sg.conv2d(sg.Variable("x"), sg.Variable("w"), padding=1), num_threads=threads)
        f(img, ker)
        case = f"conv2d {shape} 64x3x3"
        engines = {"symgraph": lambda: f(img, ker)}
        if torch:
            ti, tk = torch.from_numpy(img), torch.from_numpy(ker)

            def torch_conv():
                with torch.no_grad():
                    torch.nn.functional.conv2d(ti, tk, padding=1)

            engines["torch"] = torch_conv
        with blas_threads(threads):
            _add(rows, case, threads, engines, 3 if quick else 7)

    measured = _scaling(rng, quick)
    bandwidth = max(measure_bandwidth(10**7, 3 if quick else 7).values()) if measured else 0.0
    cache_bytes = last_level_cache_bytes()
    scaling = []
    for case, one, two, nbytes in measured:
        kind = classify(one, nbytes, _scaling_goal(case), bandwidth, cache_bytes)
        scaling.append((case, one, two, nbytes, kind, nbytes / (bandwidth * 1e9)))
    return {"rows": rows, "scaling": scaling, "targets": _targets(rows, scaling),
            "bandwidth_gbs": bandwidth, "cache_bytes": cache_bytes}


def _add(rows, case, threads, engines, repeat):
    """Rows for one case: every engine timed in turn (harness.measure_interleaved), with a
    pause before each sample when peers run thread pools that spin after a call."""
    settle = SETTLE_S if threads > 1 else 0.0
    for engine, timing in measure_interleaved(engines, repeat=repeat, settle_s=settle).items():
        rows.append((case, threads, engine, timing.median))


def _scaling(rng, quick):
    """symgraph at one and two threads, timed in turn, on the issue's compute-bound loops:
    the tanh/exp expression, SGEMM and conv2d. The expression runs twice: on 1e6 float32
    elements (16 MB, which a server's last-level cache holds) and on 1e7 (160 MB, from
    memory), where two cores may need more bandwidth than the machine has. Each case carries
    the bytes it must move, which _targets uses to say which kind of loop it is.
    [(case, 1-thread seconds, 2-thread seconds, bytes)]."""
    if CORES < 2:
        return []
    sizes = (10**6,) if quick else (10**6, 10**7)
    m = 512 if quick else 1024
    x, y = (rng.standard_normal((m, m)).astype(np.float32) for _ in range(2))
    img = rng.standard_normal((2 if quick else 8, 64, 56, 56)).astype(np.float32)
    ker = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    matmul = sg.Variable("a") @ sg.Variable("b")
    conv = sg.conv2d(sg.Variable("x"), sg.Variable("w"), padding=1)
    cases = []
    for n in sizes:
        arrays = {k: rng.standard_normal(n).astype(np.float32) for k in "abc"}
        out_array = np.empty(n, np.float32)  # out=: the loop itself, not the kernel zeroing
        cases.append((f"tanh/exp expression {n:.0e} f32 out=",
                      lambda t, arrays=arrays: peers.symgraph_fn(TANH, arrays, num_threads=t),
                      tuple(arrays.values()), {"out": out_array}, 16 * n))
    cases += [(f"sgemm {m}^3", lambda t: sg.compile(matmul, num_threads=t), (x, y), {},
               3 * x.nbytes),
              (f"conv2d {img.shape} 64x3x3", lambda t: sg.compile(conv, num_threads=t),
               (img, ker), {}, 2 * img.nbytes + ker.nbytes)]
    out = []
    for case, build, args, kwargs, nbytes in cases:
        fns = {}
        for threads in (1, 2):
            f = build(threads)
            f(*args, **kwargs)
            fns[threads] = (lambda f=f, args=args, kwargs=kwargs: f(*args, **kwargs))
        timing = measure_interleaved(fns, repeat=5 if quick else 9)
        out.append((case, timing[1].median, timing[2].median, nbytes))
    return out


def _scaling_goal(case):
    """The issue's two-thread speedup for a compute-bound case: 1.8x for SGEMM, else 1.7x."""
    return 1.8 if case.startswith("sgemm") else 1.7


def last_level_cache_bytes():
    """The size of the largest CPU cache Linux reports (sysfs), or None."""
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    for index in (os.listdir(base) if os.path.isdir(base) else ()):
        try:
            with open(os.path.join(base, index, "size")) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=None)


def classify(one, nbytes, goal, bandwidth_gbs, cache_bytes):
    """'compute' or 'memory': which of the issue's two-thread targets applies. Data the
    last-level cache holds never waits on memory; other data is memory-bound when moving its
    bytes at the machine's best bandwidth takes longer than one thread's time / goal (so no
    second core, however fast, could reach the goal)."""
    if cache_bytes and nbytes <= cache_bytes:
        return "compute"
    if bandwidth_gbs and one / goal < nbytes / (bandwidth_gbs * 1e9):
        return "memory"
    return "compute"


def _time(rows, case_prefix, threads, engine):
    for case, t, e, seconds in rows:
        if case.startswith(case_prefix) and t == threads and e == engine:
            return seconds
    return None


def _targets(rows, scaling):
    targets = []
    sg1, np1 = _time(rows, "sgemm", 1, "symgraph"), _time(rows, "sgemm", 1, "numpy")
    if sg1 and np1:
        targets.append(("SGEMM, 1 thread: speed vs numpy's BLAS", ">= 0.70x", np1 / sg1, np1 / sg1 >= 0.7))
    for case, one, two, nbytes, kind, bound in scaling:
        label = case.split(" f32")[0] if case.startswith("tanh") else case.split(" ")[0]
        goal = _scaling_goal(case)
        if kind == "memory":
            targets.append((f"{label}: 2 threads / bandwidth bound", "<= 1.15x", two / bound,
                            two / bound <= 1.15))
        else:
            targets.append((f"{label}: 2 threads vs 1", f">= {goal:.2f}x", one / two,
                            one / two >= goal))
    m1, n1 = _time(rows, "mlp batch 1 ", 1, "symgraph"), _time(rows, "mlp batch 1 ", 1, "numpy")
    if m1 and n1:
        targets.append(("MLP batch 1, 1 thread: speedup over numpy", ">= 3.00x", n1 / m1, n1 / m1 >= 3))
    for peer in ("jax.jit", "onnxruntime"):
        p1 = _time(rows, "mlp batch 1 ", 1, peer)
        if m1 and p1:
            targets.append((f"MLP batch 1, 1 thread: speed vs {peer}", "> 1.00x", p1 / m1,
                            p1 / m1 > 1))
    for case, label in (("mlp batch 256", "MLP batch 256"), ("conv2d", "conv2d")):
        for threads in (1, 2):
            s, t = _time(rows, case, threads, "symgraph"), _time(rows, case, threads, "torch")
            if s and t:
                targets.append((f"{label}, {threads} thread(s): speed vs torch", ">= 1.00x",
                                t / s, t / s >= 1.0))
    return targets


def report(result) -> str:
    rows = result["rows"]
    base = {(c, t): s for c, t, e, s in rows if e == "symgraph"}
    body = [[c, str(t), e, fmt_time(s), fmt_ratio(s / base[(c, t)]) if (c, t) in base else "n/a"]
            for c, t, e, s in rows]
    text = table(["case", "threads", "engine", "median", "time / symgraph's"], body)
    if result.get("scaling"):
        text += "\n\nsymgraph at 1 and 2 threads, timed in turn:\n" + table(
            ["case", "1 thread", "2 threads", "speedup", "kind", "bound"],
            [[c, fmt_time(one), fmt_time(two), fmt_ratio(one / two), kind,
              fmt_time(bound) if kind == "memory" else "-"]
             for c, one, two, nbytes, kind, bound in result["scaling"]])
        cache_mib = (result["cache_bytes"] or 0) / 2**20
        text += ("\nkind: compute-bound loops should run >= 1.7x faster on two threads (SGEMM "
                 "1.8x),\nmemory-bound ones within 1.15x of the bound: their bytes moved at "
                 f"{result['bandwidth_gbs']:.1f} GB/s,\nthe best streaming rate measured "
                 f"here. Data that fits the {cache_mib:.0f} MiB last-level cache is "
                 "compute-bound.")
    return text
