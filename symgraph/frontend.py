"""The user-facing graph builders: Variable, Constant and Expr with numpy-like operators.

Nothing computes here: each operator records a node (op, operands, attributes, the user's
source line). Shapes and dtypes are inferred at once when every operand's are known, so
mistakes surface at the line that made them; otherwise when the graph is specialized.
Every function also works eagerly on plain numpy arrays (it then runs the op's numpy
reference), so one user function can run step by step or build a graph.
"""
from __future__ import annotations

import itertools
import keyword
import operator

import numpy as np

from . import dtypes as dt
from .errors import (
    ArgumentError,
    DTypeError,
    ExecutionError,
    GraphError,
    OutOfMemory,
    ShapeError,
    SymgraphError,
    TracerBoolError,
    user_loc,
)
from .graph import add_node, new_graph, type_str
from .ops import get_op
from .ops.registry import keepdims_flag

_ids = itertools.count()
MAX_CLASSES = 1 << 24  # one_hot builds a constant of this many class numbers


class Expr:
    """A symbolic array: the result of an op on other expressions. Build graphs with
    Python operators and symgraph functions, then ``symgraph.compile`` them::

        >>> a, b = Variable("a"), Variable("b")
        >>> c = (a**2 + b**2) ** 0.5
        >>> float(c(3, 4))
        5.0
    """

    __slots__ = ("op", "args", "attrs", "loc", "name", "shape", "dtype", "id", "_compiled",
                 "__weakref__")
    __array_ufunc__ = None  # numpy defers to our reflected operators: ndarray + Expr works
    __array_priority__ = 1000

    def __init__(self, op, args=(), attrs=None, *, shape=None, dtype=None, name=None, loc=None):
        self.op = op
        self.args = tuple(args)
        self.attrs = dict(attrs or {})
        self.loc = loc if loc is not None else user_loc()
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.id = next(_ids)
        self._compiled = None

    # --- description -----------------------------------------------------------------
    @property
    def ndim(self):
        return None if self.shape is None else len(self.shape)

    def __repr__(self):
        data = {"shape": self.shape, "dtype": self.dtype if not isinstance(self.dtype, type) else None}
        where = f" at {self.loc}" if self.loc else ""
        label = f" {self.name!r}" if self.name else ""
        return f"<{type(self).__name__} {self.op}{label} : {type_str(data)}{where}>"

    def __bool__(self):
        raise TracerBoolError(
            f"the truth value of a symbolic {self.op} expression is not known until it runs",
            locs=(user_loc(), self.loc),
            hint="use symgraph.where for elementwise choices, or symgraph.cond / while_loop",
        )

    def __index__(self):
        raise TracerBoolError(f"a symbolic {self.op} expression cannot be used as a Python int",
                              locs=(user_loc(),))

    def __iter__(self):
        if self.shape is None or not self.shape:
            raise TracerBoolError("cannot iterate over an expression of unknown or 0-d shape",
                                  locs=(user_loc(),))
        return (self[i] for i in range(self.shape[0]))

    def __len__(self):
        if self.shape is None or not self.shape:
            raise TracerBoolError("len() of an expression of unknown or 0-d shape", locs=(user_loc(),))
        return self.shape[0]

    __hash__ = object.__hash__

    # --- arithmetic and comparison operators ---------------------------------------------
    def __add__(self, o): return apply("add", self, o)
    def __radd__(self, o): return apply("add", o, self)
    def __sub__(self, o): return apply("sub", self, o)
    def __rsub__(self, o): return apply("sub", o, self)
    def __mul__(self, o): return apply("mul", self, o)
    def __rmul__(self, o): return apply("mul", o, self)
    def __truediv__(self, o): return apply("div", self, o)
    def __rtruediv__(self, o): return apply("div", o, self)
    def __floordiv__(self, o): return apply("floordiv", self, o)
    def __rfloordiv__(self, o): return apply("floordiv", o, self)
    def __mod__(self, o): return apply("mod", self, o)
    def __rmod__(self, o): return apply("mod", o, self)
    def __pow__(self, o): return apply("pow", self, o)
    def __rpow__(self, o): return apply("pow", o, self)
    def __matmul__(self, o): return apply("matmul", self, o)
    def __rmatmul__(self, o): return apply("matmul", o, self)
    def __neg__(self): return apply("neg", self)
    def __pos__(self): return self
    def __abs__(self): return apply("abs", self)
    def __invert__(self): return apply("invert", self)
    def __and__(self, o): return apply("and", self, o)
    def __rand__(self, o): return apply("and", o, self)
    def __or__(self, o): return apply("or", self, o)
    def __ror__(self, o): return apply("or", o, self)
    def __xor__(self, o): return apply("xor", self, o)
    def __rxor__(self, o): return apply("xor", o, self)
    def __lt__(self, o): return apply("lt", self, o)
    def __le__(self, o): return apply("le", self, o)
    def __gt__(self, o): return apply("gt", self, o)
    def __ge__(self, o): return apply("ge", self, o)
    def __eq__(self, o): return apply("eq", self, o)  # noqa: E704  (elementwise, like numpy)
    def __ne__(self, o): return apply("ne", self, o)

    # --- array methods -------------------------------------------------------------------
    def astype(self, dtype):
        return apply("cast", self, dtype=_astype_target(dtype))

    def reshape(self, *shape):
        return reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)

    def transpose(self, *axes):
        return transpose(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None))

    @property
    def T(self):
        return transpose(self)

    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return min(self, axis, keepdims)

    def __getitem__(self, key):
        return apply("slice", self, items=_index_items(key, self.ndim))

    # --- convenience ---------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        """Compile this expression once (cached) and run it on the given inputs."""
        if self._compiled is None:
            from .runtime.compiled import compile as compile_

            self._compiled = compile_(self)
        return self._compiled(*args, **kwargs)


