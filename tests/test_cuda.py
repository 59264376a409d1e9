"""target='cuda': compile-time errors, no-GPU behaviour, and numerics when a GPU is present."""
import ctypes
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
from test_ptx import CASES, OPEN_CASES, _outputs

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


def test_undeclared_dtypes_give_a_clear_error_on_ptx():
    x = Variable("x", shape=(None,))
    f = sg.compile(x * 2.0, target="cuda")
    with pytest.raises(ArgumentError, match="shape and dtype"):
        f.ptx


def test_open_sizes_give_ptx_at_compile_time():
    x = Variable("x", shape=(None, 3), dtype="float32")
    f = sg.compile(sg.exp(x).sum(axis=1), target="cuda")
    assert ".entry" in f.ptx and f.shape_generic
    assert f.cache_info().compilations == 1


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
        _assert_matches(value, sg.evaluate(expr, **inputs))


def _assert_matches(value, want):
    assert value.shape == want.shape and value.dtype == want.dtype
    if want.dtype.kind == "f":
        rtol, atol = _tolerance(want.dtype)
        np.testing.assert_allclose(value, want, rtol=rtol * 50, atol=atol * 50)
    else:
        np.testing.assert_array_equal(value, want)


@needs_gpu
@pytest.mark.parametrize("name", [n for n in OPEN_CASES if "take" not in n])
def test_gpu_shape_generic_code_matches_interpreter(name):
    """One compilation with open first axes, run at the declared sizes and at others."""
    import test_ptx

    test_ptx._OPEN[:] = [True]
    try:
        out, inputs = CASES[name.removeprefix("open:")]()
    finally:
        test_ptx._OPEN[:] = []
    outs = _outputs(out)
    f = sg.compile(outs, target="cuda")
    assert f.shape_generic
    for scale in (1, 3):
        data = {k: np.concatenate([v] * scale) if v.ndim else v for k, v in inputs.items()}
        try:
            wants = [sg.evaluate(e, **data) for e in outs]
        except SymgraphError:  # these sizes are invalid for the graph (e.g. a matmul's k)
            continue
        for value, want in zip(f(**data), wants):
            _assert_matches(value, want)


@needs_gpu
@pytest.mark.parametrize("name", [n for n in CASES if n.split("-")[0] in ("exp", "log", "tanh",
                                                                         "sin", "pow")])
def test_gpu_libdevice_math_matches_interpreter(name):
    from test_ptx import LIBDEVICE

    if LIBDEVICE is None:
        pytest.skip("no CUDA toolkit libdevice*.bc found")
    out, inputs = CASES[name]()
    outs = _outputs(out)
    f = sg.compile(outs, target="cuda", libdevice=True)
    for expr, value in zip(outs, f(**inputs)):
        _assert_matches(value, sg.evaluate(expr, **inputs))


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


class _RecordingDriver:
    """A stand-in for the CUDA driver that records what a call would do on a device: the
    host side of the launch plan (buffer sizes, size values, grids, pointers) runs for real."""

    class cu:  # noqa: N801 - the driver module's spelling
        CUdeviceptr = int

        @staticmethod
        def cuModuleLoadData(image):
            return 0, "module"

        @staticmethod
        def cuModuleGetFunction(module, name):
            return 0, name.decode()

        @staticmethod
        def cuMemsetD32(ptr, value, count):
            return 0

    arch = "sm_80"

    def __init__(self):
        self.allocs, self.launches, self.uploads = {}, [], {}
        self.next = 1 << 20

    def check(self, result, what):
        err, *values = result if isinstance(result, tuple) else (result,)
        return values[0] if len(values) == 1 else None

    def activate(self):
        pass

    def alloc(self, nbytes):
        ptr, self.next = self.next, self.next + max(int(nbytes), 8) + 4096
        self.allocs[ptr] = int(nbytes)
        return ptr

    def free(self, ptr):
        self.allocs.pop(ptr)

    def _inside(self, ptr, nbytes=1):
        return any(base <= ptr and ptr + nbytes <= base + max(size, 8)
                   for base, size in self.allocs.items())

    def to_device(self, ptr, array):
        assert self._inside(ptr, array.nbytes)
        self.uploads[ptr] = array.copy()

    def to_host(self, array, ptr):
        assert self._inside(ptr, array.nbytes)
        array[...] = 0

    def copy(self, dst, src, nbytes):
        assert self._inside(dst, nbytes) and self._inside(src, nbytes)

    def launch(self, function, grid, block, pointers):
        assert 1 <= grid <= 65535 and all(self._inside(p) for p in pointers)
        self.launches.append((function, grid, block, tuple(pointers)))


