"""Run compiled functions over Dask arrays, one native kernel call per chunk.

``apply(f, x=dask_array, w=numpy_array)`` returns lazy dask arrays packed like ``f``'s
outputs. Each output is planned from ``f``'s expressions:

- elementwise (with numpy broadcasting): one ``blockwise`` layer whose task calls a compiled
  kernel on the chunks; outputs of one shape share the kernel and the pass over the chunks;
- ``sum/mean/max/min`` at the output: a kernel computes the reduction of the fused body per
  chunk (``keepdims=True``), and ``dask.array.reduction`` combines the partials in a tree;
- ``matmul(body, rhs)`` with a numpy right-hand side: per row chunk, or through dask's own
  blockwise contraction when the contraction axis is chunked.

Subexpressions that use only numpy inputs are computed once, here, and enter the kernels
as whole arrays. Reductions inside the graph (softmax's max and sum) need whole axes: the
inputs are rechunked along those axes with a `RechunkWarning`. Everything else raises
`SymgraphError` naming the op: a result is either right or refused.

Kernels are compiled with ``num_threads=1`` (dask runs chunks in parallel; native calls
release the GIL). They travel to ``dask.distributed`` workers as serialized graphs, are
rebuilt once per worker process and recompile through the persistent cache.
"""
from __future__ import annotations

import functools
import hashlib
import math
import pickle
import string
import warnings

import numpy as np

try:
    import dask.array as da
except ImportError:  # pragma: no cover - exercised only without the extra
    raise ImportError("symgraph.dask needs dask: install the extra with "
                      "pip install 'symgraph[dask]' (dask[array] and distributed)") from None

from . import dtypes as dt
from .errors import ArgumentError, ShapeError, SymgraphError
from .frontend import Expr, Variable, collect, find_variables
from .frontend import max as sg_max
from .frontend import min as sg_min
from .frontend import sum as sg_sum
from .ops import get_op
from .ops.registry import normalize_axes
from .runtime.compiled import CompiledFunction, bind_arguments, compile

__all__ = ["RechunkWarning", "apply"]

REDUCTIONS = {"sum": sg_sum, "mean": sg_sum, "max": sg_max, "min": sg_min}
_COMBINE = {"sum": np.sum, "mean": np.sum, "max": np.max, "min": np.min}
_LETTERS = string.ascii_lowercase


class RechunkWarning(UserWarning):
    """An input was rechunked so that an op sees whole axes."""


# --- kernels that travel to workers ----------------------------------------------------------

_LOADED = {}  # payload digest -> CompiledFunction, one rebuild per worker process


def _load_kernel(digest, payload, names, mode, extra):
    fn = _LOADED.get(digest)
    if fn is None:
        fn = _LOADED.setdefault(digest, pickle.loads(payload))
    return _Kernel(fn, names, mode, extra, digest=digest, payload=payload)


class _Kernel:
    """The task function of a blockwise layer: calls a compiled function on chunks.

    mode "one" returns the single output, "many" a tuple, "partial" a keepdims reduction
    partial (empty chunks of max/min give the identity so they do not poison the combine).
    """

    def __init__(self, fn, names, mode, extra=None, digest=None, payload=None):
        self.fn, self.names, self.mode, self.extra = fn, tuple(names), mode, extra
        self._digest, self._payload = digest, payload
        self.__name__ = fn.name  # dask names the layer after it

    def __repr__(self):
        return f"<symgraph.dask kernel {self.fn.name}({', '.join(self.names)}) {self.mode}>"

    def _serialized(self):
        if self._payload is None:
            self._payload = pickle.dumps(self.fn)
            self._digest = hashlib.sha256(self._payload).hexdigest()
        return self._digest, self._payload

    def __reduce__(self):
        digest, payload = self._serialized()
        return _load_kernel, (digest, payload, self.names, self.mode, self.extra)

    def __dask_tokenize__(self):
        return ("symgraph-kernel", self._serialized()[0], self.names, self.mode, self.extra)

    def __call__(self, *blocks):
        if self.mode == "partial":
            empty = self._empty_partial(blocks)
            if empty is not None:
                return empty
        return self.fn(**dict(zip(self.names, blocks)))

    def _empty_partial(self, blocks):
        op, axes, ndim, dtype = self.extra
        full = np.broadcast_shapes(*(np.shape(b) for b in blocks))
        shape = full[len(full) - ndim:]  # the body's block (leading axes may be reduced)
        if op not in ("max", "min") or all(shape[a] for a in axes):
            return None
        out = tuple(1 if i in axes else d for i, d in enumerate(shape))
        return np.full(out, _identity(op, np.dtype(dtype)), dtype=dtype)