class Variable(Expr):
    """A named graph input. ``shape`` and ``dtype`` may be declared. An axis given as None
    (any size) or a name (any size, the same wherever the name appears, as in
    ``("batch", 512)``) is open: the compiled code serves every size there without
    recompiling, where the graph's ops allow. Undeclared, code specializes per call."""

    def __init__(self, name, shape=None, dtype=None):
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise GraphError(f"Variable name {name!r} must be a Python identifier",
                             locs=(user_loc(),))
        declared_shape = None
        if shape is not None:
            if isinstance(shape, int):
                shape = (shape,)
            try:
                declared_shape = tuple(d if d is None or isinstance(d, str) else int(d)
                                       for d in shape)
            except (TypeError, ValueError):
                raise GraphError(f"Variable {name!r}: shape {shape!r} must hold sizes, None or "
                                 "size names", locs=(user_loc(),)) from None
            if any(isinstance(d, int) and d < 0 for d in declared_shape):
                raise GraphError(f"Variable {name!r}: negative size in shape {shape}",
                                 locs=(user_loc(),))
            if any(isinstance(d, str) and not d.isidentifier() for d in declared_shape):
                raise GraphError(f"Variable {name!r}: size names in {shape} must be identifiers",
                                 locs=(user_loc(),))
        declared_dtype = None if dtype is None else dt.as_dtype(dtype, what=f"Variable {name!r} dtype")
        known_shape = declared_shape if declared_shape is not None and all(
            isinstance(d, int) for d in declared_shape) else None
        super().__init__("var", (), {"name": name, "shape": declared_shape, "dtype": declared_dtype},
                         shape=known_shape, dtype=declared_dtype, name=name)


