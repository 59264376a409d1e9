"""Hypothesis strategies for random expression graphs and their inputs.

A graph grows from a few Variables by applying random ops (elementwise with broadcasting
and weak scalars, reductions, movement, casts, where, concatenate, matmul) to values
already built. Variables declare their shape and dtype, so the frontend types each new
node at once; an op the types do not allow raises a SymgraphError and is simply not
added. Half the time the graph is then rebuilt over undeclared Variables (see
`Generated.undeclared`), so specialization from call arguments is exercised too.

Each value records how exact it is. Integer and boolean results, and float results of
correctly rounded operations (+ - * / sqrt, casts, comparisons...), are bit-exact between
compiled code and the interpreter. Transcendental functions (a few ULPs) and float
sums (summation order) are not: such "approximate" values only flow into operations that
do not amplify an error or turn it into a different discrete answer (movement, neg, abs,
maximum/minimum, max/min reductions, widening casts); their tolerance travels with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st

import symgraph as sg
from symgraph.frontend import apply

DTYPE_NAMES = ("bool", "int32", "int64", "float32", "float64")


@dataclass
class Value:
    expr: object  # built over declared Variables (typed as it is built)
    free: object  # the same computation over undeclared Variables
    open: object = None  # and over Variables whose every axis is open (shape (None, ...))
    rtol: float = 0.0  # relative tolerance of an approximate value, 0 when exact
    sums: tuple = ()  # ((exprs...), terms): absolute error ~ prod(max |expr|) * terms * eps

    @property
    def exact(self):
        return self.rtol == 0.0 and not self.sums

    @property
    def shape(self):
        return self.expr.shape

    @property
    def dtype(self):
        return self.expr.dtype


def _apply(build, *operands, rtol=0.0, sums=()):
    """`build` over the declared and over the undeclared twins of the operands."""
    return Value(build(*[o.expr for o in operands]), build(*[o.free for o in operands]),
                 build(*[o.open for o in operands]), rtol, sums)


@dataclass
class Generated:
    variables: list  # (declared, undeclared, open-axes) triples
    inputs: dict
    outputs: list = field(default_factory=list)  # Values
    ops: list = field(default_factory=list)  # readable log of what was built


def _small_shapes():
    dims = st.sampled_from([0, 1, 1, 2, 3, 4])
    return st.lists(dims, min_size=0, max_size=3).map(tuple)


def _broadcastable_variant(draw, base):
    """A shape that broadcasts against `base`: leading axes dropped, some sizes set to 1."""
    drop = draw(st.integers(0, len(base)))
    shape = list(base[drop:])
    for i in range(len(shape)):
        if draw(st.booleans()) and draw(st.booleans()):
            shape[i] = 1
    return tuple(shape)


def _edge_pool(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return [True, False]
    if dtype.kind == "i":
        info = np.iinfo(dtype)
        return [0, 1, -1, 2, -3, 7, info.max, info.min, info.min + 1]
    info = np.finfo(dtype)
    # No huge finite values: float sums of them overflow or not depending on the order.
    return [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5, float(info.smallest_subnormal),
            -float(info.tiny), 3.0]


def arrays(dtype, shape):
    """Arrays of `dtype` and `shape` with ordinary values and edge values mixed in."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        element = st.booleans()
    elif dtype.kind == "i":
        element = st.one_of(st.integers(-20, 20), st.sampled_from(_edge_pool(dtype)))
    else:
        width = 32 if dtype == np.float32 else 64
        element = st.one_of(st.floats(-50, 50, width=width), st.sampled_from(_edge_pool(dtype)))
    size = math.prod(shape)
    return st.lists(element, min_size=size, max_size=size).map(
        lambda xs: np.array(xs, dtype=dtype).reshape(shape))


BINARY = ["add", "sub", "mul", "div", "floordiv", "mod", "pow", "maximum", "minimum", "lt",
          "le", "gt", "ge", "eq", "ne", "and", "or", "xor"]
UNARY_EXACT = ["neg", "abs", "sqrt", "floor", "invert", "relu"]
UNARY_APPROX = ["exp", "log", "sin", "cos", "tanh", "sigmoid", "expm1", "log1p"]
NON_AMPLIFYING = {"neg", "abs", "maximum", "minimum", "relu"}
KINDS = ["binary", "binary", "binary", "scalar", "unary", "unary", "approx", "reduce", "reduce",
         "movement", "movement", "cast", "where", "concat", "matmul"]


def _binary(name, a, b):
    """Apply the binary op registered as `name` (symbolically, or eagerly on arrays)."""
    return apply(name, a, b)


def _unary(name, a):
    """Apply the unary op registered as `name` (relu is a frontend function, not an op)."""
    return sg.relu(a) if name == "relu" else apply(name, a)


