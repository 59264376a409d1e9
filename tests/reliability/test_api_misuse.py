"""Every public graph-building function, called with random operands and hostile arguments
(wrong types, NaN, huge sizes, arrays where flags belong, strings, objects), either builds
an expression that compiles, or raises a SymgraphError; never another exception. Python's
own complaints about the call signature (too many arguments, unknown keywords) are the only
plain TypeErrors allowed. The long tier runs ten times as many calls."""
from __future__ import annotations

import inspect
import os
import random

import numpy as np
import pytest

import symgraph as sg
from symgraph.errors import SymgraphError

LONG = os.environ.get("SYMGRAPH_LONG", "") not in ("", "0")
# Entry points that take functions, files or whole graphs rather than operands.
NOT_OPS = {"compile", "save", "load", "Variable", "Constant", "jit", "evaluate", "grad",
           "value_and_grad", "cond", "while_loop", "fori_loop", "scan", "trace", "export",
           "dumps", "loads", "vjp", "jvp", "checkpoint"}
HOSTILE = [None, -1, 0, 1, 2, 3, -5, 10**12, 2.5, float("nan"), "x", (), (1,), (2, 3), (-1,),
           (0,), [1, 2], (1, 1), (3, 3), True, "float32", "int8", np.int64(2), [1.5],
           {"a": 1}, np.ones(3), object()]
SHAPES = [(), (0,), (1,), (3,), (2, 3), (3, 1), (1, 2, 3), (2, 2, 2, 2), (2, 3, 4, 4)]
DTYPES = ["float32", "float64", "int32", "int64", "bool"]


def _functions():
    return sorted(n for n in dir(sg) if not n.startswith("_") and n not in NOT_OPS
                  and callable(getattr(sg, n)) and not isinstance(getattr(sg, n), type))


def _misuse(seed, calls):
    rng = random.Random(seed)
    names = _functions()
    escaped = []
    for _ in range(calls):
        name = rng.choice(names)
        fn = getattr(sg, name)
        args = [sg.Variable(rng.choice("abcd"), rng.choice(SHAPES), rng.choice(DTYPES))
                if rng.random() < 0.6 else rng.choice(HOSTILE) for _ in range(rng.randint(0, 4))]
        kwargs = {p: rng.choice(HOSTILE) for p in inspect.signature(fn).parameters
                  if p not in ("args", "kwargs") and rng.random() < 0.3}
        try:
            out = fn(*args, **kwargs)
            if isinstance(out, sg.frontend.Expr):
                sg.compile(out)
        except SymgraphError:
            pass
        except TypeError as exc:
            if "argument" not in str(exc) and "positional" not in str(exc):
                escaped.append((name, args, kwargs, repr(exc)[:200]))
        except Exception as exc:  # the finding: anything else escaped
            escaped.append((name, args, kwargs, repr(exc)[:200]))
    return escaped


def test_public_functions_name_every_misuse():
    escaped = _misuse(0, 20_000 if LONG else 2_000)
    assert not escaped, "\n".join(map(str, escaped[:10]))


@pytest.mark.parametrize("call,error", [
    (lambda x: sg.sum(x, axis=float("nan")), sg.ShapeError),
    (lambda x: sg.reshape(x, "x"), sg.ArgumentError),
    (lambda x: sg.transpose(x, axes=True), sg.ArgumentError),
    (lambda x: sg.max(x, keepdims=np.ones(3)), sg.ArgumentError),
    (lambda x: sg.argmax(x, keepdims=np.ones(3)), sg.ArgumentError),
    (lambda x: sg.concatenate(5), sg.ArgumentError),
    (lambda x: sg.one_hot(x, 10**12), sg.ShapeError),
    (lambda x: sg.cross_entropy(x, x, axis="float32"), sg.ArgumentError),
    (lambda x: sg.avg_pool2d(x, 2, stride=np.ones(3)), sg.ShapeError),
    (lambda x: sg.broadcast_to(0, 10**12), sg.OutOfMemory),
    (lambda x: sg.softmax(True, axis=None), sg.DTypeError),
])
def test_misuses_found_by_the_harness(call, error):
    """Each was a raw numpy or Python exception before."""
    with pytest.raises(error):
        call(sg.Variable("x", (2, 3, 4, 4), "float32"))
