"""@jit: trace a plain Python function of arrays into a graph, once per input signature.

The function runs once with symbolic Variables standing for its array arguments (so
symgraph functions and operators build a graph), the graph is compiled, and later calls
with the same shapes, dtypes and static argument values go straight to native code.
Python control flow that depends on traced values raises TracerBoolError at the line that
did it, suggesting cond, where or while_loop.
"""
from __future__ import annotations

import functools
import inspect
import threading

from .errors import ArgumentError, user_loc
from .frontend import Expr, Variable
from .runtime.compiled import CacheInfo, compile, prepare_input


class JitFunction:
    """A traced-and-compiled version of a Python function; call it like the original."""

    def __init__(self, fn, static_argnames=(), static_argnums=(), shapes=None, **options):
        self.fn = fn
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        names = set(static_argnames)
        for index in static_argnums:
            if not -len(params) <= index < len(params):
                raise ArgumentError(f"static_argnums: {index} is out of range for {fn.__name__}")
            names.add(params[index].name)
        unknown = names - {p.name for p in params}
        if unknown:
            raise ArgumentError(f"static_argnames: {sorted(unknown)} are not parameters of {fn.__name__}")
        self.static = frozenset(names)
        # Declared shapes: None (or a name) marks an axis whose size may change from call to
        # call without a new trace; the compiled function serves every size with one code.
        self.shapes = {}
        for name, shape in (shapes or {}).items():
            if name not in {p.name for p in params} or name in self.static:
                raise ArgumentError(f"shapes: {name!r} is not an array parameter of {fn.__name__}")
            self.shapes[name] = Variable(name, shape=shape).attrs["shape"]
        self.options = options
        self._cache = {}
        self._lock = threading.Lock()
        self._misses = 0
        functools.update_wrapper(self, fn)

    def _bind(self, args, kwargs):
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentError(f"{self.fn.__name__}(): {exc}") from None
        bound.apply_defaults()
        arrays, key = {}, []
        for name, value in bound.arguments.items():
            if name in self.static:
                try:
                    hash(value)
                except TypeError:
                    raise ArgumentError(f"static argument {name!r} must be hashable, got "
                                        f"{type(value).__name__}") from None
                key.append((name, "static", value))
            elif name in self.shapes:
                array = prepare_input(name, value, declared=(self.shapes[name], None))
                arrays[name] = array
                key.append((name, array.dtype, self.shapes[name]))
            else:
                array = prepare_input(name, value)
                arrays[name] = array
                key.append((name, array.dtype, array.shape))
        return bound, arrays, tuple(key)

    def _compile(self, bound, arrays):
        variables = {name: Variable(name, shape=self.shapes.get(name, a.shape), dtype=a.dtype)
                     for name, a in arrays.items()}
        for name, var in variables.items():
            bound.arguments[name] = var
        outputs = self.fn(*bound.args, **bound.kwargs)
        if isinstance(outputs, Expr):
            structure = outputs
        elif isinstance(outputs, (tuple, list, dict)) and outputs:
            structure = outputs
        else:
            raise ArgumentError(f"{self.fn.__name__} must return symgraph expressions "
                                f"(or a tuple, list or dict of them), got {type(outputs).__name__}")
        return compile(structure, inputs=list(variables.values()), **self.options)

    def _lookup(self, args, kwargs):
        bound, arrays, key = self._bind(args, kwargs)
        compiled = self._cache.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._cache.get(key)
                if compiled is None:
                    self._misses += 1
                    compiled = self._compile(bound, arrays)
                    self._cache[key] = compiled
        return compiled, arrays

    def __call__(self, *args, **kwargs):
        compiled, arrays = self._lookup(args, kwargs)
        return compiled(**arrays)

    def trace(self, *args, **kwargs):
        """The compiled graph (networkx) for these arguments, without running it."""
        compiled, _ = self._lookup(args, kwargs)
        return compiled.graph

    def lower(self, *args, **kwargs):
        """The CompiledFunction these arguments use (for as_text, llvm_ir, asm...)."""
        return self._lookup(args, kwargs)[0]

    def cache_info(self):
        """hits: calls served by existing code; misses: signatures traced; compilations."""
        infos = [c.cache_info() for c in list(self._cache.values())]
        hits = sum(i.hits for i in infos)
        compilations = sum(i.compilations for i in infos)
        return CacheInfo(hits, self._misses, compilations)


def jit(fn=None, *, static_argnames=(), static_argnums=(), shapes=None, **options):
    """Trace and compile `fn` on first call per signature (shapes, dtypes, static values).

    ``shapes={"x": (None, 512)}`` declares an argument's shape with open axes (None, or a
    name shared by axes that must agree): calls with any size there share one trace and,
    where the graph allows, one compilation.

    >>> import numpy as np, symgraph as sg
    >>> @sg.jit
    ... def f(x, y):
    ...     return sg.tanh(x) * y + 1
    >>> f(np.zeros(3), np.ones(3))
    array([1., 1., 1.])
    """
    if isinstance(static_argnames, str):
        static_argnames = (static_argnames,)
    if isinstance(static_argnums, int):
        static_argnums = (static_argnums,)
    if fn is None:
        return lambda f: jit(f, static_argnames=static_argnames, static_argnums=static_argnums,
                             shapes=shapes, **options)
    if not callable(fn):
        raise ArgumentError(f"jit needs a function, got {type(fn).__name__}", locs=(user_loc(),))
    return JitFunction(fn, static_argnames, static_argnums, shapes, **options)