def _merge(*values, rtol=0.0):
    return max([rtol] + [v.rtol for v in values]), tuple(s for v in values for s in v.sums)


def _transcendental_rtol(dtype):
    return 1e-5 if np.dtype(dtype) == np.float32 else 1e-12


def _approx_pow(name, value):
    """Float pow comes from the math library: a few ULPs, like the transcendental functions."""
    if name == "pow" and value.dtype.kind == "f":
        value.rtol = max(value.rtol, _transcendental_rtol(value.dtype))
    return value


def _step(draw, pool, log):
    """Apply one random op to values in the pool; returns a new Value or None."""
    kind = draw(st.sampled_from(KINDS))
    a = draw(st.sampled_from(pool))
    if kind == "binary":
        b = draw(st.sampled_from(pool))
        name = draw(st.sampled_from(BINARY))
        if draw(st.booleans()):
            a, b = b, a
        if not (a.exact and b.exact) and name not in NON_AMPLIFYING:
            return None
        if name == "pow" and a.dtype.kind in "ib" and b.dtype.kind == "i":
            b = _apply(lambda e: e & 3, b)  # no negative integer powers
        log.append(f"{name}({a.shape}/{a.dtype}, {b.shape}/{b.dtype})")
        rtol, sums = _merge(a, b)
        value = _apply(lambda x, y: _binary(name, x, y), a, b, rtol=rtol, sums=sums)
        return _approx_pow(name, value)
    if kind == "scalar":
        if not a.exact:
            return None
        name = draw(st.sampled_from(["add", "sub", "mul", "div", "floordiv", "mod", "maximum",
                                     "minimum", "lt", "eq", "pow"]))
        scalar = draw(st.sampled_from([0, 1, 2, -3, 1.5, -0.25, True, False, 0.0, 1e10]))
        if name == "pow":
            scalar = draw(st.sampled_from([0, 1, 2, 3, 0.5, 2.0]))
        flip = draw(st.booleans()) and name != "pow"
        log.append(f"{name}({scalar!r}, x)" if flip else f"{name}(x, {scalar!r})")
        value = _apply(lambda x: _binary(name, scalar, x) if flip else _binary(name, x, scalar), a)
        return _approx_pow(name, value)
    if kind == "unary":
        name = draw(st.sampled_from(UNARY_EXACT))
        if not a.exact and name not in NON_AMPLIFYING:
            return None
        log.append(f"{name}({a.shape}/{a.dtype})")
        return _apply(lambda x: _unary(name, x), a, rtol=a.rtol, sums=a.sums)
    if kind == "approx":
        if not a.exact:
            return None
        name = draw(st.sampled_from(UNARY_APPROX))
        # Moderate arguments: huge ones (argument reduction) are test_ops' edge values.
        if a.dtype == np.bool_:
            value = _apply(lambda x: _unary(name, x.astype("float32")), a)
        else:
            value = _apply(lambda x: _unary(name, sg.clip(x, -1e4, 1e4)), a)
        log.append(f"{name}({a.shape}/{a.dtype})")
        if value.dtype.kind == "f":
            value.rtol = _transcendental_rtol(value.dtype)
        return value
    if kind == "reduce":
        name = draw(st.sampled_from(["sum", "mean", "max", "min"]))
        ndim = len(a.shape)
        axis = draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1) if ndim else st.none(),
                              st.lists(st.integers(0, max(ndim - 1, 0)), min_size=1, max_size=ndim,
                                       unique=True).map(tuple) if ndim else st.none()))
        keepdims = draw(st.booleans())
        if name in ("sum", "mean") and not a.exact:
            return None
        value = _apply(lambda x: getattr(sg, name)(x, axis=axis, keepdims=keepdims), a,
                       rtol=a.rtol, sums=a.sums)
        log.append(f"{name}({a.shape}/{a.dtype}, axis={axis}, keepdims={keepdims})")
        if name in ("sum", "mean") and value.dtype.kind == "f":
            terms = max(math.prod(a.shape) // max(math.prod(value.shape), 1), 1)
            value.sums = a.sums + (((a.expr,), terms),)
        return value
    if kind == "movement":
        shape = a.shape
        move = draw(st.sampled_from(["transpose", "reshape", "slice", "index", "broadcast"]))
        if move == "transpose":
            perm = tuple(draw(st.permutations(range(len(shape)))))
            build = lambda x: sg.transpose(x, perm)  # noqa: E731
        elif move == "reshape":
            size = math.prod(shape)
            target = draw(st.sampled_from([(-1,), (size,) if size else (0, 1), (1, -1) if size else (1, 0),
                                           (-1, 1), shape[::-1] if math.prod(shape[::-1]) == size else (-1,)]))
            build = lambda x: sg.reshape(x, target)  # noqa: E731
        elif move in ("slice", "index"):
            key = []
            for d in shape:
                if move == "index" and d and draw(st.booleans()):
                    key.append(draw(st.integers(-d, d - 1)))
                    move = "slice"
                    continue
                start = draw(st.one_of(st.none(), st.integers(-d - 1, d + 1)))
                stop = draw(st.one_of(st.none(), st.integers(-d - 1, d + 1)))
                step = draw(st.sampled_from([None, 1, 2, -1, -2, 3]))
                key.append(slice(start, stop, step))
            key = tuple(key)
            build = lambda x: x[key]  # noqa: E731
        else:
            extra = draw(st.sampled_from([(), (2,), (1,), (0,)]))
            build = lambda x: sg.broadcast_to(x, extra + tuple(shape))  # noqa: E731
        value = _apply(build, a, rtol=a.rtol, sums=a.sums)
        log.append(f"{move}({shape}) -> {value.shape}")
        return value
    if kind == "cast":
        target = draw(st.sampled_from(DTYPE_NAMES))
        widening = (a.dtype.kind == "f" and np.dtype(target).kind == "f"
                    and np.dtype(target).itemsize >= a.dtype.itemsize)
        if not a.exact and not widening:
            return None
        log.append(f"astype({a.dtype} -> {target})")
        rtol = max(a.rtol, 1e-7) if not a.exact else 0.0
        return _apply(lambda x: x.astype(target), a, rtol=rtol, sums=a.sums)
    if kind == "where":
        c = draw(st.sampled_from(pool))
        b = draw(st.sampled_from(pool))
        if not c.exact:
            return None
        is_bool = c.dtype == np.bool_
        log.append(f"where({c.shape}, {a.shape}/{a.dtype}, ...)")
        if draw(st.booleans()):
            rtol, sums = _merge(a, b)
            return _apply(lambda k, x, y: sg.where(k if is_bool else k > 0, x, y), c, a, b,
                          rtol=rtol, sums=sums)
        other = draw(st.sampled_from([0, 1.5, True, -2]))
        return _apply(lambda k, x: sg.where(k if is_bool else k > 0, x, other), c, a,
                      rtol=a.rtol, sums=a.sums)
    if kind == "concat":
        if not a.shape:
            return None
        b = draw(st.sampled_from(pool))
        axis = draw(st.integers(-len(a.shape), len(a.shape) - 1))
        log.append(f"concat({a.shape}, {b.shape}, axis={axis})")
        rtol, sums = _merge(a, b)
        return _apply(lambda x, y: sg.concatenate([x, y], axis=axis), a, b, rtol=rtol, sums=sums)
    if kind == "matmul":
        if not a.exact or len(a.shape) == 0:
            return None
        b = draw(st.sampled_from(pool))
        if not b.exact:
            return None
        if len(b.shape) >= 1 and b.shape[-1 if len(b.shape) == 1 else -2] == a.shape[-1]:
            build, other = (lambda x, y: x @ y), b
        elif len(a.shape) == 2:
            build, other = (lambda x, y: x @ x.T), a
        else:
            build, other = (lambda x, y: x @ x), a
        value = _apply(build, a, other)
        log.append(f"matmul({a.shape}, {other.shape}) -> {value.shape}")
        if value.dtype.kind == "f":
            value.sums = (((a.expr, other.expr), max(a.shape[-1], 1)),)
        return value
    return None


@st.composite
def graphs(draw, max_inputs=3, max_steps=6):
    """A random expression graph over 1..max_inputs declared Variables, with inputs."""
    base = draw(_small_shapes())
    n_inputs = draw(st.integers(1, max_inputs))
    variables, inputs, pool = [], {}, []
    for i in range(n_inputs):
        shape = _broadcastable_variant(draw, base)
        dtype = draw(st.sampled_from(DTYPE_NAMES))
        v = sg.Variable(f"in{i}", shape=shape, dtype=dtype)
        variables.append((v, sg.Variable(f"in{i}"),
                          sg.Variable(f"in{i}", shape=(None,) * len(shape), dtype=dtype)))
        inputs[v.name] = draw(arrays(dtype, shape))
        pool.append(Value(v, variables[-1][1], variables[-1][2]))
    gen = Generated(variables, inputs)
    steps = draw(st.integers(1, max_steps))
    for _ in range(steps):
        try:
            value = _step(draw, pool, gen.ops)
        except sg.SymgraphError:
            value = None
        if value is not None:
            pool.append(value)
    built = pool[n_inputs:] or pool[:1]
    n_out = draw(st.integers(1, min(3, len(built))))
    gen.outputs = built[-n_out:]
    return gen