def _identity(op, dtype):
    if dtype.kind == "f":
        return -np.inf if op == "max" else np.inf
    if dtype.kind == "b":
        return op != "max"
    info = np.iinfo(dtype)
    return info.min if op == "max" else info.max


def _pick(value, i):
    return value[i]


def _keep(x, axis=None, keepdims=True):
    return x


def _mean_aggregate(x, axis=None, keepdims=False, count=1, dtype=None):
    total = np.sum(x, axis=axis, keepdims=keepdims)
    return np.asarray(np.true_divide(total, count)).astype(dtype)


# --- analysis ------------------------------------------------------------------------------

class _Analysis:
    """Types of every expression, which ones depend on dask inputs, and their frames.

    A frame lists, per dimension, the broadcast axis it belongs to, counted from the right
    (-1 is the last axis), the way numpy aligns operands. An expression is blockwise-safe
    when its frame is right-aligned; `whole` collects axes some op needs unchunked.
    """

    def __init__(self, exprs, values):
        self.values = values
        self.types, self.chunked, self.frame = {}, {}, {}
        for e in collect(exprs):
            self.types[id(e)] = self._type(e)
            self.chunked[id(e)] = (isinstance(values.get(e.attrs.get("name")), da.Array)
                                   if e.op == "var" else any(self.chunked[id(a)] for a in e.args))

    def _type(self, e):
        if e.op == "var":
            v = self.values[e.attrs["name"]]
            if isinstance(v, da.Array):
                return tuple(v.shape), v.dtype
            return np.shape(v), np.asarray(v).dtype if not _is_weak(v) else dt.weak_type(v)
        if e.op == "scalar":
            return (), dt.weak_type(e.attrs["value"])
        if e.op == "const":
            return e.attrs["value"].shape, e.attrs["value"].dtype
        typing = get_op(e.op).infer([self.types[id(a)] for a in e.args], e.attrs)
        if isinstance(typing.dtype, tuple) or isinstance(typing.shape, list):
            raise SymgraphError(f"symgraph.dask cannot run {e.op!r} on dask arrays",
                                locs=(e.loc,))
        return tuple(typing.shape), typing.dtype

    def shape(self, e):
        return self.types[id(e)][0]

    def dtype(self, e):
        return np.dtype(self.types[id(e)][1])

    def frames(self, root):
        """(frame of root, axes needing whole chunks) for the dask-dependent part under
        root; raises for ops that cannot run chunk by chunk."""
        whole = set()
        frames = {}
        for e in collect([root]):
            if not self.chunked[id(e)]:
                frames[id(e)] = _aligned(len(self.shape(e)))
                continue
            frames[id(e)] = self._frame(e, frames, whole)
        return frames[id(root)], whole

    def _frame(self, e, frames, whole):
        ndim = len(self.shape(e))
        if e.op == "var":
            return _aligned(ndim)
        kind = get_op(e.op).kind
        if kind == "elementwise":
            for a in e.args:
                if self.chunked[id(a)] and frames[id(a)] != _aligned(len(self.shape(a))):
                    raise _refuse(e, f"an operand of {e.op!r} comes from a reduction that "
                                  "dropped inner axes (keepdims=False)",
                                  "reduce with keepdims=True inside the graph, or make the "
                                  "reduction an output")
            return _aligned(ndim)
        if kind == "reduce":
            (x,) = e.args
            src = frames[id(x)]
            axes = normalize_axes(e.op, e.attrs.get("axes"), len(src))
            whole.update(src[a] for a in axes)
            if e.attrs.get("keepdims"):
                return src
            return tuple(f for i, f in enumerate(src) if i not in axes)
        raise _refuse(e, f"{e.op!r} ({kind}) on a dask-backed value cannot run chunk by chunk",
                      "symgraph.dask runs elementwise ops, reductions and a final matmul "
                      "against a numpy right-hand side")


