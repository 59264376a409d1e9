"""Known bugs planted one at a time, to show the random-graph harness can fail.

Each entry patches symgraph in this process (module attributes, pass rules, op records) the
way a plausible mistake would look. ``python planted.py NAME`` plants bug NAME, runs the
same random-graph check as the test suite (harness.check_many) until the first mismatch,
and prints one JSON line: ``{"bug": NAME, "caught": bool, "batches": n, "first": "..."}``.
Run in a subprocess (a planted bug may crash native code) with SYMGRAPH_CACHE=0, since the
compile cache keys on symgraph's source files, which a patch does not change.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys

import numpy as np
from llvmlite import ir

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

import harness  # noqa: E402
from symgraph.codegen import emit  # noqa: E402
from symgraph.graph import add_node  # noqa: E402
from symgraph.ops import REGISTRY  # noqa: E402
from symgraph.ops import registry as op_registry  # noqa: E402
from symgraph.passes import PASSES  # noqa: E402

cse = importlib.import_module("symgraph.passes.cse")
memory = importlib.import_module("symgraph.passes.memory")
simplify = importlib.import_module("symgraph.passes.simplify")


def _set_op(name, **fields):
    REGISTRY[name] = dataclasses.replace(REGISTRY[name], **fields)


def _zeros_like(g, n):
    d = g.nodes[n]
    value = np.zeros(d["shape"], d["dtype"])
    value.flags.writeable = False
    return add_node(g, "const", (), {"value": value}, d["shape"], d["dtype"], d["loc"])


def fold_float_mul_zero():
    """simplify folds x * 0 to 0 for floats too (wrong for nan, inf and the sign of zero)."""
    def rule(g, n, typing):
        for i in (0, 1):
            if simplify._all(simplify._const_value(g, n, typing, i), 0):
                return _zeros_like(g, n)
        return None
    simplify.RULES["mul"] = simplify.RULES["mul"] + [("mul_zero", rule)]


def add_positive_zero():
    """simplify drops x + 0.0 (wrong for x = -0.0)."""
    def rule(g, n, typing):
        return simplify._first(simplify._identity_operand(g, n, typing, 1, 0),
                               simplify._identity_operand(g, n, typing, 0, 0))
    simplify.RULES["add"] = [("add_zero", rule)]


def liveness_off_by_one():
    """The memory planner ends each buffer's live range one kernel early."""
    real = memory.live_ranges

    def live_ranges(g, nodes):
        return {n: (s, max(s, e - 1)) for n, (s, e) in real(g, nodes).items()}
    memory.live_ranges = live_ranges


def cast_through_float32():
    """Integer to float64 casts go through float32 (loses bits above 2**24)."""
    real = emit.Emitter.cast

    def cast(self, src, dst, x):
        src, dst = np.dtype(src), np.dtype(dst)
        if src.kind == "i" and dst == np.float64:
            return real(self, np.float32, dst, real(self, src, np.float32, x))
        return real(self, src, dst, x)
    emit.Emitter.cast = cast


def max_identity_zero():
    """The max reduction starts from 0 instead of the dtype's lowest value."""
    _set_op("max", identity=lambda dtype: np.zeros((), dtype)[()])


def slice_off_by_one():
    """slice starts one element late on axes with a step of 2 or more."""
    def index_map(em, out_index, attrs, in_shape):
        kept = iter(out_index)
        return [em.index_const(start) if axis in attrs["drop"] else
                em.index_affine(next(kept), step, start + (step >= 2))
                for axis, (start, step) in enumerate(zip(attrs["starts"], attrs["steps"]))]
    _set_op("slice", index_map=index_map)


def cast_nan_to_false():
    """Float to bool casts compare ordered, so NaN becomes False (numpy: True)."""
    real = emit.Emitter.cast

    def cast(self, src, dst, x):
        if np.dtype(src).kind == "f" and np.dtype(dst).kind == "b":
            return self.b.fcmp_ordered("!=", x, ir.Constant(x.type, 0.0))
        return real(self, src, dst, x)
    emit.Emitter.cast = cast


def where_swapped():
    """where's lowering picks y where the condition holds."""
    real = REGISTRY["where"].lower
    _set_op("where", lower=lambda em, dtype, c, x, y: real(em, dtype, c, y, x))


def min_identity_zero():
    """The min reduction starts from 0 instead of the dtype's highest value."""
    _set_op("min", identity=lambda dtype: np.zeros((), dtype)[()])


BUGS = {
    "fold float x*0 -> 0": fold_float_mul_zero,
    "simplify x+0.0 -> x": add_positive_zero,
    "liveness ends one kernel early": liveness_off_by_one,
    "int->float64 cast via float32": cast_through_float32,
    "max reduction identity 0": max_identity_zero,
    "slice start off by one (step >= 2)": slice_off_by_one,
    "float->bool cast: NaN is False": cast_nan_to_false,
    "where operands swapped": where_swapped,
    "min reduction identity 0": min_identity_zero,
}


def hunt(name, max_batches=200, n_graphs=40, first_seed=5000):
    """Plant bug `name` and check batches until one mismatches; returns a report dict."""
    BUGS[name]()
    for i in range(max_batches):
        seed = first_seed + i
        res = harness.check_batch(harness.make_batch(seed, n_graphs), ablations=False)
        if res.failures:
            return {"bug": name, "caught": True, "batches": i + 1, "first": res.failures[0][:300]}
    return {"bug": name, "caught": False, "batches": max_batches, "first": ""}


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    os.environ["SYMGRAPH_CACHE"] = "0"
    print(json.dumps(hunt(sys.argv[1])))
