"""Random graphs in batches, and the ways of checking them.

A *batch* is a set of declared input Variables (shapes built from one base shape with
size-0, size-1 and broadcast axes; every supported dtype; edge values in the data) and many
independent random expression graphs over them, compiled together as the outputs of ONE
function so LLVM's fixed cost is paid once per batch, not once per graph.

Each graph records how exact its result must be (the floating-point policy, docs/reliability.md):

- ``exact``: integer and boolean results, and float results built only from correctly rounded
  operations (+ - * / sqrt floor, casts, comparisons, where, movement, max/min, concat).
  Compiled code and the interpreter compute the same IEEE operations, so these compare bit
  for bit: same NaN positions, same sign of zero.
- ``approx``: one transcendental function of exact values (a few ULPs, docs/math.md):
  relative tolerance TRANSCENDENTAL_RTOL.
- ``sum``: a float sum, mean or matmul of exact values; the summation order differs from
  numpy's pairwise sums and BLAS, so the absolute error may reach ``SUM_SLACK * terms * eps *
  max|term|``. NaN and infinity positions must still match.

Approximate values end their graph (they never feed another op), so errors are never amplified.
"""
from __future__ import annotations

import ctypes
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

import symgraph as sg
from strategies import _binary, _unary  # noqa: E402  (one op-by-name helper)
from symgraph.passes import OPTIMIZING

DTYPES = ("bool", "int32", "int64", "float32", "float64")
TRANSCENDENTAL_RTOL = {"float32": 1e-5, "float64": 1e-12}
TRANSCENDENTAL_ATOL = {"float32": 1e-30, "float64": 1e-300}
SUM_SLACK = 8
BASE_SHAPES = [(), (0,), (1,), (3,), (5,), (2, 3), (1, 4), (4, 1), (2, 0), (3, 2, 2), (2, 1, 3),
               (1, 1, 1)]


# --- values ----------------------------------------------------------------------------------

def edge_pool(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.array([True, False])
    if dtype.kind == "i":
        info = np.iinfo(dtype)
        return np.array([0, 1, -1, 2, -3, 7, info.max, info.min, info.min + 1, info.max - 1],
                        dtype=dtype)
    info = np.finfo(dtype)
    # No huge finite values: whether a float sum of them overflows depends on the order.
    # nan and -0.0 twice: the values whose handling most often goes wrong.
    return np.array([np.nan, np.nan, np.inf, -np.inf, 0.0, -0.0, -0.0, 1.0, -1.0, 0.5, 3.0,
                     info.smallest_subnormal, -info.smallest_subnormal, info.tiny, -info.tiny],
                    dtype=dtype)


def random_array(rng, shape, dtype):
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    if dtype.kind == "b":
        data = rng.random(size) < 0.5
    elif dtype.kind == "i":
        data = rng.integers(-20, 21, size=size).astype(dtype)
    else:
        data = rng.uniform(-20, 20, size=size).astype(dtype)
    if size and dtype.kind != "b":
        picks = rng.random(size) < 0.35
        data[picks] = rng.choice(edge_pool(dtype), size=int(picks.sum()))
    return data.reshape(shape)


@dataclass
class Graph:
    """One random graph: its output expression, how exact it must be, and what it did."""

    expr: object
    kind: str = "exact"  # exact | approx | sum
    terms: int = 1  # for "sum": number of terms added into one output element
    operands: tuple = ()  # for "sum": expressions whose magnitudes bound the error
    ops: list = field(default_factory=list)


@dataclass
class Batch:
    seed: int
    variables: list
    inputs: dict
    graphs: list

    def outputs(self):
        return {f"g{i}": g.expr for i, g in enumerate(self.graphs)}

    def describe(self, key):
        g = self.graphs[int(key[1:])]
        sig = ", ".join(f"{v.name}:{v.dtype}{list(v.shape)}" for v in self.variables)
        return f"batch seed={self.seed} inputs({sig}) {key} [{g.kind}]: " + " -> ".join(g.ops)


# --- the generator ---------------------------------------------------------------------------

BINARY = ["add", "sub", "mul", "div", "floordiv", "mod", "maximum", "minimum", "lt", "le", "gt",
          "ge", "eq", "ne", "and", "or", "xor", "pow"]
UNARY_EXACT = ["neg", "abs", "sqrt", "floor", "invert", "relu", "logical_not"]
UNARY_APPROX = ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
                "sinh", "cosh", "tanh", "sigmoid"]