def _is_weak(v):
    return isinstance(v, (bool, int, float)) and not isinstance(v, np.generic)


def _aligned(ndim):
    return tuple(range(-ndim, 0))


def _refuse(e, why, hint=None):
    return SymgraphError(f"symgraph.dask: {why}", locs=(e.loc,) if e.loc else (), hint=hint)


# --- planning and building ----------------------------------------------------------------------

def _bind(f, args, kwargs):
    values = dict(zip(f.inputs, bind_arguments(f.name, f.inputs, args, kwargs)))
    for name, v in values.items():
        if isinstance(v, da.Array):
            if any(math.isnan(c) for cs in v.chunks for c in cs):
                raise ArgumentError(f"input {name!r} has unknown chunk sizes",
                                    hint="call .compute_chunk_sizes() on it first")
        elif not _is_weak(v):
            values[name] = np.asarray(v)
    return values


def _substitute(exprs, mapping):
    """Exprs rebuilt with some subexpressions (by id) replaced by others."""
    new = {}
    for e in collect(exprs):
        if id(e) in mapping:
            new[id(e)] = mapping[id(e)]
        elif e.args and any(new[id(a)] is not a for a in e.args):
            new[id(e)] = Expr(e.op, [new[id(a)] for a in e.args], e.attrs, name=e.name, loc=e.loc)
        else:
            new[id(e)] = e
    return [new[id(e)] for e in exprs]


def _precompute(f, exprs, values):
    """Evaluate the numpy-only subexpressions feeding dask-dependent ones once, replacing each
    by a new input; outputs that use no dask input are computed whole."""
    info = _Analysis(exprs, values)
    frontier = {}
    for e in collect(exprs):
        if info.chunked[id(e)]:
            for a in e.args:
                if not info.chunked[id(a)] and a.args:
                    frontier[id(a)] = a
    for e in exprs:
        if not info.chunked[id(e)] and e.op not in ("var", "const", "scalar"):
            frontier[id(e)] = e
    if not frontier:
        return exprs
    todo = list(frontier.values())
    used = find_variables(todo)
    fn = compile(todo, inputs=used, opt_level=f.opt_level, disable=f.disable)
    results = fn(**{v.attrs["name"]: values[v.attrs["name"]] for v in used})
    mapping = {}
    for i, (e, r) in enumerate(zip(todo, results)):
        name = f"_sg_pre{i}"
        while name in values:
            name += "_"
        values[name] = np.asarray(r)
        mapping[id(e)] = Variable(name)
    return _substitute(exprs, mapping)


