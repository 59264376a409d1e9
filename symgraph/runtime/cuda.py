"""compile(..., target='cuda'): PTX at compile time, kernels launched through the driver API.

Generating PTX needs no GPU. Calling needs the CUDA driver and the cuda-python package
(``pip install "symgraph[cuda]"``), imported only on the first call: symgraph itself never
fails to import without them. Each specialization loads its PTX once and allocates its
device buffers once (workspace, reduction partials, constants, staging for numpy inputs and
outputs); a call copies numpy inputs in, launches the plan's kernels in order on the default
stream and copies the outputs back. Arrays that live on the device already (anything with
``__cuda_array_interface__``: CuPy, PyTorch, Numba; or a DLPack producer on a CUDA device)
are read in place, and the outputs are then returned as `DeviceArray`s without any copy to
the host. With open sizes, one PTX serves every size: the plan is evaluated per call.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from ..codegen.nvptx import (
    DEFAULT_ARCH,
    Copy,
    find_libdevice,
    lower_graph_ptx,
    normalize_arch,
    size_for,
)
from ..errors import ArgumentError, CompileError, DTypeError, ExecutionError
from ..infer import specialize
from ..passes.memory import ALIGN
from ..shapes import contiguous_strides
from .compiled import (
    CompiledFunction,
    Executable,
    GenericExecutable,
    _BoundShape,
    _contiguous_key,
    _fail,
    bind_arguments,
    prepare_input,
)

INSTALL_HINT = 'install the driver bindings with: pip install "symgraph[cuda]"'


# --- the driver ---------------------------------------------------------------------------------

class _Driver:
    """The CUDA driver on device 0 with its primary context, set up on first use."""

    _instance = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> "_Driver":
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def __init__(self):
        try:
            from cuda.bindings import driver
        except ImportError:
            raise ExecutionError("target='cuda' needs the cuda-python package to run kernels",
                                 hint=INSTALL_HINT) from None
        self.cu = driver
        try:
            self.check(driver.cuInit(0), "cuInit")
        except ExecutionError:
            raise
        except Exception as exc:  # the bindings raise when libcuda itself is missing
            raise ExecutionError(f"no CUDA driver: {exc}",
                                 hint="target='cuda' calls need an NVIDIA GPU and its driver; "
                                      "compiling (f.ptx) works without one") from None
        count = self.check(driver.cuDeviceGetCount(), "cuDeviceGetCount")
        if count < 1:
            raise ExecutionError("no CUDA device found",
                                 hint="compiling (f.ptx) works without one; calls need a GPU")
        self.device = self.check(driver.cuDeviceGet(0), "cuDeviceGet")
        self.context = self.check(driver.cuDevicePrimaryCtxRetain(self.device),
                                  "cuDevicePrimaryCtxRetain")
        self.activate()
        attr = driver.CUdevice_attribute
        major = self.check(driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device), "cuDeviceGetAttribute")
        minor = self.check(driver.cuDeviceGetAttribute(
            attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device), "cuDeviceGetAttribute")
        self.arch = f"sm_{major}{minor}"

    def activate(self):
        self.check(self.cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")

    def check(self, result, what):
        err, *values = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, name = self.cu.cuGetErrorName(err)
            raise ExecutionError(f"CUDA driver call {what} failed: "
                                 f"{name.decode() if isinstance(name, bytes) else name}")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def alloc(self, nbytes: int) -> int:
        return int(self.check(self.cu.cuMemAlloc(max(int(nbytes), 8)), "cuMemAlloc"))

    def free(self, ptr: int) -> None:
        self.cu.cuMemFree(self.cu.CUdeviceptr(ptr))

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        if array.nbytes:
            self.check(self.cu.cuMemcpyHtoD(self.cu.CUdeviceptr(ptr), array.ctypes.data,
                                            array.nbytes), "cuMemcpyHtoD")

    def to_host(self, array: np.ndarray, ptr: int) -> None:
        if array.nbytes:
            self.check(self.cu.cuMemcpyDtoH(array.ctypes.data, self.cu.CUdeviceptr(ptr),
                                            array.nbytes), "cuMemcpyDtoH")

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        if nbytes:
            self.check(self.cu.cuMemcpyDtoD(self.cu.CUdeviceptr(dst), self.cu.CUdeviceptr(src),
                                            nbytes), "cuMemcpyDtoD")

    def launch(self, function, grid: int, block: int, pointers) -> None:
        values = np.array(pointers, dtype=np.uint64)
        slots = np.array([values.ctypes.data + 8 * i for i in range(len(values))], dtype=np.uint64)
        self.check(self.cu.cuLaunchKernel(function, grid, 1, 1, block, 1, 1, 0,
                                          self.cu.CUstream(0), slots.ctypes.data, 0),
                   "cuLaunchKernel")


def device_arch():
    """The compute capability of device 0 ('sm_90'), or None without a usable GPU."""
    try:
        return _Driver.get().arch
    except ExecutionError:
        return None


# --- device arrays ------------------------------------------------------------------------------

class DeviceArray:
    """An output in device memory (when the inputs were device arrays); readable by CuPy,
    PyTorch or Numba through ``__cuda_array_interface__``, or copied back with ``numpy()``."""

    def __init__(self, ptr: int, shape, dtype, driver=None):
        self.ptr, self.shape, self.dtype = int(ptr), tuple(shape), np.dtype(dtype)
        self._driver = driver

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False),
                "strides": None, "version": 3}

    def numpy(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self._driver.to_host(out, self.ptr)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype)

    def __del__(self):
        if self._driver is not None:
            try:
                self._driver.free(self.ptr)
            except Exception:
                pass

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"


class _DeviceInput:
    """An input that already lives on the device: read in place, never copied. Described by
    ``__cuda_array_interface__`` (CuPy, Numba, PyTorch) or by a DLPack capsule."""

    def __init__(self, name, shape, dtype, ptr, strides=None, owner=None):
        self.shape, self.dtype, self.ptr = tuple(int(n) for n in shape), np.dtype(dtype), int(ptr)
        self.owner = owner  # what keeps the memory alive until the call is done
        if strides is not None:
            expected = contiguous_strides(self.shape, self.dtype.itemsize)
            if tuple(strides) != expected and np.prod(self.shape) > 1:
                raise ArgumentError(f"input {name!r} is a non-contiguous device array",
                                    hint="make it contiguous first (e.g. cupy.ascontiguousarray)")
        if self.dtype.kind not in "bif" or self.dtype.byteorder == ">" or \
                self.dtype.name not in ("bool", "int32", "int64", "float32", "float64"):
            raise DTypeError(f"input {name!r}: unsupported device array dtype {self.dtype}")

    @classmethod
    def from_interface(cls, name, value):
        cai = value.__cuda_array_interface__
        return cls(name, cai["shape"], cai["typestr"], cai["data"][0] or 0, cai.get("strides"),
                   value)

    @classmethod
    def from_dlpack(cls, name, value):
        """Read a DLPack capsule in place. The capsule is not marked used, so its producer's
        destructor releases the tensor when the call drops it."""
        try:
            capsule = value.__dlpack__(stream=1)  # 1: CUDA's legacy default stream, ours
        except TypeError:
            capsule = value.__dlpack__()
        try:
            tensor = _DLTensor.from_address(_capsule_pointer(capsule, b"dltensor"))
        except ValueError:
            raise ArgumentError(f"input {name!r}: __dlpack__ gave no usable DLPack capsule") \
                from None
        if tensor.device_type not in _DLPACK_CUDA:
            raise ArgumentError(f"input {name!r}: a DLPack tensor on device type "
                                f"{tensor.device_type}, not a CUDA device")
        code_bits = (tensor.dtype_code, tensor.dtype_bits, tensor.dtype_lanes)
        dtype = _DLPACK_DTYPES.get(code_bits)
        if dtype is None:
            raise DTypeError(f"input {name!r}: unsupported DLPack dtype (code, bits, lanes) "
                             f"{code_bits}")
        shape = [tensor.shape[i] for i in range(tensor.ndim)]
        strides = None
        if tensor.strides:  # in elements
            strides = [tensor.strides[i] * dtype.itemsize for i in range(tensor.ndim)]
        return cls(name, shape, dtype, (tensor.data or 0) + tensor.byte_offset, strides,
                   (value, capsule))

    @property
    def ndim(self):
        return len(self.shape)


class _DLTensor(ctypes.Structure):
    """The DLTensor at the start of a DLManagedTensor (DLPack 0.x and 1.x capsules)."""

    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32),
                ("device_id", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("dtype_code", ctypes.c_uint8), ("dtype_bits", ctypes.c_uint8),
                ("dtype_lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged
_DLPACK_DTYPES = {(0, 32, 1): np.dtype(np.int32), (0, 64, 1): np.dtype(np.int64),
                  (2, 32, 1): np.dtype(np.float32), (2, 64, 1): np.dtype(np.float64),
                  (6, 8, 1): np.dtype(np.bool_)}


def _on_cuda_device(value) -> bool:
    """Whether a DLPack producer's tensor lives on a CUDA device (numpy arrays do not)."""
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
        return False
    try:
        device_type, _ = value.__dlpack_device__()
    except Exception:  # no or a broken __dlpack_device__: not something to read in place
        return False
    return int(device_type) in _DLPACK_CUDA


