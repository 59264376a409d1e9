"""Random expression graphs: compiled code (opt_level 0 and the default pipeline, declared
and undeclared Variables) agrees with the reference interpreter. Integer and boolean results
and correctly rounded float results must match exactly (NaN positions included);
transcendental functions and float sums within the tolerance their Value carries."""
from __future__ import annotations

import numpy as np
from hypothesis import given, note

import symgraph as sg
from symgraph.frontend import find_variables

from helpers import assert_same
from strategies import graphs


def _finite_max(x):
    x = np.abs(np.asarray(x, dtype=np.float64))
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else 0.0


def _tolerances(gen, inputs):
    """(rtol, atol) per output, from the approximate values it was computed from."""
    wanted = [e for v in gen.outputs for exprs, _ in v.sums for e in exprs]
    names = {v.name for v in find_variables(wanted)}
    mags = sg.evaluate(wanted, **{k: x for k, x in inputs.items() if k in names}) if wanted else []
    it = iter(mags)
    out = []
    for v in gen.outputs:
        atol = 0.0
        for exprs, terms in v.sums:
            magnitude = np.prod([_finite_max(next(it)) for _ in exprs])
            atol += 8 * terms * float(np.finfo(v.dtype if v.dtype.kind == "f" else np.float64).eps) \
                * magnitude
        out.append((v.rtol, atol))
    return out


@given(graphs())
def test_compiled_matches_interpreter(gen):
    note("\n".join(gen.ops))
    declared = [v.expr for v in gen.outputs]
    free = [v.free for v in gen.outputs]
    used = {v.name for v in find_variables(declared)}
    inputs = {k: x for k, x in gen.inputs.items() if k in used}
    want = sg.evaluate(declared, **inputs)
    want_free = sg.evaluate(free, **inputs)
    for w, wf in zip(want, want_free):
        assert_same(wf, w, rtol=0, atol=0, context="interpreter, undeclared vs declared")
    tolerances = _tolerances(gen, gen.inputs)
    runs = {
        "declared, opt_level=0": sg.compile(declared, opt_level=0),
        "declared, default": sg.compile(declared),
        # Every Variable listed, used or not: an unused input is accepted and ignored.
        "undeclared, default": sg.compile(free, inputs=[u for _, u, _ in gen.variables]),
        # Open axes: one compilation for all sizes (or per shape where the graph needs it).
        "open axes, default": sg.compile([v.open for v in gen.outputs],
                                         inputs=[o for _, _, o in gen.variables]),
    }
    for label, f in runs.items():
        got = f(**(inputs if label.startswith("declared") else gen.inputs))
        for k, (g, w, (rtol, atol)) in enumerate(zip(got, want, tolerances)):
            assert_same(g, w, rtol=rtol, atol=atol, context=f"{label}: output {k}")