class _Builder:
    def __init__(self, f, values, split_every):
        self.f, self.values, self.split_every = f, values, split_every
        self.warned = set()

    def kernel(self, outs, mode, extra=None):
        used = find_variables(outs)
        fn = compile(list(outs) if mode == "many" else outs[0], inputs=used,
                     opt_level=self.f.opt_level, disable=self.f.disable, num_threads=1,
                     name=f"{self.f.name}_chunk")
        return _Kernel(fn, [v.attrs["name"] for v in used], mode, extra), used

    def operands(self, used, info, width, whole, skip=()):
        """blockwise (array, index) pairs: each input right-aligned in a frame of `width`
        axes, dask inputs rechunked whole along the axes in `whole`."""
        pairs = []
        for v in used:
            name = v.attrs["name"]
            value = self.values[name]
            if name in skip or np.ndim(value) == 0:
                pairs += [value, None]
                continue
            ndim = value.ndim
            if isinstance(value, da.Array):
                value = self._rechunk(name, value, whole, info)
            pairs += [value, _LETTERS[width - ndim:width]]
        return pairs

    def _rechunk(self, name, value, whole, info):
        axes = {value.ndim + a for a in whole if -value.ndim <= a}
        axes = sorted(a for a in axes if value.numblocks[a] > 1)
        if not axes:
            return value
        if (name, tuple(axes)) not in self.warned:
            self.warned.add((name, tuple(axes)))
            warnings.warn(f"symgraph.dask: a reduction inside the graph needs whole axes; "
                          f"rechunking input {name!r} into one chunk along axis "
                          f"{', '.join(map(str, axes))} (shape {value.shape})",
                          RechunkWarning, stacklevel=4)
        return value.rechunk({a: -1 for a in axes})

    def width(self, used, ndim):
        return max([ndim] + [np.ndim(self.values[v.attrs["name"]]) for v in used])

    def elementwise(self, outs, info):
        whole = set()
        for e in outs:
            frame, w = info.frames(e)
            if frame != _aligned(len(info.shape(e))):
                raise _refuse(e, f"the output {e.op!r} drops inner axes mid-graph")
            whole |= w
        ndim = len(info.shape(outs[0]))
        mode = "one" if len(outs) == 1 else "many"
        kernel, used = self.kernel(outs, mode)
        width = self.width(used, ndim)
        out_ind = _LETTERS[width - ndim:width]
        args = self.operands(used, info, width, whole)
        if mode == "one":
            dtype = info.dtype(outs[0])
            y = da.blockwise(kernel, out_ind, *args, dtype=dtype, concatenate=True,
                             meta=np.empty((0,) * ndim, dtype))
            return [self._check_shape(y, outs[0], info)]
        tmp = da.blockwise(kernel, out_ind, *args, dtype=object, concatenate=True,
                           meta=np.empty((0,) * ndim, object))
        results = []
        for i, e in enumerate(outs):
            dtype = info.dtype(e)
            y = tmp.map_blocks(_pick, i, dtype=dtype, meta=np.empty((0,) * ndim, dtype))
            results.append(self._check_shape(y, e, info))
        return results

    def reduction(self, e, info):
        (body,) = e.args
        frame, whole = info.frames(body)
        if frame != _aligned(len(info.shape(body))):
            raise _refuse(e, f"the operand of the output {e.op!r} drops inner axes mid-graph")
        ndim = len(info.shape(body))
        axes = normalize_axes(e.op, e.attrs.get("axes"), ndim)
        keepdims = bool(e.attrs.get("keepdims"))
        partial = REDUCTIONS[e.op](body, axis=axes, keepdims=True)
        pinfo = _Analysis([partial], self.values)
        pdtype = pinfo.dtype(partial)
        kernel, used = self.kernel([partial], "partial", (e.op, axes, ndim, pdtype.str))
        width = self.width(used, ndim)
        out_ind = _LETTERS[width - ndim:width]
        args = self.operands(used, info, width, whole)
        tmp = da.blockwise(kernel, out_ind, *args, dtype=pdtype, concatenate=True,
                           adjust_chunks={out_ind[a]: 1 for a in axes},
                           meta=np.empty((0,) * ndim, pdtype))
        dtype = info.dtype(e)
        if e.op == "mean":
            count = math.prod(info.shape(body)[a] for a in axes)
            aggregate = functools.partial(_mean_aggregate, count=count, dtype=dtype)
        else:
            aggregate = _COMBINE[e.op]
        out_ndim = ndim if keepdims else ndim - len(axes)
        y = da.reduction(tmp, _keep, aggregate, axis=axes, keepdims=keepdims, dtype=dtype,
                         combine=_COMBINE[e.op], split_every=self.split_every, concatenate=True,
                         meta=np.empty((0,) * out_ndim, dtype))
        return self._check_shape(y, e, info)

    def matmul(self, e, info):
        lhs, rhs = e.args
        if len(info.shape(lhs)) != 2 or len(info.shape(rhs)) not in (1, 2):
            raise _refuse(e, "matmul over dask arrays needs a 2-d dask-backed left operand "
                          "and a 1-d or 2-d numpy right-hand side")
        (left,) = self.elementwise([lhs], info)
        if left.numblocks[1] > 1:
            # A chunked contraction axis: dask's blockwise contraction and a final sum.
            right = self._numpy_value(rhs)
            y = da.matmul(left, right)
            return self._check_shape(y.astype(info.dtype(e), copy=False), e, info)
        _, whole = info.frames(lhs)
        kernel, used = self.kernel([e], "one")
        rhs_names = {v.attrs["name"] for v in find_variables([rhs])}
        width = self.width([v for v in used if v.attrs["name"] not in rhs_names], 2)
        args = self.operands(used, info, width, whole, skip=rhs_names)
        out_ind = _LETTERS[width - 2:width - 1] + ("z" if len(info.shape(rhs)) == 2 else "")
        dtype = info.dtype(e)
        new_axes = {"z": info.shape(rhs)[1]} if "z" in out_ind else {}
        y = da.blockwise(kernel, out_ind, *args, dtype=dtype, concatenate=True,
                         new_axes=new_axes, meta=np.empty((0,) * len(out_ind), dtype))
        return self._check_shape(y, e, info)

    def _numpy_value(self, e):
        if e.op == "var":
            return self.values[e.attrs["name"]]
        if e.op == "const":
            return e.attrs["value"]
        raise _refuse(e, "the matmul right-hand side must be a numpy input")

    @staticmethod
    def _check_shape(y, e, info):
        if tuple(y.shape) != tuple(info.shape(e)):
            raise ShapeError(f"symgraph.dask: planned shape {y.shape} differs from the "
                             f"expression's {info.shape(e)}", locs=(e.loc,) if e.loc else ())
        return y


