"""Peer implementations built from one expression string, each optional.

An expression such as ``"tanh(a*b + c) * exp(-a)"`` is evaluated in a per-library namespace
(symgraph Variables, numpy arrays, jax/torch arrays), handed to numexpr as text, or turned
into a numba parallel loop. A peer that is not installed yields None and its column reads
"n/a".
"""
from __future__ import annotations

import re

import numpy as np

from harness import optional

import symgraph as sg

ne = optional("numexpr")
numba = optional("numba")
jax = optional("jax")
torch = optional("torch")

FUNCS = ("sqrt", "tanh", "exp", "abs", "sum", "sin", "log")
PEERS = ("numpy", "numexpr", "numba", "jax", "torch")
NAMES = re.compile(r"\b([a-z])\b")


def installed() -> dict:
    return {"numexpr": ne is not None, "numba": numba is not None, "jax": jax is not None,
            "torch": torch is not None}


def symgraph_fn(expr, arrays, num_threads=None):
    """A compiled function of the expression; Variables declared, so compile happens here."""
    env = {f: getattr(sg, f) for f in FUNCS}
    variables = {k: sg.Variable(k, shape=v.shape, dtype=v.dtype) for k, v in arrays.items()}
    env.update(variables)
    return sg.compile(eval(expr, env), inputs=list(variables.values()),  # noqa: S307
                      num_threads=num_threads)


def numpy_fresh(expr, arrays):
    env = {f: getattr(np, f) for f in FUNCS}
    env.update(arrays)
    code = compile(expr, "<numpy>", "eval")
    return lambda: eval(code, env)  # noqa: S307


def numexpr_fn(expr, arrays, out=None):
    if ne is None:
        return None
    # numexpr spells sum() for reductions the same way; out= keeps its result in place.
    if out is None:
        return lambda: ne.evaluate(expr, local_dict=arrays)
    return lambda: ne.evaluate(expr, local_dict=arrays, out=out)


_numba_cache = {}


def numba_fn(expr, arrays, out=None, reduce=False):
    """An ``@njit`` loop over the flattened arrays: ``parallel=True`` (prange over every
    core) from 100,000 elements, serial below, where starting threads costs more."""
    if numba is None:
        return None
    names = sorted(arrays)
    body = NAMES.sub(lambda m: f"{m.group(1)}[i]" if m.group(1) in arrays else m.group(1), expr)
    for f in FUNCS:
        body = re.sub(rf"\b{f}\(", f"np.{f}(", body)
    parallel = next(iter(arrays.values())).size >= 100_000
    key = (expr, tuple(names), reduce, parallel)
    kernel = _numba_cache.get(key)
    if kernel is None:
        params = ", ".join(names)
        if reduce:
            inner = body[len("np.sum("):-1]  # the summand of sum(...)
            src = (f"def k({params}):\n    s = 0.0\n    for i in prange({names[0]}.size):\n"
                   f"        s += {inner}\n    return s\n")
        else:
            src = (f"def k({params}, out):\n    for i in prange(out.size):\n"
                   f"        out[i] = {body}\n")
        env = {"np": np, "prange": numba.prange}
        exec(compile(src, "<numba kernel>", "exec"), env)  # noqa: S102
        kernel = numba.njit(parallel=parallel, cache=False)(env["k"])
        _numba_cache[key] = kernel
    args = [arrays[n] for n in names]
    if reduce:
        return lambda: kernel(*args)
    first = args[0]
    if out is None:
        return lambda: kernel(*args, np.empty(first.shape, first.dtype))
    return lambda: kernel(*args, out)


def jax_fn(expr, arrays):
    if jax is None:
        return None
    import jax.numpy as jnp

    env = {f: getattr(jnp, f) for f in FUNCS}
    names = sorted(arrays)
    code = compile(expr, "<jax>", "eval")

    def body(*xs):
        return eval(code, {**env, **dict(zip(names, xs))})  # noqa: S307

    jitted = jax.jit(body)
    device = [jnp.asarray(arrays[n]) for n in names]
    return lambda: jitted(*device).block_until_ready()


def torch_fn(expr, arrays):
    if torch is None:
        return None
    env = {f: getattr(torch, f) for f in FUNCS}
    env.update({k: torch.from_numpy(v) for k, v in arrays.items()})
    code = compile(expr, "<torch>", "eval")
    return lambda: eval(code, env)  # noqa: S307
