"""target='cuda': compile-time errors, no-GPU behaviour, and numerics when a GPU is present."""
import subprocess
import sys

import numpy as np
import pytest
from llvmlite import ir

import symgraph as sg
from symgraph import Variable
from symgraph.codegen import mathlib
from symgraph.codegen.nvptx import check_module, normalize_arch
from symgraph.errors import ArgumentError, CompileError, ExecutionError, SymgraphError
from symgraph.runtime import cuda
from test_ptx import CASES, _outputs

HAS_GPU = cuda.device_arch() is not None
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA device")


def test_ptx_at_compile_time_without_gpu():
    x = Variable("x", shape=(1000,), dtype="float64")
    f = sg.compile(sg.sum(sg.exp(x) * 2.0), target="cuda", arch="sm_80")
    assert ".target sm_80" in f.ptx and ".entry" in f.ptx
    assert "ptx_kernel" in f.llvm_ir
    assert f.as_text("asm") == f.ptx


def test_missing_math_function_is_a_compile_error(monkeypatch):
    """An op the math library cannot provide must never reach NVPTX as a libm call."""
    monkeypatch.delitem(mathlib.MATH_FUNCTIONS, "tanh")
    x = Variable("x", shape=(8,), dtype="float32")
    with pytest.raises(CompileError, match="tanh"):
        sg.compile(sg.tanh(x), target="cuda")


@pytest.mark.parametrize("symbol", ["expf", "llvm.exp.f32", "llvm.sin.f64", "tanh"])
def test_external_calls_are_rejected(symbol):
    ty = ir.DoubleType() if symbol.endswith("f64") else ir.FloatType()
    module = ir.Module()
    callee = ir.Function(module, ir.FunctionType(ty, [ty]), symbol)
    fn = ir.Function(module, ir.FunctionType(ty, [ty]), "k")
    b = ir.IRBuilder(fn.append_basic_block())
    b.ret(b.call(callee, [fn.args[0]]))
    with pytest.raises(CompileError, match="cannot"):
        check_module(module)


def test_crashing_intrinsic_is_caught_before_llvm():
    """Compiling a graph whose lowering would call libm exits cleanly (never an abort)."""
    code = ("import symgraph as sg\n"
            "from symgraph.codegen import mathlib\n"
            "del mathlib.MATH_FUNCTIONS['exp']\n"
            "x = sg.Variable('x', shape=(4,), dtype='float32')\n"
            "try:\n"
            "    sg.compile(sg.exp(x), target='cuda')\n"
            "except sg.SymgraphError as exc:\n"
            "    print('raised', type(exc).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "raised CompileError" in proc.stdout


def test_control_flow_is_a_clear_error():
    x = Variable("x", shape=(3,), dtype="float64")
    y = sg.cond(sg.sum(x) > 0, lambda v: v * 2.0, lambda v: v - 1.0, x)
    with pytest.raises(CompileError, match="not supported on target='cuda'"):
        sg.compile(y, target="cuda")


def test_undeclared_shapes_give_a_clear_error_on_ptx():
    x = Variable("x", shape=(None,), dtype="float32")
    f = sg.compile(x * 2.0, target="cuda")
    with pytest.raises(ArgumentError, match="shape and dtype"):
        f.ptx


@pytest.mark.parametrize("arch,expected", [("sm_75", "sm_75"), ("90", "sm_90"), ("8.6", "sm_86"),
                                           ((8, 0), "sm_80")])
def test_arch_names(arch, expected):
    assert normalize_arch(arch) == expected


@pytest.mark.parametrize("arch", ["sm_70", "sm_60", "banana"])
def test_old_or_unknown_arch_rejected(arch):
    x = Variable("x", shape=(3,), dtype="float32")
    with pytest.raises(CompileError):
        sg.compile(x + 1.0, target="cuda", arch=arch)


def test_unknown_target():
    x = Variable("x", shape=(3,), dtype="float32")
    with pytest.raises(ArgumentError, match="unknown target"):
        sg.compile(x + 1.0, target="tpu")


@pytest.mark.skipif(HAS_GPU, reason="a CUDA device is present")
def test_call_without_gpu_is_a_clear_error():
    x = Variable("x", shape=(3,), dtype="float32")
    f = sg.compile(x + 1.0, target="cuda")
    with pytest.raises(SymgraphError) as info:
        f(x=np.ones(3, np.float32))
    assert isinstance(info.value, ExecutionError)
    assert "cuda" in str(info.value).lower()


def test_call_without_bindings_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setattr(cuda._Driver, "_instance", None)
    x = Variable("x", shape=(3,), dtype="float32")
    f = sg.compile(x + 1.0, target="cuda")
    with pytest.raises(ExecutionError, match="cuda-python") as info:
        f(x=np.ones(3, np.float32))
    assert 'pip install "symgraph[cuda]"' in str(info.value)


def test_cli_prints_ptx(tmp_path):
    model = tmp_path / "model.py"
    model.write_text("import symgraph as sg\n"
                     "A = sg.Variable('A', shape=(10,), dtype='float32')\n"
                     "y = sg.sum(sg.tanh(A))\n")
    proc = subprocess.run([sys.executable, "-m", "symgraph", "dump-graph", str(model), "--target",
                           "cuda", "--ptx", "--arch", "sm_75"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ".target sm_75" in proc.stdout and ".entry" in proc.stdout


# --- numerics on a GPU --------------------------------------------------------------------------

def _tolerance(dtype):
    return (2e-5, 1e-5) if np.dtype(dtype) == np.float32 else (1e-11, 1e-12)


@needs_gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_gpu_matches_interpreter(name):
    out, inputs = CASES[name]()
    outs = _outputs(out)
    f = sg.compile(outs, target="cuda")
    got = f(**inputs)
    for expr, value in zip(outs, got):
        want = sg.evaluate(expr, **inputs)
        assert value.shape == want.shape and value.dtype == want.dtype
        if want.dtype.kind == "f":
            rtol, atol = _tolerance(want.dtype)
            np.testing.assert_allclose(value, want, rtol=rtol * 50, atol=atol * 50)
        else:
            np.testing.assert_array_equal(value, want)


@needs_gpu
def test_gpu_device_arrays_without_copies():
    cupy = pytest.importorskip("cupy")
    x = Variable("x", shape=(1000,), dtype="float32")
    f = sg.compile(sg.exp(x) + 1.0, target="cuda")
    data = np.linspace(-1, 1, 1000, dtype=np.float32)
    result = f(x=cupy.asarray(data))
    assert hasattr(result, "__cuda_array_interface__")
    np.testing.assert_allclose(cupy.asnumpy(cupy.asarray(result)), np.exp(data) + 1, rtol=1e-6)


@needs_gpu
def test_gpu_index_error_reported():
    x, i = Variable("x", shape=(4,), dtype="float32"), Variable("i", shape=(2,), dtype="int64")
    f = sg.compile(sg.take(x, i, axis=0), target="cuda")
    with pytest.raises(IndexError):
        f(x=np.ones(4, np.float32), i=np.array([0, 9]))