class Constant(Expr):
    """A constant array (numpy conversion rules: ``Constant(1)`` is an int64 0-d array)."""

    def __init__(self, value, dtype=None, name=None):
        try:
            array = np.array(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise ArgumentError(f"Constant({value!r}) is not array-like: {exc}", locs=(user_loc(),)) from None
        array = array.astype(dt.check_supported(array.dtype, what="Constant dtype"), copy=False)
        array = np.array(array, order="C", copy=True)
        array.flags.writeable = False
        super().__init__("const", (), {"value": array}, shape=array.shape, dtype=array.dtype, name=name)


def _astype_target(dtype) -> np.dtype:
    try:
        return dt.as_dtype(dtype, what="astype target")
    except SymgraphError as exc:
        raise exc.located((user_loc(),)).with_traceback(None) from None


def _scalar(value) -> Expr:
    kind = dt.weak_type(value)
    return Expr("scalar", (), {"value": kind(value)}, shape=(), dtype=kind)


def as_expr(value) -> Expr:
    """An Expr for an operand: Python scalars stay weak (NEP 50), arrays become Constants."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
        return _scalar(value)
    if isinstance(value, (np.ndarray, np.generic, list, tuple)):
        return Constant(value)
    raise ArgumentError(f"cannot use {type(value).__name__} {value!r} in an expression",
                        locs=(user_loc(),))


def describe_operands(exprs) -> str:
    parts = []
    for i, e in enumerate(exprs):
        where = f" from {e.loc}" if e.loc else ""
        data = {"shape": e.shape, "dtype": None if isinstance(e.dtype, type) else e.dtype}
        kind = f"Python {e.dtype.__name__}" if isinstance(e.dtype, type) else type_str(data)
        parts.append(f"  operand {i}: {kind}{where}")
    return "\n".join(parts)


def apply(opname, *args, **attrs):
    """Record `opname` on the operands (eagerly computed when none is symbolic)."""
    op = get_op(opname)
    if not any(isinstance(a, Expr) for a in args):
        return _eager(op, args, attrs)
    exprs = tuple(as_expr(a) for a in args)
    loc = user_loc()
    shape = dtype = None
    if all(e.shape is not None and e.dtype is not None for e in exprs):
        try:
            typing = op.infer([(e.shape, e.dtype) for e in exprs], attrs)
        except SymgraphError as exc:
            raise exc.located((loc,), describe_operands(exprs)).with_traceback(None) from None
        shape, dtype = typing.shape, typing.dtype
    return Expr(opname, exprs, attrs, shape=shape, dtype=dtype, loc=loc)


def _eager(op, args, attrs):
    arrays = [np.asarray(a) for a in args]
    # Type-check the way compiled code would, so eager and compiled agree on errors.
    in_types = [((), dt.weak_type(a)) if isinstance(a, (bool, int, float)) and not isinstance(a, np.generic)
                else (arr.shape, dt.check_supported(arr.dtype)) for a, arr in zip(args, arrays)]
    typing = op.infer(in_types, attrs)
    converted = [arr.astype(d) if d is not None and arr.dtype != d else arr
                 for arr, d in zip(arrays, typing.in_dtypes or [None] * len(arrays))]
    try:
        with np.errstate(all="ignore"):
            result = op.reference(*converted, **(typing.attrs or attrs))
        return np.asarray(result).astype(typing.dtype, copy=False)
    except (TypeError, ValueError, ArithmeticError) as exc:  # numpy's own refusal
        error = DTypeError if isinstance(exc, TypeError) else ExecutionError
        raise error(f"{op.name}: {exc}", locs=(user_loc(),)) from None
    except MemoryError:
        raise OutOfMemory(f"{op.name}: its result of shape {typing.shape} does not fit in "
                          "memory", locs=(user_loc(),)) from None


def _index_items(key, ndim):
    """Basic indexing (ints, slices, one Ellipsis) as per-axis items for the slice op."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        if ndim is None:
            raise GraphError("indexing with ... needs a known rank; declare the Variable's shape",
                             locs=(user_loc(),))
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (ndim - len(key) + 1)
        key = key[:at] + fill + key[at + 1:]
    items = []
    for k in key:
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            items.append(("int", int(k)))
        elif isinstance(k, slice):
            parts = [None if v is None else operator.index(v) for v in (k.start, k.stop, k.step)]
            items.append(("slice", *parts))
        else:
            raise GraphError(f"unsupported index {k!r}: only integers, slices and ... are supported",
                             locs=(user_loc(),), hint="use symgraph.where for masks")
    return tuple(items)


# --- functions (work on Exprs and, eagerly, on numpy arrays) ---------------------------------

def _unary(name):
    def fn(x):
        return apply(name, x)

    fn.__name__ = name
    fn.__doc__ = f"Elementwise {name}, on expressions or eagerly on arrays."
    return fn


exp, exp2, expm1, log, log2, log10, log1p = map(_unary, ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p"])
sin, cos, tan, sinh, cosh, tanh = map(_unary, ["sin", "cos", "tan", "sinh", "cosh", "tanh"])
sqrt, sigmoid, floor, negative = map(_unary, ["sqrt", "sigmoid", "floor", "neg"])
absolute = _unary("abs")
logical_not = _unary("invert")


def maximum(a, b):
    """Elementwise maximum; NaN propagates, as in numpy."""
    return apply("maximum", a, b)


def minimum(a, b):
    """Elementwise minimum; NaN propagates, as in numpy."""
    return apply("minimum", a, b)


def relu(x):
    """max(x, 0) elementwise (NaN stays NaN)."""
    return apply("maximum", x, 0)


def clip(x, lo, hi):
    """Limit values to [lo, hi], as numpy.clip."""
    return minimum(maximum(x, lo), hi)


def where(cond, x, y):
    """x where cond is true, else y (broadcast together)."""
    return apply("where", cond, x, y)


def astype(x, dtype):
    """Convert to `dtype` with numpy's astype semantics."""
    return apply("cast", x, dtype=_astype_target(dtype))


def sum(x, axis=None, keepdims=False):  # noqa: A001  (numpy's name)
    """Sum over `axis` (None: all); integers and bools sum in int64, as numpy."""
    return apply("sum", x, axes=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over `axis` (None: all); integers give float64, as numpy."""
    return apply("mean", x, axes=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over `axis`; NaN propagates."""
    return apply("max", x, axes=axis, keepdims=keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over `axis`; NaN propagates."""
    return apply("min", x, axes=axis, keepdims=keepdims)


def _int_arg(op, name, value):
    """An integer argument (a Python or numpy integer, not a bool) as int."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise ArgumentError(f"{op}: {name} must be an integer, got {_short(value)}",
                        locs=(user_loc(),))


def _ints_arg(op, name, value):
    """An integer or a tuple/list of integers as a tuple of ints."""
    if isinstance(value, (tuple, list)):
        return tuple(_int_arg(op, name, v) for v in value)
    return (_int_arg(op, f"{name} (an integer or a tuple of integers)", value),)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def reshape(x, shape):
    """Same elements, new shape (one -1 is inferred)."""
    return apply("reshape", x, shape=_ints_arg("reshape", "shape", shape))


def transpose(x, axes=None):
    """Permute axes (default: reverse them)."""
    return apply("transpose", x, perm=None if axes is None else _ints_arg("transpose", "axes", axes))


def broadcast_to(x, shape):
    """Repeat size-1 and leading axes to `shape`."""
    return apply("broadcast_to", x, shape=_ints_arg("broadcast_to", "shape", shape))


def concatenate(arrays, axis=0):
    """Join arrays along an existing axis."""
    if not isinstance(arrays, (tuple, list)):
        raise ArgumentError(f"concatenate takes a list or tuple of arrays, got {_short(arrays)}",
                            locs=(user_loc(),))
    return apply("concat", *arrays, axis=_int_arg("concatenate", "axis", axis))


def matmul(a, b):
    """numpy matmul (also the @ operator)."""
    return apply("matmul", a, b)


def _flat_if_no_axis(x, axis):
    return (reshape(x, (-1,)), 0) if axis is None else (x, axis)


def argmax(x, axis=None, keepdims=False):
    """Index of the first maximum (NaN counts as the maximum), as numpy.argmax."""
    keepdims = keepdims_flag("argmax", {"keepdims": keepdims})
    if axis is None and keepdims:
        raise GraphError("argmax(axis=None, keepdims=True) is not supported", locs=(user_loc(),))
    x, axis = _flat_if_no_axis(x, axis)
    return apply("argmax", x, axis=_int_arg("argmax", "axis", axis), keepdims=keepdims)


def argmin(x, axis=None, keepdims=False):
    """Index of the first minimum (NaN counts as the minimum), as numpy.argmin."""
    keepdims = keepdims_flag("argmin", {"keepdims": keepdims})
    if axis is None and keepdims:
        raise GraphError("argmin(axis=None, keepdims=True) is not supported", locs=(user_loc(),))
    x, axis = _flat_if_no_axis(x, axis)
    return apply("argmin", x, axis=_int_arg("argmin", "axis", axis), keepdims=keepdims)


def take(x, indices, axis=None):
    """Gather along `axis` (flattened when None), as numpy.take; out-of-range is an error."""
    x, axis = _flat_if_no_axis(x, axis)
    return apply("take", x, indices, axis=_int_arg("take", "axis", axis))


def one_hot(labels, num_classes, dtype="float64"):
    """``one_hot(labels, n)[..., k]`` is 1 where ``labels == k``, else 0."""
    num_classes = _int_arg("one_hot", "num_classes", num_classes)
    if not 0 <= num_classes <= MAX_CLASSES:
        raise ShapeError(f"one_hot: num_classes={num_classes} is not in [0, {MAX_CLASSES}]",
                         locs=(user_loc(),))
    classes = Constant(np.arange(num_classes, dtype=np.int64))
    hits = apply("eq", apply("reshape", labels, shape=_append_axis(labels)), classes)
    return astype(hits, dtype)


def _append_axis(x):
    """The reshape target that appends a size-1 axis: the shape plus 1, or for a Variable
    with one open axis (None or named) its declaration with -1 there."""
    shape = np.shape(x) if not isinstance(x, Expr) else x.shape
    if shape is None and isinstance(x, Expr) and x.op == "var" and x.attrs.get("shape"):
        declared = x.attrs["shape"]
        open_axes = [d for d in declared if not isinstance(d, int)]
        if len(open_axes) == 1:
            return tuple(-1 if not isinstance(d, int) else d for d in declared) + (1,)
    if shape is None:
        raise GraphError("one_hot needs labels of known shape (or a Variable with at most one "
                         "open axis); declare the Variable's shape", locs=(user_loc(),))
    return tuple(shape) + (1,)


def cross_entropy(logits, labels, axis=-1, num_classes=None):
    """Mean negative log-likelihood of integer `labels` under softmax(`logits`), computed
    through log_softmax so it stays finite for large logits. `num_classes` (the size of
    `axis`) is needed only when the logits' shape is not known while building, as with
    open (None) sizes."""
    from .ops.nn import log_softmax

    shape = logits.shape if isinstance(logits, Expr) else np.shape(logits)
    if num_classes is None:
        if shape is None:
            raise GraphError("cross_entropy needs logits of known shape, or num_classes=",
                             locs=(user_loc(),), hint="pass num_classes=K with open sizes")
        axis = _int_arg("cross_entropy", "axis", axis)
        if not -len(shape) <= axis < len(shape):
            raise ShapeError(f"cross_entropy: axis {axis} is out of range for logits of shape "
                             f"{shape}", locs=(user_loc(),))
        num_classes = shape[axis]
    # where, not a product with a one-hot mask: the result keeps the logits' dtype, and a
    # class with log-probability -inf that is not the label contributes 0, not nan.
    picked = where(one_hot(labels, num_classes, dtype=bool), log_softmax(logits, axis=axis), 0.0)
    return -mean(sum(picked, axis=axis))


# --- from expressions to a graph -------------------------------------------------------------

def collect(outputs, stop=()):
    """Every Expr the outputs depend on, in topological order (not looking past `stop`)."""
    seen, order = set(), []
    stop = {id(e) for e in stop}
    stack = [(e, False) for e in reversed(outputs)]
    while stack:
        e, expanded = stack.pop()
        if expanded:
            order.append(e)
            continue
        if id(e) in seen:
            continue
        seen.add(id(e))
        stack.append((e, True))
        if id(e) not in stop:
            stack.extend((a, False) for a in reversed(e.args) if id(a) not in seen)
    return order


def find_variables(outputs) -> list:
    """The Variables the outputs use, in creation order; duplicate names are an error."""
    found = sorted((e for e in collect(outputs) if e.op == "var"), key=lambda e: e.id)
    by_name = {}
    for v in found:
        other = by_name.setdefault(v.attrs["name"], v)
        if other is not v:
            raise GraphError(f"two different Variables are named {v.attrs['name']!r}",
                             locs=(other.loc, v.loc), hint="give each Variable its own name")
    return found


def to_graph(outputs, inputs, names=None) -> "object":
    """The untyped graph of `outputs` (Exprs) with `inputs` as its signature.

    Inputs are Variables, or (for control-flow bodies, with `names`) any Exprs, which then
    stand for values computed outside the body.
    """
    names = names or [v.attrs["name"] for v in inputs]
    g = new_graph(names)
    keys = {}
    for v, name in zip(inputs, names):
        attrs = (dict(v.attrs, name=name) if v.op == "var"
                 else {"name": name, "shape": None, "dtype": None})
        keys[id(v)] = add_node(g, "var", (), attrs, v.shape,
                               None if isinstance(v.dtype, type) else v.dtype, (v.loc,), v.name)
    for e in collect(outputs, stop=inputs):
        if id(e) in keys:
            continue
        dtype = None if isinstance(e.dtype, type) else e.dtype
        keys[id(e)] = add_node(g, e.op, [keys[id(a)] for a in e.args], e.attrs, e.shape, dtype,
                               (e.loc,), e.name)
    g.graph["outputs"] = [keys[id(o)] for o in outputs]
    return g
