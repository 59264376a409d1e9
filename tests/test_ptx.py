"""PTX generation for every op family, assembled by ptxas for sm_75, sm_80 and sm_90.

LLVM's NVPTX backend may abort the whole process on an instruction it cannot select, so the
PTX is generated in a child process (this file run as a script): a crash there fails the
cases it hit instead of killing pytest. No GPU is needed.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import symgraph as sg
from symgraph import Variable

ARCHS = ("sm_75", "sm_80", "sm_90")
MATH = ["exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan", "tanh",
        "sinh", "cosh", "sigmoid", "sqrt", "abs", "floor"]
RNG = np.random.default_rng(0)


_OPEN = []  # set while building an "open:" case: every first axis is declared None


def _v(name, shape, dtype="float32"):
    if _OPEN and shape:
        shape = (None,) + tuple(shape[1:])
    return Variable(name, shape=shape, dtype=dtype)


def _data(shape, dtype="float32", lo=-2.0, hi=2.0):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return RNG.random(shape) < 0.5
    if dtype.kind == "i":
        return RNG.integers(-5, 6, size=shape).astype(dtype)
    return RNG.uniform(lo, hi, size=shape).astype(dtype)


def _math_case(fn, dtype):
    def build():
        x = _v("x", (3, 67), dtype)
        positive = fn in ("log", "log2", "log10", "sqrt")
        lo = 0.1 if positive else (-0.9 if fn == "log1p" else -3.0)
        return getattr(sg, fn)(x), {"x": _data((3, 67), dtype, lo, 3.0)}
    return build


def _binary(dtype):
    def build():
        a, b = _v("a", (5, 1, 7), dtype), _v("b", (4, 7), dtype)
        out = [a + b, a * b - b, sg.maximum(a, b), sg.minimum(a, b), a > b]
        if np.dtype(dtype).kind == "f":
            out += [a / (b * b + 1.0), a ** 2.0]
        return out, {"a": _data((5, 1, 7), dtype), "b": _data((4, 7), dtype)}
    return build


def _reduce(fn, shape, axis, dtype="float32"):
    def build():
        x = _v("x", shape, dtype)
        return getattr(sg, fn)(sg.exp(x) if dtype == "float32" else x, axis), \
            {"x": _data(shape, dtype)}
    return build


def _movement():
    x = _v("x", (6, 4, 5))
    out = [sg.transpose(x, (2, 0, 1)) * 2.0, sg.reshape(x, (24, 5)) + 1.0, x[1:5:2, :, ::-1],
           sg.broadcast_to(x[:, :1, :], (6, 4, 5)) - x]
    return out, {"x": _data((6, 4, 5))}


def _matmul(dtype, a_shape, b_shape):
    def build():
        a, b = _v("a", a_shape, dtype), _v("b", b_shape, dtype)
        return sg.matmul(a, b), {"a": _data(a_shape, dtype), "b": _data(b_shape, dtype)}
    return build


def _concat():
    a, b = _v("a", (3, 5)), _v("b", (3, 2), "float64")
    return sg.concatenate([sg.exp(a), b * 2.0], axis=1), {"a": _data((3, 5)), "b": _data((3, 2), "float64")}


def _casts():
    x, i = _v("x", (40,), "float64"), _v("i", (40,), "int32")
    out = [sg.astype(x, "float32"), sg.astype(x, "int64"), sg.astype(i, "float64") + x,
           sg.astype(x > 0, "int32"), sg.astype(i, "bool")]
    return out, {"x": _data((40,), "float64", -50, 50), "i": _data((40,), "int32")}


def _where():
    c, a, b = _v("c", (8, 9), "bool"), _v("a", (8, 9)), _v("b", (9,))
    return sg.where(c, a, b * 3.0), {"c": _data((8, 9), "bool"), "a": _data((8, 9)), "b": _data((9,))}


def _take_argmax():
    x, idx = _v("x", (6, 10)), _v("idx", (4,), "int64")
    return [sg.take(x, idx, axis=1) + 1.0, sg.argmax(x, axis=1), sg.argmin(x, axis=0)], \
        {"x": _data((6, 10)), "idx": np.array([0, 9, -1, 3])}


def _mlp():
    x, w, b = _v("x", (32, 20)), _v("w", (20, 16)), _v("b", (16,))
    h = sg.relu(sg.matmul(x, w) + b)
    return [sg.softmax(h, axis=1), sg.sum(h * h)], {"x": _data((32, 20)), "w": _data((20, 16)),
                                                     "b": _data((16,))}


CASES = {f"{fn}-{dt}": _math_case(fn, dt) for fn in MATH for dt in ("float32", "float64")}
CASES.update({
    "pow-float32": lambda: (_v("x", (50,), "float32") ** _v("y", (50,)),
                            {"x": _data((50,), "float32", 0.1, 3), "y": _data((50,))}),
    "binary-float32": _binary("float32"), "binary-float64": _binary("float64"),
    "binary-int32": _binary("int32"), "binary-int64": _binary("int64"),
    "sum-all": _reduce("sum", (300_000,), None), "sum-rows": _reduce("sum", (37, 65), 1),
    "sum-cols": _reduce("sum", (37, 65), 0), "mean-middle": _reduce("mean", (4, 30, 5), 1),
    "max-all-f64": _reduce("max", (1000, 7), None, "float64"),
    "min-axes": _reduce("min", (6, 5, 4), (0, 2)), "sum-int": _reduce("sum", (33, 9), 1, "int32"),
    "movement": _movement, "matmul-f32": _matmul("float32", (33, 20), (20, 17)),
    "matmul-f64-batch": _matmul("float64", (3, 5, 18), (18, 4)),
    "matmul-vec": _matmul("float32", (19,), (19, 6)), "matmul-int": _matmul("int64", (7, 5), (5, 3)),
    "concat": _concat, "casts": _casts, "where": _where, "take-argmax": _take_argmax,
    "mlp": _mlp,
})


def _outputs(out):
    return out if isinstance(out, list) else [out]


# --- the child process ------------------------------------------------------------------------

def _generate(names, out_dir, arch):
    """Write NAME.ptx per case (or NAME.err), noting each case before it starts."""
    for name in names:
        with open(os.path.join(out_dir, "started"), "a") as log:
            log.write(name + "\n")
        try:
            _OPEN[:] = [True] if name.startswith("open:") else []
            case = name.removeprefix("open:").removeprefix("libdevice:")
            out, _ = CASES[case]()
            f = sg.compile(_outputs(out), target="cuda", arch=arch, name="case",
                           libdevice=name.startswith("libdevice:") or None)
            with open(os.path.join(out_dir, name + ".ptx"), "w") as fh:
                fh.write(f.ptx)
            with open(os.path.join(out_dir, name + ".symbols"), "w") as fh:
                fh.write(" ".join(f._latest.program.symbols))
        except Exception as exc:  # reported by the test that owns the case
            with open(os.path.join(out_dir, name + ".err"), "w") as fh:
                fh.write(f"{type(exc).__name__}: {exc}")


def generate_ptx(names, out_dir, arch="sm_75"):
    """PTX for the named cases, one child process at a time; a case that crashes the child is
    recorded as such and the rest continue in a new child."""
    os.makedirs(out_dir, exist_ok=True)
    todo = list(names)
    while todo:
        open(os.path.join(out_dir, "started"), "w").close()
        proc = subprocess.run([sys.executable, __file__, out_dir, arch, json.dumps(todo)],
                              capture_output=True, text=True, timeout=600)
        with open(os.path.join(out_dir, "started")) as fh:
            started = fh.read().split()
        if proc.returncode == 0:
            break
        crashed = started[-1] if started else todo[0]
        with open(os.path.join(out_dir, crashed + ".err"), "w") as fh:
            fh.write(f"the code generator crashed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        todo = todo[todo.index(crashed) + 1:]


# Shape-generic PTX: the same graphs with every first axis declared None. The movement case
# reshapes to a fixed shape, which needs concrete sizes.
OPEN_CASES = [f"open:{name}" for name in CASES if name != "movement"]


def _libdevice():
    from symgraph.codegen.nvptx import find_libdevice

    try:
        return find_libdevice(True)
    except sg.SymgraphError:
        return None


LIBDEVICE = _libdevice()
# Math through the CUDA toolkit's libdevice (compile(..., libdevice=True)), where it is found.
LIBDEVICE_CASES = [f"libdevice:{name}" for name in CASES
                   if name.split("-")[0] in MATH + ["pow", "mlp"]] if LIBDEVICE else []


@pytest.fixture(scope="module")
def ptx_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ptx"))
    generate_ptx(list(CASES) + OPEN_CASES + LIBDEVICE_CASES, out)
    return out


def _read(out_dir, name):
    err = os.path.join(out_dir, name + ".err")
    if os.path.exists(err):
        pytest.fail(open(err).read())
    with open(os.path.join(out_dir, name + ".ptx")) as fh:
        return fh.read()


def _assemble(path, arch, tmp):
    proc = subprocess.run(["ptxas", f"-arch={arch}", path, "-o", os.path.join(tmp, f"{arch}.cubin")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"ptxas -arch={arch} failed:\n{proc.stderr}"


needs_ptxas = pytest.mark.skipif(shutil.which("ptxas") is None,
                                 reason="ptxas (CUDA toolkit) is not on PATH")


@pytest.mark.parametrize("name", sorted(CASES))
def test_ptx_generated(ptx_dir, name):
    ptx = _read(ptx_dir, name)
    assert ".entry" in ptx and ".target sm_75" in ptx
    # No call may leave the module: the GPU has no libm to link against.
    assert ".extern" not in ptx


@needs_ptxas
@pytest.mark.parametrize("name", sorted(CASES))
def test_ptx_assembles(ptx_dir, name, tmp_path):
    _read(ptx_dir, name)
    for arch in ARCHS:
        _assemble(os.path.join(ptx_dir, name + ".ptx"), arch, str(tmp_path))


@needs_ptxas
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptx_for_each_arch(arch, tmp_path):
    names = ["mlp", "sum-all", "exp-float64", "pow-float32"]
    generate_ptx(names, str(tmp_path), arch)
    for name in names:
        ptx = _read(str(tmp_path), name)
        assert f".target {arch}" in ptx
        _assemble(os.path.join(str(tmp_path), name + ".ptx"), arch, str(tmp_path))


@pytest.mark.parametrize("name", OPEN_CASES)
def test_open_sizes_give_ptx_at_compile_time(ptx_dir, name, tmp_path):
    """Declared dtypes and None sizes: one PTX for every size, its kernels reading the sizes
    from their last parameter; assembled like the rest."""
    ptx = _read(ptx_dir, name)
    with open(os.path.join(ptx_dir, name + ".symbols")) as fh:
        assert fh.read().split(), "compiled per shape, not shape-generic"
    assert ".entry" in ptx and ".extern" not in ptx
    if shutil.which("ptxas"):
        _assemble(os.path.join(ptx_dir, name + ".ptx"), "sm_80", str(tmp_path))


@pytest.mark.skipif(LIBDEVICE is None, reason="no CUDA toolkit libdevice*.bc found")
@pytest.mark.parametrize("name", LIBDEVICE_CASES or ["none"])
def test_libdevice_math_links_in(ptx_dir, name, tmp_path):
    """libdevice=True: math from the toolkit's bitcode, inlined; nothing left to link."""
    from symgraph.codegen.nvptx import LIBDEVICE_FUNCTIONS

    ptx = _read(ptx_dir, name)
    assert ".entry" in ptx and ".extern" not in ptx
    case = name.removeprefix("libdevice:")
    if case.split("-")[0] in LIBDEVICE_FUNCTIONS:  # others keep symgraph's math library
        assert ptx != _read(ptx_dir, case)
    if shutil.which("ptxas"):
        _assemble(os.path.join(ptx_dir, name + ".ptx"), "sm_80", str(tmp_path))


def test_libdevice_option_errors(tmp_path):
    x = Variable("x", (4,), "float32")
    with pytest.raises(sg.SymgraphError, match="libdevice"):
        sg.compile(sg.exp(x), target="cuda", libdevice=str(tmp_path / "missing.bc"))
    with pytest.raises(sg.SymgraphError, match="target='cuda'"):
        sg.compile(sg.exp(x), libdevice=True)


def test_an_open_size_graph_that_needs_sizes_says_why():
    x = Variable("x", (None, 4, 5), "float32")
    f = sg.compile(sg.reshape(x, (24, 5)) + 1.0, target="cuda")
    with pytest.raises(sg.SymgraphError, match="concrete sizes"):
        f.ptx


def test_no_contraction_in_ptx(ptx_dir):
    """mul and add round separately (.rn), like the CPU code: ptxas may not fuse them."""
    ptx = _read(ptx_dir, "binary-float32")
    assert "mul.rn.f32" in ptx and "add.rn.f32" in ptx


if __name__ == "__main__":
    _generate(json.loads(sys.argv[3]), sys.argv[1], sys.argv[2])