# --- the compiled function ------------------------------------------------------------------------

class _Library:
    """What CompiledFunction's llvm_ir / asm read: the NVPTX module and its PTX."""

    def __init__(self, program):
        self.llvm_ir = program.llvm_ir
        self.asm = program.ptx


class CudaExecutable(Executable):
    """One specialization's PTX and launch plan (sizes may be symbolic: shape-generic code),
    the module once loaded, and device state per set of size values."""

    MAX_STATES = 8  # size bindings whose buffers stay allocated

    def __init__(self, g, pass_log, program, out_types, stages):
        super().__init__(g, pass_log, _Library(program), None, out_types, stages)
        self.program = program
        self.functions = None  # kernel name -> CUfunction, after the first call
        self.states = {}  # size values -> _DeviceState
        self.call_lock = threading.Lock()

    def state_for(self, driver, values, in_types, out_types):
        """The loaded kernels and the buffers for these size values, made on first need."""
        if self.functions is None:
            module = driver.check(driver.cu.cuModuleLoadData(self.program.ptx.encode() + b"\0"),
                                  "cuModuleLoadData")
            self.functions = {
                step.kernel: driver.check(
                    driver.cu.cuModuleGetFunction(module, step.kernel.encode()),
                    "cuModuleGetFunction")
                for step in self.program.steps if not isinstance(step, Copy)}
        key = tuple(sorted(values.items()))
        state = self.states.get(key)
        if state is None:
            if len(self.states) >= self.MAX_STATES:
                self.states.pop(next(iter(self.states))).free()
            state = self.states[key] = _DeviceState(driver, self, values, in_types, out_types)
        return state