STEPS = ["binary"] * 4 + ["scalar"] * 3 + ["unary"] * 2 + ["approx", "reduce", "reduce",
         "argreduce", "movement", "movement", "movement", "movement", "cast", "cast", "where", "concat",
         "matmul", "take", "clip", "loop", "cond", "nn", "identity", "identity"]
# Operations with 0 or 1 that are identities only for some values (x + 0.0 is not x for
# x = -0.0; x * 0.0 is not 0.0 for inf, nan or negative x): where simplification and
# constant folding go wrong.
IDENTITY_LIKE = [("add", 0.0, False), ("add", 0.0, True), ("add", -0.0, False),
                 ("sub", 0.0, False), ("sub", -0.0, False), ("sub", 0.0, True),
                 ("mul", 1.0, False), ("mul", 0.0, False), ("mul", -0.0, True),
                 ("div", 1.0, False), ("div", -1.0, False)]
CONTROL = {"loop", "cond"}


def _is_float(e):
    return np.dtype(e.dtype).kind == "f"


def _finished(e, kind, ops, terms=1, operands=()):
    """A graph ending in an approximate value; exact float results of it stay exact."""
    if not _is_float(e):
        kind = "exact"
    return Graph(e, kind, terms, operands, ops)


class Generator:
    def __init__(self, rng, control=True):
        self.rng = rng
        self.steps = [s for s in STEPS if control or s not in CONTROL]

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def coin(self, p=0.5):
        return bool(self.rng.random() < p)

    def variant(self, base):
        shape = list(base[int(self.rng.integers(len(base) + 1)):])
        for i in range(len(shape)):
            if self.coin(0.25):
                shape[i] = 1
        return tuple(shape)

    def batch(self, seed, n_graphs, max_steps=5):
        base = self.pick(BASE_SHAPES)
        variables, inputs = [], {}
        dtypes = list(DTYPES) + [self.pick(DTYPES) for _ in range(2)]
        for i, dtype in enumerate(dtypes):
            shape = base if i < 2 else self.variant(base)
            v = sg.Variable(f"x{i}", shape=shape, dtype=dtype)
            variables.append(v)
            inputs[v.name] = random_array(self.rng, shape, dtype)
        graphs = []
        while len(graphs) < n_graphs:
            graphs.append(self.graph(variables, max_steps))
        return Batch(seed, variables, inputs, graphs)

    def graph(self, variables, max_steps):
        pool = list(variables)
        ops = []
        last = None
        for _ in range(int(self.rng.integers(1, max_steps + 1))):
            try:
                made = self.step(pool, ops)
            except sg.SymgraphError:
                continue
            if made is None:
                continue
            if isinstance(made, Graph):
                return made
            pool.append(made)
            last = made
        if last is None:
            last = self.pick(variables) + 1
            ops.append("fallback")
        return Graph(last, "exact", ops=ops)

    def step(self, pool, ops):
        kind = self.pick(self.steps)
        a = self.pick(pool)
        if kind == "binary":
            b = a if self.coin(0.2) else self.pick(pool)
            name = self.pick(BINARY)
            if self.coin():
                a, b = b, a
            if name == "pow":
                if _is_float(a) or _is_float(b):
                    ops.append(f"pow({a.dtype}, {b.dtype})")
                    return _finished(a ** b, "approx", ops)
                b = b & 3  # no negative integer powers
            ops.append(f"{name}({a.dtype}{list(a.shape)}, {b.dtype}{list(b.shape)})")
            return _binary(name, a, b)
        if kind == "scalar":
            name = self.pick(["add", "sub", "mul", "div", "floordiv", "mod", "maximum",
                              "minimum", "lt", "eq", "ne"])
            s = self.pick([0, 1, 2, -3, 1.5, -0.25, True, False, 0.0, 0.0, -0.0, 1e10, -7])
            if self.coin():
                ops.append(f"{name}({s!r}, x)")
                return _binary(name, s, a)
            ops.append(f"{name}(x, {s!r})")
            return _binary(name, a, s)
        if kind == "identity":
            name, s, first = self.pick(IDENTITY_LIKE)
            ops.append(f"{name}({s!r}, x)" if first else f"{name}(x, {s!r})")
            return _binary(name, s, a) if first else _binary(name, a, s)
        if kind == "unary":
            name = self.pick(UNARY_EXACT)
            ops.append(f"{name}({a.dtype})")
            return sg.logical_not(a) if name == "logical_not" else _unary(name, a)
        if kind == "approx":
            name = self.pick(UNARY_APPROX)
            x = a.astype("float32") if a.dtype == np.bool_ else sg.clip(a, -30, 30)
            ops.append(f"{name}({a.dtype})")
            return _finished(_unary(name, x), "approx", ops)
        if kind == "clip":
            ops.append("clip")
            return sg.clip(a, -2, 3)
        if kind in ("reduce", "argreduce"):
            nd = len(a.shape)
            axis = None if nd == 0 or self.coin(0.3) else int(self.rng.integers(-nd, nd))
            keepdims = self.coin()
            if kind == "argreduce":
                name = self.pick(["argmax", "argmin"])
                ops.append(f"{name}(axis={axis}, keepdims={keepdims and axis is not None})")
                return getattr(sg, name)(a, axis=axis, keepdims=keepdims and axis is not None)
            name = self.pick(["sum", "mean", "max", "min"])
            if nd >= 2 and axis is not None and self.coin(0.3):
                axis = (0, nd - 1)
            ops.append(f"{name}(axis={axis}, keepdims={keepdims})")
            out = getattr(sg, name)(a, axis=axis, keepdims=keepdims)
            if name in ("sum", "mean") and _is_float(out):
                terms = max(math.prod(a.shape) // max(math.prod(out.shape), 1), 1)
                return _finished(out, "sum", ops, terms, (a,))
            return out
        if kind == "movement":
            return self.movement(a, ops)
        if kind == "cast":
            target = self.pick(DTYPES)
            if _is_float(a) and np.dtype(target).kind in "i":
                a = sg.where(a == a, sg.clip(a, -1e6, 1e6), 0)  # float->int of nan/inf/huge is UB
            ops.append(f"astype({a.dtype}->{target})")
            return a.astype(target)
        if kind == "where":
            c, b = self.pick(pool), self.pick(pool)
            cond = c if c.dtype == np.bool_ else c > 0
            other = b if self.coin() else self.pick([0, 1.5, True, -2])
            ops.append(f"where({c.dtype}, {a.dtype}, ...)")
            return sg.where(cond, a, other)
        if kind == "concat":
            if not a.shape:
                return None
            b = self.pick(pool)
            axis = int(self.rng.integers(-len(a.shape), len(a.shape)))
            ops.append(f"concat({list(a.shape)}, {list(b.shape)}, axis={axis})")
            return sg.concatenate([a, b], axis=axis)
        if kind == "take":
            if not a.shape or 0 in a.shape:
                return None
            axis = int(self.rng.integers(len(a.shape)))
            n = a.shape[axis]
            idx = self.rng.integers(-n, n, size=int(self.rng.integers(0, 4)))
            ops.append(f"take(axis={axis}, {idx.tolist()})")
            return sg.take(a, sg.Constant(idx.astype(self.pick(["int32", "int64"]))), axis=axis)
        if kind == "matmul":
            if len(a.shape) == 0:
                return None
            b = a.T if len(a.shape) == 2 else a
            if len(a.shape) > 2:
                b = sg.transpose(a, (*range(len(a.shape) - 2), len(a.shape) - 1,
                                     len(a.shape) - 2))
            ops.append(f"matmul({list(a.shape)})")
            out = a @ b
            if _is_float(out):
                return _finished(out, "sum", ops, max(a.shape[-1], 1), (a, b))
            return out
        if kind == "loop":
            k = int(self.rng.integers(0, 4))
            ops.append(f"fori_loop(0, {k}, c*2-1)")
            return sg.fori_loop(0, k, lambda i, c: c * 2 - 1, a)
        if kind == "cond":
            ops.append("cond(sum(x) > 0, x + 1, x * 2)")
            return sg.cond(sg.sum(a.astype("int64")) > 0, lambda x: x + 1, lambda x: x * 2, a)
        if kind == "nn":
            size = math.prod(a.shape)
            if size >= 1 and self.coin(0.25):
                return self.winograd_layer(a, ops)
            if size < 2:
                return None
            x = sg.reshape(a.astype(self.pick(["float32", "float64"])), (1, 1, size, 1))
            name = self.pick(["conv2d", "max_pool2d", "avg_pool2d"])
            ops.append(f"{name}(1x1x{size}x1)")
            if name == "max_pool2d":
                return sg.max_pool2d(x, (2, 1))
            if name == "avg_pool2d":
                return _finished(sg.avg_pool2d(x, (2, 1)), "sum", ops, 2, (x,))
            w = sg.Constant(self.rng.integers(-3, 4, size=(2, 1, 2, 1)).astype(x.dtype))
            return _finished(sg.conv2d(x, w), "sum", ops, 2, (x, w))
        return None

    def winograd_layer(self, a, ops):
        """A conv2d that codegen/winograd.py computes (16+ channels each way, 3x3 filters at
        stride 1, an even output size): constant images shifted by the first element of
        `a`, so its nan, inf and extremes reach them. Its transforms add rounding of their
        own: the error bound counts four times the direct sum's terms."""
        dtype = self.pick(["float32", "float64"])
        c, o = self.pick([16, 24]), self.pick([16, 20])
        h, w = self.pick([4, 6, 18]), self.pick([4, 6, 34])
        padding = self.pick([0, 1])
        images = sg.Constant(self.rng.standard_normal((2, c, h, w)).astype(dtype))
        shift = sg.reshape(sg.reshape(a.astype(dtype), (-1,))[:1], (1, 1, 1, 1))
        x = images + shift
        filters = sg.Constant(self.rng.integers(-3, 4, size=(o, c, 3, 3)).astype(dtype))
        ops.append(f"conv2d(2x{c}x{h}x{w} + x[0], {o}x{c}x3x3, padding={padding})")
        return _finished(sg.conv2d(x, filters, padding=padding), "sum", ops, 4 * 9 * c,
                         (x, filters))

    def movement(self, a, ops):
        shape = a.shape
        move = self.pick(["transpose", "reshape", "slice", "broadcast"])
        if move == "transpose":
            perm = tuple(int(p) for p in self.rng.permutation(len(shape)))
            ops.append(f"transpose{perm}")
            return sg.transpose(a, perm)
        if move == "reshape":
            size = math.prod(shape)
            target = self.pick([(-1,), (1, -1), (-1, 1), tuple(shape[::-1]) if shape else (1,)])
            if size == 0 and -1 in target:
                target = (0,) if target == (-1,) else tuple(0 if t == -1 else t for t in target)
            ops.append(f"reshape{target}")
            return sg.reshape(a, target)
        if move == "slice":
            key = []
            for d in shape:
                if d and self.coin(0.2):
                    key.append(int(self.rng.integers(-d, d)))
                    continue
                start = None if self.coin() else int(self.rng.integers(-d - 1, d + 2))
                stop = None if self.coin() else int(self.rng.integers(-d - 1, d + 2))
                key.append(slice(start, stop, self.pick([None, 1, 2, -1, -2, 2, 3])))
            ops.append(f"slice{tuple(key)}")
            return a[tuple(key)]
        extra = self.pick([(), (2,), (1,), (0,)])
        shape = tuple(3 if d == 1 and self.coin() else d for d in shape)
        ops.append(f"broadcast_to({extra}+{list(shape)})")
        return sg.broadcast_to(a, extra + tuple(shape))


def make_batch(seed, n_graphs=40, max_steps=5, control=True):
    """Batch `seed` (reproducible); control=False leaves out control flow."""
    return Generator(np.random.default_rng(seed), control).batch(seed, n_graphs, max_steps)


# --- comparing -------------------------------------------------------------------------------

def _finite_max(x):
    x = np.abs(np.asarray(x, dtype=np.float64))
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else 0.0


def tolerances(batch):
    """key -> (rtol, atol), from the interpreter's values of each sum's operands."""
    wanted = [(k, e) for k, g in zip(batch.outputs(), batch.graphs) for e in g.operands]
    values = interpret(batch, [e for _, e in wanted]) if wanted else []
    mags = {}
    for (k, _), v in zip(wanted, values):
        mags[k] = mags.get(k, 1.0) * _finite_max(v)
    out = {}
    for k, g in zip(batch.outputs(), batch.graphs):
        dtype = np.dtype(g.expr.dtype)
        if g.kind == "exact" or dtype.kind != "f":
            out[k] = (0.0, 0.0)
        elif g.kind == "approx":
            out[k] = (TRANSCENDENTAL_RTOL[dtype.name], TRANSCENDENTAL_ATOL[dtype.name])
        else:
            eps = float(np.finfo(dtype).eps)
            out[k] = (SUM_SLACK * g.terms * eps, SUM_SLACK * g.terms * eps * mags.get(k, 0.0)
                      + float(np.finfo(dtype).smallest_subnormal) * g.terms * 4)
    return out


def interpret(batch, exprs):
    used = {v.name for v in sg.frontend.find_variables(exprs)}
    return sg.evaluate(exprs, **{k: x for k, x in batch.inputs.items() if k in used})


def mismatch(got, want, rtol, atol):
    """None when `got` matches `want` under the policy, else a short description."""
    if not isinstance(got, np.ndarray):
        return f"not an ndarray: {type(got).__name__}"
    want = np.asarray(want)
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"type {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    if got.dtype.kind != "f":
        bad = got != want
        return f"values differ at {np.argwhere(bad)[:3].tolist()}" if np.any(bad) else None
    gnan, wnan = np.isnan(got), np.isnan(want)
    if not np.array_equal(gnan, wnan):
        return f"NaN positions differ: got {got.ravel()[:8]}, want {want.ravel()[:8]}"
    ok = ~wnan
    if rtol == 0 and atol == 0:
        g, w = got[ok], want[ok]
        if not (np.array_equal(g, w) and np.array_equal(np.signbit(g), np.signbit(w))):
            bad = np.argwhere(ok)[(g != w) | (np.signbit(g) != np.signbit(w))][:3].tolist()
            return f"not bit-exact at {bad}: got {got[tuple(np.array(bad).T)]}, " \
                   f"want {want[tuple(np.array(bad).T)]}"
        return None
    g, w = got[ok].astype(np.float64), want[ok].astype(np.float64)
    ginf, winf = np.isinf(g), np.isinf(w)
    if not (np.array_equal(ginf, winf) and np.array_equal(g[winf], w[winf])):
        return "infinities differ"
    fin = ~winf
    close = np.abs(g[fin] - w[fin]) <= atol + rtol * np.abs(w[fin])
    if not np.all(close):
        return f"beyond rtol={rtol:g} atol={atol:g}: got {g[fin][~close][:3]}, " \
               f"want {w[fin][~close][:3]}"
    return None


def bitwise(got, want):
    """None when identical bit for bit (NaN payloads aside), else a description."""
    return mismatch(got, want, 0.0, 0.0)


# --- the checks ------------------------------------------------------------------------------

@dataclass
class Result:
    graphs: int = 0
    comparisons: int = 0
    failures: list = field(default_factory=list)

    def add(self, other):
        self.graphs += other.graphs
        self.comparisons += other.comparisons
        self.failures += other.failures


def check_batch(batch, *, ablations=False, round_trip=False, export_dir=None, opt_levels=(2,),
                gpu=False):
    """Run every requested check on one batch; returns a Result listing every mismatch."""
    res = Result(graphs=len(batch.graphs))
    outs = batch.outputs()
    keys = list(outs)
    want = dict(zip(keys, interpret(batch, list(outs.values()))))
    tol = tolerances(batch)

    def compare(label, got, against=None, exact=False):
        for k in keys:
            res.comparisons += 1
            ref = want[k] if against is None else against[k]
            rtol, atol = (0.0, 0.0) if exact else tol[k]
            problem = mismatch(got[k], ref, rtol, atol)
            if problem:
                res.failures.append(f"{label}: {batch.describe(k)}: {problem}")

    def run(label, **options):
        try:
            f = sg.compile(outs, inputs=batch.variables, **options)
            return f, f(**batch.inputs)
        except Exception as exc:  # a crash of the compiler is a mismatch too
            res.failures.append(f"{label}: {type(exc).__name__}: {exc} "
                                f"(batch seed={batch.seed})")
            return None, None

    main = None
    for level in opt_levels:
        f, got = run(f"opt_level={level}", opt_level=level)
        if got is not None:
            compare(f"compiled opt_level={level} vs interpreter", got)
            if level == 2:
                main, main_got = f, got
    if ablations:
        for name in OPTIMIZING:
            _, got = run(f"disable={name}", disable=[name])
            if got is not None:
                compare(f"disable={name} vs interpreter", got)
    if main is None:
        return res
    if round_trip:
        try:
            loaded = sg.serialize.loads(sg.serialize.dumps(main))
            compare("save/load round trip vs original", loaded(**batch.inputs), main_got,
                    exact=True)
        except Exception as exc:
            res.failures.append(f"round trip: {type(exc).__name__}: {exc} (seed={batch.seed})")
    if export_dir is not None:
        try:
            compare("exported library vs JIT", run_exported(main, batch, export_dir), main_got,
                    exact=True)
        except Exception as exc:
            res.failures.append(f"export: {type(exc).__name__}: {exc} (seed={batch.seed})")
    if gpu:
        try:
            g = sg.compile(outs, inputs=batch.variables, target="cuda")
            compare("CUDA vs interpreter", g(**batch.inputs))
        except Exception as exc:
            res.failures.append(f"cuda: {type(exc).__name__}: {exc} (seed={batch.seed})")
    return res


def run_exported(f, batch, directory):
    """Export `f`, load the library with ctypes and call NAME_run on the batch's inputs."""
    name = f"rel{batch.seed}"
    lib_path, _ = f.export(directory, name=name, cpu="native")
    lib = ctypes.CDLL(os.path.abspath(lib_path))
    args, outs = [], {}
    for v in batch.variables:
        x = np.ascontiguousarray(batch.inputs[v.name])
        args += [x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(x.size)]
    ref = f(**batch.inputs)
    for k in batch.outputs():
        outs[k] = np.empty(ref[k].shape, ref[k].dtype)
        args += [outs[k].ctypes.data_as(ctypes.c_void_p), ctypes.c_int64(outs[k].size)]
    run = getattr(lib, f"{name}_run")
    run.restype = ctypes.c_int
    status = run(*args)
    if status:
        strerror = getattr(lib, f"{name}_strerror")
        strerror.restype = ctypes.c_char_p
        raise RuntimeError(f"{name}_run returned {status}: {strerror(status)}")
    return outs


def has_gpu():
    try:
        from symgraph.runtime import cuda

        return cuda.device_arch() is not None
    except Exception:
        return False


def check_many(seeds, n_graphs=40, progress=None, **options):
    """check_batch over one batch per seed; `progress`, a stream, gets a line every 100
    batches (the long tier runs for an hour or more)."""
    total = Result()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for i, seed in enumerate(seeds):
            opts = dict(options)
            batch = make_batch(seed, n_graphs)
            if opts.pop("export", False):
                opts["export_dir"] = tmp
            total.add(check_batch(batch, **opts))
            if progress is not None and (i + 1) % 100 == 0:
                print(f"  {total.graphs} graphs, {len(total.failures)} mismatches, "
                      f"{time.time() - t0:.0f} s", file=progress, flush=True)
    return total


# --- calls: malformed, unusual, guarded --------------------------------------------------------

def call_targets():
    """A few compiled functions to call badly: declared, undeclared, multi-output."""
    x = sg.Variable("x", (3, 4), "float64")
    n = sg.Variable("n", (4,), "int32")
    u, w = sg.Variable("u"), sg.Variable("w")
    return [
        (sg.compile({"y": sg.exp(x) * 2 + n, "s": x.sum(axis=0)}), {"x": ((3, 4), "float64"),
                                                                   "n": ((4,), "int32")}),
        (sg.compile(u * 2 + w, inputs=[u, w]), None),
        (sg.compile(sg.exp(x) * 2 + n), None),  # one output: out= can go native
    ]


class _NotArray:
    def __array__(self, *a, **k):
        raise RuntimeError("nope")


BAD_VALUES = [None, "text", b"bytes", object(), _NotArray(), {"a": 1}, [1, [2, 3]],
              np.array(["a", "b"]), np.array([1 + 2j]), np.zeros(3, np.float16),
              np.zeros(3, np.uint8), np.zeros(3, "datetime64[s]"), np.array([object()]),
              2 ** 70, sg.Variable("sym")]


def bad_calls(n_calls, seed=0):
    """(calls made, SymgraphErrors, other exceptions as strings) for `n_calls` malformed calls;
    every call must raise a SymgraphError."""
    rng = np.random.default_rng(seed)
    (f, sig), (g, _), (h, _) = call_targets()
    good = {k: np.zeros(s, d) for k, (s, d) in sig.items()}
    cases = []
    for k in sig:
        for bad in BAD_VALUES:
            cases.append((f, dict(good, **{k: bad}), {}))
        for shape in [(), (3,), (4, 3), (3, 5), (0, 4), (3, 4, 1), (0,)]:
            if shape == sig[k][0]:
                continue
            if math.prod(shape) > 10 ** 6:
                shape = (2 ** 28, 2 ** 28)  # mismatched and huge: rejected before allocating
                cases.append((f, dict(good, **{k: np.lib.stride_tricks.as_strided(
                    np.zeros(1, sig[k][1]), shape, (0, 0))}), {}))
            else:
                cases.append((f, dict(good, **{k: np.zeros(shape, sig[k][1])}), {}))
        for dtype in ["float32", "int64", "bool"]:
            if dtype != sig[k][1]:
                cases.append((f, dict(good, **{k: np.zeros(sig[k][0], dtype)}), {}))
    cases.append((f, {"x": good["x"]}, {}))  # missing
    cases.append((f, dict(good, z=1), {}))  # unknown
    cases.append((f, dict(good), {"out": {"y": np.zeros((3, 4)), "s": np.zeros(3)}}))
    cases.append((f, dict(good), {"out": {"y": np.zeros((3, 4), np.float32), "s": np.zeros(4)}}))
    cases.append((f, dict(good), {"out": {"y": np.zeros((3, 4))}}))
    cases.append((f, dict(good), {"out": [np.zeros((3, 4)), np.zeros(4)]}))
    cases.append((f, dict(good), {"out": {"y": "no", "s": np.zeros(4)}}))
    ro = np.zeros(4)
    ro.flags.writeable = False
    cases.append((f, dict(good), {"out": {"y": np.zeros((3, 4)), "s": ro}}))
    ro = np.zeros((3, 4))
    ro.flags.writeable = False
    for bad_out in [np.zeros((3, 4), np.float32), np.zeros((4, 3)), np.zeros(12), ro, "no",
                    [np.zeros((3, 4))], np.zeros((3, 4), ">f8"), np.zeros((3, 4, 1)),
                    np.zeros((3, 4), np.int64), np.zeros((), np.float64)]:
        cases.append((h, dict(good), {"out": bad_out}))
    cases.append((g, {"u": np.zeros(3), "w": np.zeros(4)}, {}))  # shapes do not broadcast
    cases.append((g, {"u": np.zeros(3), "w": "x"}, {}))
    errors, other = 0, []
    for i in range(n_calls):
        fn, kwargs, extra = cases[int(rng.integers(len(cases)))]
        positional = rng.random() < 0.2 and fn is f and not extra and set(kwargs) == set(sig)
        try:
            if positional:
                fn(*[kwargs[k] for k in fn.inputs])
            else:
                fn(**kwargs, **extra)
            other.append(f"no error for {sorted(kwargs)} {list(extra)}")
        except sg.SymgraphError:
            errors += 1
        except Exception as exc:  # noqa: BLE001
            other.append(f"{type(exc).__name__}: {exc}")
    return n_calls, errors, other


def unusual_calls():
    """Valid but unusual arguments: mismatches against numpy (a list, empty when all pass)."""
    u, w = sg.Variable("u"), sg.Variable("w")
    f = sg.compile(u * 2 + w, inputs=[u, w])
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    cases = [
        (base[:, ::2], 1.5), (base[::-1, ::-2], base[::-1, ::-2]), (base.T, 2), ([1, 2, 3], 0.5),
        (3, 4), (True, 2.5), (np.float32(2), 1), (base[1:3, 1:4], base[1:3, 1:4].copy(order="F")),
        (np.asfortranarray(base), base), (base.astype(">f8"), 1.0),
    ]
    problems = []
    for a, b in cases:
        want = sg.evaluate(u * 2 + w, u=np.asarray(a), w=np.asarray(b))
        got = f(a, b)
        if bitwise(got, want):
            problems.append(f"mismatch for {np.asarray(a).shape} strides")
    # out= overlapping an input, and out= being the input itself
    x = np.arange(6.0)
    want = sg.evaluate(u * 2 + w, u=x.copy(), w=x.copy())
    got = f(x, x, out=x)
    if got is not x or bitwise(x, want):
        problems.append("out= aliasing an input")
    y = np.arange(8.0)
    want = sg.evaluate(u * 2 + w, u=y[1:7].copy(), w=y[:6].copy())
    f(y[1:7], y[:6], out=y[:6])
    if bitwise(y[:6], want):
        problems.append("out= overlapping an input")
    return len(cases) + 2, problems


def thread_check(n_threads=8, calls=10_000):
    """(planned buffers, intermediates, calls, differing results) for one function called
    from `n_threads` threads at once, against a single-threaded run."""
    import threading

    x = sg.Variable("x", (64,), "float64")
    a = sg.sum(sg.exp(x) * x, axis=0, keepdims=True) + x
    b = sg.max(a * 2, axis=0, keepdims=True) - a
    f = sg.compile((b * a).sum() + sg.sum(sg.sqrt(sg.abs(b))))
    plan = f.memory_plan
    data = [np.random.default_rng(i).standard_normal(64) for i in range(16)]
    want = [f(d) for d in data]
    bad = []

    def worker(t):
        for i in range(calls):
            k = (i + t) % len(data)
            if f(data[k]).tobytes() != want[k].tobytes():
                bad.append((t, i))
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return plan, n_threads * calls, len(bad)


def rss_bytes():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def leak_check(calls=1_000_000, compiles=1_000):
    """(RSS growth over `calls` calls, RSS growth over compiling and dropping functions)."""
    import gc

    x = sg.Variable("x", (4,), "float32")
    f = sg.compile(x * 2 + 1)
    a = np.ones(4, np.float32)
    for _ in range(20_000):
        f(a)
    before = rss_bytes()
    for _ in range(calls):
        f(a)
    grow_calls = rss_bytes() - before
    sizes = []
    for i in range(compiles):
        g = sg.compile(x * float(i % 7) + 1, name=f"leak{i % 3}")
        g(a)
        del g
        if i % max(compiles // 4, 1) == 0:
            gc.collect()
            sizes.append(rss_bytes())
    return grow_calls, sizes
