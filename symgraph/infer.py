"""Specialization: shapes and dtypes for every node, given the inputs' types.

Weak Python scalars become constants of the dtype their user computes in (NEP 50), and
each op's attributes take their canonical form (axes sorted, -1 resolved, slices as
start/step/count). Errors name the op, the operands' types and the user's line.
"""
from __future__ import annotations

import numpy as np

from . import dtypes as dt
from .errors import DTypeError, ShapeError, SymgraphError
from .graph import add_node, copy_graph, set_args, topo_order, type_str
from .ops import get_op
from .ops.registry import attr_key


_TYPING_CACHE: dict = {}
_TYPING_CACHE_LIMIT = 1 << 16


def node_typing(g, node):
    """Re-run the op's rule on a typed graph: gives the dtypes its inputs are converted to.

    Rules are pure functions of (op, operand types, attributes), and passes and codegen ask
    again and again for the same ones (a chain repeats a few typings thousands of times),
    so answers are memoized; control ops, whose rules type whole bodies, are not.
    """
    d = g.nodes[node]
    op = get_op(d["op"])
    in_types = tuple((g.nodes[a]["shape"], g.nodes[a]["dtype"]) for a in d["args"])
    if op.kind == "control":
        return op.infer(list(in_types), d["attrs"])
    try:
        key = (d["op"], in_types, attr_key(d["attrs"]))
        hash(key)
    except TypeError:
        return op.infer(list(in_types), d["attrs"])
    typing = _TYPING_CACHE.get(key)
    if typing is None:
        typing = op.infer(list(in_types), d["attrs"])
        if len(_TYPING_CACHE) >= _TYPING_CACHE_LIMIT:
            _TYPING_CACHE.clear()
        _TYPING_CACHE[key] = typing
    return typing


def compute_dtype(typing):
    """The dtype a lowering computes in: its (last) converted input's, else its output's."""
    return typing.in_dtypes[-1] if typing.in_dtypes else typing.dtype


def operand_notes(g, node) -> str:
    lines = []
    for i, a in enumerate(g.nodes[node]["args"]):
        data = g.nodes[a]
        kind = (f"Python {data['dtype'].__name__}" if isinstance(data["dtype"], type)
                else type_str(data))
        where = f" from {data['loc'][0]}" if data["loc"] else ""
        lines.append(f"  operand {i}: {kind}{where}")
    return "\n".join(lines)


def check_input(name, declared_shape, declared_dtype, shape, dtype, loc):
    """Compare an input's actual type with its Variable's declaration."""
    if declared_dtype is not None and dtype != declared_dtype:
        raise DTypeError(f"input {name!r} has dtype {dtype}, but its Variable declares {declared_dtype}",
                         locs=(loc,), hint=f"pass an array of dtype {declared_dtype}, or .astype it")
    if declared_shape is not None:
        if len(shape) != len(declared_shape) or any(
                isinstance(want, int) and isinstance(got, int) and want != got
                for want, got in zip(declared_shape, shape)):
            shown = "(" + ", ".join("None" if d is None else repr(d) if isinstance(d, str)
                                    else str(d) for d in declared_shape)
            shown += ",)" if len(declared_shape) == 1 else ")"
            raise ShapeError(f"input {name!r} has shape {tuple(shape)}, but its Variable declares "
                             f"{shown}", locs=(loc,))