def apply(f, *args, split_every=None, **kwargs):
    """Run compiled function `f` lazily over dask arrays (numpy arrays and scalars broadcast).

    Returns dask arrays packed like ``f``'s outputs (one array, tuple, list or dict).
    ``split_every`` is passed to dask's tree reduction. Raises SymgraphError for graphs that
    cannot run chunk by chunk; warns with RechunkWarning when inputs are rechunked.
    """
    if not isinstance(f, CompiledFunction):
        raise ArgumentError(f"symgraph.dask.apply needs a compiled function, got "
                            f"{type(f).__name__}", hint="pass symgraph.compile(expr)")
    values = _bind(f, args, kwargs)
    exprs = _precompute(f, list(f.structure.exprs), values)
    info = _Analysis(exprs, values)
    builder = _Builder(f, values, split_every)
    results = [None] * len(exprs)
    groups = {}
    for i, e in enumerate(exprs):
        if not info.chunked[id(e)]:
            results[i] = da.from_array(np.asarray(_numpy_value(e, values)))
        elif e.op in REDUCTIONS:
            results[i] = builder.reduction(e, info)
        elif e.op == "matmul" and not info.chunked[id(e.args[1])]:
            results[i] = builder.matmul(e, info)
        else:
            groups.setdefault(info.shape(e), []).append(i)
    for members in groups.values():
        for i, y in zip(members, builder.elementwise([exprs[i] for i in members], info)):
            results[i] = y
    return f.structure.pack(results)


def _numpy_value(e, values):
    if e.op == "var":
        return values[e.attrs["name"]]
    if e.op == "const":
        return e.attrs["value"]
    return np.asarray(e.attrs["value"])
