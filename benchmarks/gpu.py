"""target='cuda' on a GPU: elementwise bandwidth as a share of the device's peak, and matmul
TFLOP/s against torch (cuBLAS) or CuPy. Runs only where a CUDA device, the cuda-python
bindings and torch or CuPy are present; elsewhere it says why and times nothing.

Inputs are device arrays (no host copies in the timings); each call ends by reading the
status word back, which waits for the kernels, so a call's time is its whole GPU work.
"""
from __future__ import annotations

import numpy as np
from harness import fmt_ratio, fmt_time, measure_interleaved, optional, table

import symgraph as sg


def _device_peak_gbs(cuda):
    """Peak DRAM bandwidth from the driver: 2 transfers per memory clock x bus width."""
    driver = cuda._Driver.get()
    attr = driver.cu.CUdevice_attribute
    clock_khz = driver.check(driver.cu.cuDeviceGetAttribute(
        attr.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, driver.device), "cuDeviceGetAttribute")
    bus_bits = driver.check(driver.cu.cuDeviceGetAttribute(
        attr.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, driver.device), "cuDeviceGetAttribute")
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def _peer():
    """(name, to_device, synchronize, matmul) for torch or CuPy on the GPU, or None."""
    torch = optional("torch")
    if torch is not None and torch.cuda.is_available():
        return ("torch", lambda a: torch.from_numpy(a).cuda(), torch.cuda.synchronize,
                lambda a, b: a @ b)
    cupy = optional("cupy")
    if cupy is not None:
        sync = cupy.cuda.runtime.deviceSynchronize
        return "cupy", cupy.asarray, sync, lambda a, b: a @ b
    return None


def run(quick=False):
    from symgraph.runtime import cuda

    arch = cuda.device_arch()
    if arch is None:
        return {"skipped": "no CUDA device (or no cuda-python): nothing timed"}
    peer = _peer()
    if peer is None:
        return {"skipped": "neither torch with CUDA nor CuPy is installed: no device arrays"}
    name, to_device, sync, peer_matmul = peer
    rng = np.random.default_rng(0)
    repeat = 5 if quick else 15
    rows = []

    n = 10**7 if quick else 10**8
    a, b = (to_device(rng.standard_normal(n).astype(np.float32)) for _ in range(2))
    A, B = sg.Variable("A", (None,), "float32"), sg.Variable("B", (None,), "float32")
    f = sg.compile(B * A + 1.0, target="cuda")
    f(A=a, B=b)

    def peer_axpy():
        b * a + 1.0
        sync()

    times = measure_interleaved({"symgraph": lambda: f(A=a, B=b), name: peer_axpy},
                                repeat=repeat)
    peak = _device_peak_gbs(cuda)
    moved = 3 * 4 * n  # two reads and a write of float32
    for engine, t in times.items():
        gbs = moved / t.median / 1e9
        rows.append([f"B*A+1, {n:.0e} float32", engine, fmt_time(t.median),
                     f"{gbs:.0f} GB/s ({gbs / peak:.0%} of peak)",
                     fmt_ratio(t.median / times["symgraph"].median)])

    m = 2048 if quick else 4096
    x, y = (to_device(rng.standard_normal((m, m)).astype(np.float32)) for _ in range(2))
    X, Y = sg.Variable("X", (m, m), "float32"), sg.Variable("Y", (m, m), "float32")
    g = sg.compile(X @ Y, target="cuda")
    g(X=x, Y=y)

    def peer_mm():
        peer_matmul(x, y)
        sync()

    times = measure_interleaved({"symgraph": lambda: g(X=x, Y=y), name: peer_mm},
                                repeat=repeat)
    flops = 2 * m ** 3
    for engine, t in times.items():
        rows.append([f"matmul {m}^3 float32", engine, fmt_time(t.median),
                     f"{flops / t.median / 1e12:.2f} TFLOP/s",
                     fmt_ratio(t.median / times["symgraph"].median)])
    return {"arch": arch, "peak_gbs": peak, "rows": rows}


def report(result) -> str:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    return (f"device {result['arch']}, peak DRAM bandwidth {result['peak_gbs']:.0f} GB/s\n"
            + table(["case", "engine", "median", "rate", "time / symgraph's"], result["rows"]))