def specialize(g, signature: dict):
    """A typed copy of graph `g` for inputs of the given {name: (shape, dtype)}."""
    g = copy_graph(g)
    named = {}  # size name -> (size, input) of its first appearance
    for n in topo_order(g):
        d = g.nodes[n]
        if d["op"] == "var":
            name = d["attrs"]["name"]
            shape, dtype = signature[name]
            loc = d["loc"][0] if d["loc"] else None
            check_input(name, d["attrs"].get("shape"), d["attrs"].get("dtype"), shape, dtype, loc)
            for want, got in zip(d["attrs"].get("shape") or (), shape):
                if isinstance(want, str) and isinstance(got, int):
                    first = named.setdefault(want, (got, name))
                    if first[0] != got:
                        raise ShapeError(f"size {want!r} is {first[0]} in input {first[1]!r} "
                                         f"but {got} in input {name!r}", locs=(loc,),
                                         hint="axes declared with one size name must agree")
            d["shape"], d["dtype"] = tuple(shape), np.dtype(dtype)
            continue
        if d["op"] == "scalar":
            d["shape"], d["dtype"] = (), dt.weak_type(d["attrs"]["value"])
            continue
        if d["op"] == "const":
            continue
        op = get_op(d["op"])
        try:
            typing = node_typing(g, n)
        except SymgraphError as exc:
            raise exc.located(d["loc"], operand_notes(g, n)).with_traceback(None) from None
        if op.kind == "control":  # a tuple of results: one shape and dtype each
            d["shape"], d["dtype"] = tuple(typing.shape), tuple(typing.dtype)
        else:
            d["shape"], d["dtype"] = tuple(typing.shape), np.dtype(typing.dtype)
        if typing.attrs is not None:
            d["attrs"] = dict(typing.attrs)
        _resolve_weak_operands(g, n, typing, op)
    for n in [n for n in g.nodes if g.nodes[n]["op"] == "scalar"]:
        if not any(True for _ in g.successors(n)) and n not in g.graph["outputs"]:
            g.remove_node(n)
    return g


MAX_UNIFICATIONS = 64


def specialize_generic(g, declared: dict):
    """A typed copy of `g` whose open sizes stay symbolic, for inputs {name: (shape, dtype)}
    where each shape entry is an int, None (an axis of its own) or a size name.

    Returns (graph, input_shapes): the inputs' shapes with Sym entries after unification,
    which every call must match; the graph's "symbols" attribute lists the size symbols in
    the order code receives their values. Raises NotGeneric when the graph needs concrete
    sizes.
    """
    from .shapes import NotGeneric, Sym, Unify, substitute, unifying

    base = {}
    for name, (shape, dtype) in declared.items():
        base[name] = (tuple(Sym.symbol(f"{name}.{axis}") if d is None else
                            Sym.symbol(d) if isinstance(d, str) else d
                            for axis, d in enumerate(shape)), dtype)
    mapping = {}
    for _ in range(MAX_UNIFICATIONS):
        signature = {name: (tuple(substitute(d, mapping) for d in shape), dtype)
                     for name, (shape, dtype) in base.items()}
        try:
            with unifying():
                typed = specialize(g, signature)
        except Unify as u:
            a, b = u.a, u.b
            if isinstance(b, Sym) and b.name > a.name:
                a, b = b, a  # the smaller name represents both: a fixed, repeatable choice
            mapping = {k: substitute(v, {a.name: b}) for k, v in mapping.items()}
            mapping[a.name] = b
            continue
        except SymgraphError as exc:
            raise NotGeneric(f"needs concrete sizes: {exc}") from None
        shapes = {name: shape for name, (shape, _) in signature.items()}
        typed.graph["symbols"] = sorted({s for shape in shapes.values() for d in shape
                                         if isinstance(d, Sym) for s in d.symbols()})
        return typed, shapes
    raise NotGeneric("too many size constraints")


def specialize_open(g, signature: dict):
    """`specialize` when every size is given, else `specialize_generic`'s graph."""
    if all(isinstance(d, int) for shape, _ in signature.values() for d in shape):
        return specialize(g, signature)
    return specialize_generic(g, signature)[0]


def _resolve_weak_operands(g, n, typing, op):
    args = list(g.nodes[n]["args"])
    changed = False
    for i, a in enumerate(args):
        data = g.nodes[a]
        if data["op"] != "scalar":
            continue
        value = data["attrs"]["value"]
        target = typing.in_dtypes[i] if i < len(typing.in_dtypes) else typing.dtype
        target = np.dtype(target)
        if not dt.scalar_fits(value, target):
            raise DTypeError(
                f"{op.name}: Python integer {value} is out of bounds for {target}",
                locs=g.nodes[n]["loc"], hint=f"use Constant({value}) for a strong int64 operand")
        array = np.array(value, dtype=target)
        array.flags.writeable = False
        args[i] = add_node(g, "const", (), {"value": array}, (), target, data["loc"])
        changed = True
    if changed:
        set_args(g, n, args)