class _DeviceState:
    """The buffers of one plan at one set of size values, allocated once."""

    def __init__(self, driver, exe, values, in_types, out_types):
        g = exe.graph
        program = exe.program
        self.driver = driver
        self.functions = exe.functions
        self.workspace = driver.alloc(size_for(exe.workspace_bytes, values))
        self.status = driver.alloc(4)
        self.scratch = {name: driver.alloc(size_for(n, values))
                        for name, n in program.scratch.items()}
        # The size symbols' values, as the kernels of shape-generic code read them.
        self.sizes = None
        if program.symbols:
            sizes = np.array([values[name] for name in program.symbols], dtype=np.int64)
            self.sizes = driver.alloc(sizes.nbytes)
            driver.to_device(self.sizes, sizes)
        self.consts = {}
        for n in g.nodes:
            if g.nodes[n]["op"] == "const":
                data = np.ascontiguousarray(g.nodes[n]["attrs"]["value"])
                data = data.astype(np.uint8) if data.dtype.kind == "b" else data
                self.consts[n] = driver.alloc(data.nbytes)
                driver.to_device(self.consts[n], data)
        inputs = g.graph["inputs"]
        var_nodes = {g.nodes[n]["attrs"]["name"]: n for n in g.nodes if g.nodes[n]["op"] == "var"}
        self.where = {}  # node -> ("in", i) | ("out", j) | ("const", n) | ("ws", offset)
        for i, name in enumerate(inputs):
            if name in var_nodes:
                self.where[var_nodes[name]] = ("in", i)
        for j, o in enumerate(g.graph["outputs"]):
            if g.nodes[o].get("kernel") is not None:
                self.where.setdefault(o, ("out", j))
        for n in g.nodes:
            if n in self.consts:
                self.where[n] = ("const", n)
            elif "offset" in g.nodes[n]:
                offset = size_for(g.nodes[n]["offset"], values)
                if program.symbols:  # regions of generic plans start ALIGN-aligned, as on the CPU
                    offset = -(-offset // ALIGN) * ALIGN
                self.where.setdefault(n, ("ws", offset))
        # The plan at these sizes, evaluated once: (Copy, bytes) and (Launch, grid) pairs;
        # a launch with no work at these sizes (an open size of 0) is left out.
        self.plan = [(step, size_for(step.nbytes, values)) if isinstance(step, Copy)
                     else (step, step.grid_for(values)) for step in program.steps]
        self.plan = [(step, size) for step, size in self.plan
                     if isinstance(step, Copy) or size]
        # Staging buffers for numpy inputs and outputs, reused by every call.
        self.staged_in = [driver.alloc(_nbytes(t)) for t in in_types]
        self.staged_out = [driver.alloc(_nbytes(t)) for t in out_types]

    def free(self):
        for ptr in [self.workspace, self.status, *self.scratch.values(), *self.consts.values(),
                    *self.staged_in, *self.staged_out] + ([self.sizes] if self.sizes else []):
            self.driver.free(ptr)

    def pointer(self, ref, ins, outs):
        if ref == "status":
            return self.status
        if ref == "sizes":
            return self.sizes
        if isinstance(ref, tuple):
            return self.scratch[ref[1]]
        kind, where = self.where[ref]
        if kind == "in":
            return ins[where]
        if kind == "out":
            return outs[where]
        if kind == "const":
            return self.consts[where]
        return self.workspace + where

    def run(self, ins, outs):
        driver = self.driver
        driver.check(driver.cu.cuMemsetD32(driver.cu.CUdeviceptr(self.status), 0, 1),
                     "cuMemsetD32")
        for step, size in self.plan:
            if isinstance(step, Copy):
                driver.copy(outs[step.output], self.pointer(step.source, ins, outs), size)
            else:
                driver.launch(self.functions[step.kernel], size, step.block,
                              [self.pointer(r, ins, outs) for r in step.params])
        status = np.zeros(1, np.int32)
        driver.to_host(status, self.status)  # synchronizes with the default stream
        return int(status[0])


def _nbytes(t):
    shape, dtype = t
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class CudaFunction(CompiledFunction):
    """The callable compile(..., target='cuda') returns; ``ptx`` holds the generated code."""

    EPILOGUES = False  # the PTX lowering runs a product and its epilogue as two kernels

    def __init__(self, structure, variables, *, arch=None, libdevice=None, **options):
        self.target = "cuda"
        # The CUDA toolkit's math functions instead of symgraph's, when asked for.
        self.libdevice = find_libdevice(libdevice) if libdevice not in (None, False) else None
        self.requested_arch = None if arch is None else normalize_arch(arch)
        self.arch = self.requested_arch or device_arch_quiet() or DEFAULT_ARCH
        if options.get("check_finite"):
            raise CompileError("check_finite is not supported on target='cuda' yet")
        super().__init__(structure, variables, **options)

    @property
    def ptx(self) -> str:
        """The PTX text of the latest specialization, made at compile time when every Variable
        declares its dtype and its shape (sizes may be None or named: then the PTX serves
        every size, reading them from a buffer at run time)."""
        if self._latest is None:
            undeclared = [v.attrs["name"] for v in self.variables
                          if v.attrs.get("dtype") is None or v.attrs.get("shape") is None]
            why = (f"Variable(s) {undeclared} do not declare a shape and dtype" if undeclared
                   else f"this graph needs concrete sizes ({self.generic_status})")
            raise ArgumentError(
                f"no PTX yet: {why}",
                hint="declare Variable(name, shape=(...), dtype=...) (sizes may be None), "
                     "or call the function once on a GPU")
        return self._latest.program.ptx

    def _generate_fast_path(self):
        return lambda *args, out=None, **kwargs: self._call(args, kwargs, out)

    def _build(self, types):
        g = specialize(self._template, dict(zip(self.inputs, types)))
        g, log, stages = self._optimize(g)
        program = lower_graph_ptx(g, self.name, self.arch, self.libdevice)
        out_types = [(g.nodes[o]["shape"], g.nodes[o]["dtype"]) for o in g.graph["outputs"]]
        return CudaExecutable(g, log, program, out_types, stages)

    def _build_generic(self, dtypes):
        """PTX for every size of the open axes: kernels read the sizes from a buffer, and
        the host evaluates the plan's grids and buffer sizes per call."""
        g, shapes, symbols = self._generic_graph(dtypes)
        g, log, stages = self._optimize(g)
        program = lower_graph_ptx(g, self.name, self.arch, self.libdevice)
        layout = GenericExecutable.layout(g)
        exe = CudaExecutable(g, log, program, layout["out_types"], stages)
        return GenericExecutable(exe, shapes, symbols, layout)

    def export(self, *args, **kwargs):
        raise CompileError("export() writes CPU libraries; it is not available for target='cuda'")

    def _call(self, args, kwargs, out=None):
        if out is not None or kwargs.pop("out", None) is not None:
            raise ArgumentError("out= is not supported on target='cuda'")
        kwargs.pop("debug", None)
        values = self._bind_raw(args, kwargs)
        driver = _Driver.get()
        driver.activate()
        on_device = [isinstance(v, _DeviceInput) for v in values]
        types = [(tuple(v.shape), np.dtype(v.dtype)) for v in values]
        key = _contiguous_key(types)
        found = self._specializations.get(key)
        if found is None:
            found = self._generic_for(values, key)
        if found is None:
            found = self._specialize(types, key)
        else:
            found.hits += 1
        if isinstance(found, _BoundShape):  # shape-generic code at this call's sizes
            exe, sizes = found.executable, found.values
        else:
            exe, sizes = found, {}
        out_types = found.out_types
        with exe.call_lock:
            state = exe.state_for(driver, sizes, types, out_types)
            ins = []
            for i, v in enumerate(values):
                if on_device[i]:
                    ins.append(v.ptr)
                else:
                    driver.to_device(state.staged_in[i], v)
                    ins.append(state.staged_in[i])
            device_out = bool(values) and all(on_device)
            if device_out:
                outs = [driver.alloc(_nbytes(t)) for t in out_types]
            else:
                outs = state.staged_out
            status = state.run(ins, outs)
            if status:
                _fail(status, exe)
            if device_out:
                results = [DeviceArray(p, s, d, driver) for p, (s, d) in zip(outs, out_types)]
            else:
                results = []
                for p, (shape, dtype) in zip(outs, out_types):
                    host = np.empty(shape, dtype)
                    driver.to_host(host, p)
                    results.append(host)
        return self.structure.pack(results)

    def _bind_raw(self, args, kwargs):
        """Bind arguments like the CPU path; device arrays stay where they are."""
        values = dict(zip(self.inputs, bind_arguments(self.name, self.inputs, args, kwargs)))
        bound = []
        for name, loc in zip(self.inputs, self._locs):
            value = values[name]
            if hasattr(value, "__cuda_array_interface__"):
                bound.append(_DeviceInput.from_interface(name, value))
            elif _on_cuda_device(value):
                bound.append(_DeviceInput.from_dlpack(name, value))
            else:
                bound.append(prepare_input(name, value, loc))
        return bound


def device_arch_quiet():
    """The device's architecture when a driver and GPU are already usable, else None.

    Only consults the driver if cuda-python is importable, so compiling never fails here."""
    try:
        import cuda.bindings.driver  # noqa: F401
    except ImportError:
        return None
    arch = device_arch()
    if arch is None:
        return None
    try:
        return normalize_arch(arch)
    except CompileError:
        return None


__all__ = ["CudaFunction", "DeviceArray", "device_arch"]