def test_shape_generic_calls_plan_launches_from_the_sizes(monkeypatch):
    """One compilation for every batch size: each call evaluates grids and buffer sizes for
    its sizes and hands the kernels those values; empty work launches nothing."""
    driver = _RecordingDriver()
    monkeypatch.setattr(cuda._Driver, "get", classmethod(lambda cls: driver))
    x = Variable("x", shape=(None, 3), dtype="float32")
    w = Variable("w", shape=(3, 5), dtype="float32")
    f = sg.compile([sg.tanh(x) * 2.0, (x @ w).sum(axis=1)], target="cuda")
    program = f._latest.program
    assert program.symbols
    for n in (1, 700, 0):
        driver.launches.clear()
        out = f(np.ones((n, 3), np.float32), np.ones((3, 5), np.float32))
        assert [o.shape for o in out] == [(n, 3), (n,)]
        sizes = [a for a in driver.uploads.values() if a.dtype == np.int64 and a.shape == (1,)]
        assert any(int(a[0]) == n for a in sizes)
        grids = {name.split("_")[-1]: grid for name, grid, _, _ in driver.launches}
        if n:  # 16x16 matmul tiles, a block per row sum, 256 threads per elementwise block
            assert grids == {"matmul": -(-n // 16), "sum": n, "mul": -(-n * 3 // 256)}
        else:
            assert not driver.launches
    assert f.cache_info().compilations == 1


class _FakeCudaTensor:
    """A DLPack producer whose tensor claims to be on CUDA device 0 (its memory is host
    memory the recording driver is told about): enough to test reading capsules here."""

    def __init__(self, array, device_type=2, dtype=(2, 32, 1), strides=None):
        self.array = array
        self.shape = (ctypes.c_int64 * array.ndim)(*array.shape)
        self.strides = None if strides is None else (ctypes.c_int64 * array.ndim)(*strides)
        self.tensor = cuda._DLTensor(array.ctypes.data, device_type, 0, array.ndim, *dtype,
                                     self.shape, self.strides, 0)
        self.device_type = device_type

    def __dlpack_device__(self):
        return (self.device_type, 0)

    def __dlpack__(self, stream=None):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p,
                                                       ctypes.c_void_p]
        return new(ctypes.addressof(self.tensor), b"dltensor", None)


def test_dlpack_inputs_are_read_in_place(monkeypatch):
    driver = _RecordingDriver()
    monkeypatch.setattr(cuda._Driver, "get", classmethod(lambda cls: driver))
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    external = _FakeCudaTensor(data)
    driver.allocs[data.ctypes.data] = data.nbytes  # memory the "device" may read
    x = Variable("x", shape=(3, 4), dtype="float32")
    f = sg.compile(sg.exp(x) + 1.0, target="cuda")
    result = f(x=external)
    assert isinstance(result, cuda.DeviceArray) and result.shape == (3, 4)
    assert any(data.ctypes.data in ptrs for _, _, _, ptrs in driver.launches)
    assert not any(a.shape == (3, 4) for a in driver.uploads.values())  # no copy in


@pytest.mark.parametrize("kwargs, error", [
    ({"dtype": (2, 16, 1)}, "unsupported DLPack dtype"),
    ({"strides": (1, 3)}, "non-contiguous"),
])
def test_bad_dlpack_inputs_are_named(monkeypatch, kwargs, error):
    driver = _RecordingDriver()
    monkeypatch.setattr(cuda._Driver, "get", classmethod(lambda cls: driver))
    x = Variable("x", shape=(3, 4), dtype="float32")
    f = sg.compile(x * 2.0, target="cuda")
    with pytest.raises(SymgraphError, match=error):
        f(x=_FakeCudaTensor(np.zeros((3, 4), np.float32), **kwargs))


def test_host_dlpack_producers_are_copied_like_arrays(monkeypatch):
    """numpy arrays (and other host tensors) have __dlpack__ too: they are inputs to copy."""
    assert not cuda._on_cuda_device(np.zeros(3))
    assert not cuda._on_cuda_device(_FakeCudaTensor(np.zeros(3, np.float32), device_type=1))
    assert cuda._on_cuda_device(_FakeCudaTensor(np.zeros(3, np.float32)))


@needs_gpu
def test_gpu_dlpack_input_from_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA support here")

    class OnlyDLPack:  # hides __cuda_array_interface__, so the DLPack route is taken
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, stream=None):
            return self.t.__dlpack__(stream=stream)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    data = np.linspace(-1, 1, 1000, dtype=np.float32)
    x = Variable("x", shape=(None,), dtype="float32")
    f = sg.compile(sg.exp(x) + 1.0, target="cuda")
    result = f(x=OnlyDLPack(torch.from_numpy(data).cuda()))
    np.testing.assert_allclose(result.numpy(), np.exp(data) + 1, rtol=1e-6)
