"""The pass pipeline: every configuration computes what the interpreter computes."""
import numpy as np
import pytest

import symgraph as sg
from symgraph import Constant, Variable
from symgraph.passes import OPTIMIZING, pipeline

from pass_helpers import FLOAT_EDGES

EDGES = FLOAT_EDGES
OTHER = np.roll(FLOAT_EDGES, 3)


def _cases():
    x, y = Variable("x"), Variable("y")
    exact = {
        "arith": [x * y + y * x - (x - 0.0) * 1, -(-x) / 1 + x ** 2],
        "zeros": [x * 0.0 + (x + 0.0), x + Constant(-0.0), x - Constant(-0.0)],
        "consts": [x + (Constant(2.0) * Constant(3.0) - Constant(np.inf)),
                   x * (Constant(-0.0) * Constant(1.0)), x + Constant(np.nan) * Constant(0.0)],
        "where": [sg.where(x > y, x * 1, y - 0.0), sg.maximum(x, y), sg.maximum(y, x)],
        "movement": [(x.reshape(2, 5).T.T.reshape(10) * y).reshape(5, 2).T,
                     x.astype("float64") + y.astype("float32")],
        "pow_half": [x ** 0.5],
    }
    approx = {
        "reduce": [(x * y + (x * y)).sum(), (y * x).reshape(2, 5).max(axis=1)],
    }
    return exact, approx


CONFIGS = [dict(opt_level=0), dict()] + [dict(disable=[name]) for name in OPTIMIZING]
CONFIG_IDS = ["O0", "default"] + [f"no-{name}" for name in OPTIMIZING]


def _inputs(case):
    if case == "reduce":
        return np.nan_to_num(EDGES, nan=2.0, posinf=3.0, neginf=-4.0), OTHER.copy()
    return EDGES, OTHER


def _compare(outputs, config, exact):
    variables = sg.frontend.find_variables(outputs)
    kwargs = {v.attrs["name"]: a for v, a in zip(variables, _inputs("exact" if exact else "reduce"))}
    f = sg.compile(*outputs, verify=True, **config)
    got = f(**kwargs)
    got = got if isinstance(got, tuple) else (got,)
    want = sg.evaluate(tuple(outputs), **kwargs)
    for g_, w in zip(got, want, strict=True):
        assert g_.dtype == w.dtype and g_.shape == w.shape
        if exact:
            np.testing.assert_array_equal(np.signbit(g_), np.signbit(w))
            np.testing.assert_array_equal(g_, w)
        else:
            np.testing.assert_allclose(g_, w, rtol=1e-12, equal_nan=True)
    return f


EXACT, APPROX = _cases()


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("case", sorted(EXACT))
def test_every_configuration_matches_the_interpreter(case, config, request):
    _compare(EXACT[case], config, exact=True)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("case", sorted(APPROX))
def test_reductions_match_the_interpreter(case, config):
    _compare(APPROX[case], config, exact=False)


def test_pass_log_records_what_each_pass_did():
    x = Variable("x")
    expr = (x * 1 + Constant(1.0) * Constant(2.0)) * (x * 1 + Constant(1.0) * Constant(2.0))
    f = sg.compile(expr, verify=True)
    f(np.arange(3.0))
    log = {r.name: r for r in f.pass_log}
    assert [r.name for r in f.pass_log] == ["fold", "cse", "simplify", "dce", "fuse", "memory"]
    assert log["fold"].details == {"folded": 2}
    assert log["cse"].details["merged"] >= 3
    assert log["simplify"].details["rewrites"] == {"mul_one": 1}
    assert log["dce"].details["removed"] > 0
    assert all(r.nodes_after <= r.nodes_before for r in f.pass_log if r.name != "simplify")


def test_opt_level_zero_runs_only_the_required_steps():
    x = Variable("x")
    f = sg.compile(x * 1 + 0, opt_level=0)
    f(np.arange(3.0))
    assert [r.name for r in f.pass_log] == pipeline(0) == ["schedule", "allocate"]


@pytest.mark.parametrize("name", OPTIMIZING)
def test_disable_switches_one_pass_off(name):
    names = pipeline(2, disable=[name])
    assert name not in names
    assert set(names) - {"schedule", "allocate"} == set(OPTIMIZING) - {name}


def test_unknown_pass_name_is_an_error():
    with pytest.raises(sg.SymgraphError, match="nope"):
        sg.compile(Variable("x") * 2, disable=["nope"])


def test_chain_of_non_fusable_ops_needs_two_buffers():
    x, w = Variable("x"), Variable("W")
    y = x
    for _ in range(25):
        y = sg.tanh(y @ w)
    f = sg.compile(y, verify=True)
    xs, ws = np.full((4, 8), 0.1), np.eye(8) * 0.5
    np.testing.assert_allclose(f(xs, ws), sg.evaluate(y, x=xs, W=ws), rtol=1e-12)
    plan = f.memory_plan
    assert plan["num_buffers"] <= 2
    assert plan["peak_bytes"] <= 2 * 4 * 8 * 8 < plan["no_reuse_bytes"]
    # Each tanh is its matmul's epilogue: 24 intermediates between the 25 layers.
    assert len(plan["buffers"]) == 24 and set(plan["buffers"].values()) <= {0, 1}
    baseline = sg.compile(y, opt_level=0)
    baseline(xs, ws)
    assert baseline.memory_plan["num_buffers"] == 49
