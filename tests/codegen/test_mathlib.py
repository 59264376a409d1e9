"""mathlib: accuracy against numpy, IEEE special values, no libm or forbidden intrinsics,
SIMD code on the host, and PTX that ptxas accepts."""
import re
import shutil
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from llvmlite import ir

from symgraph.codegen import mathlib
from symgraph.codegen.mathlib import MATH_FUNCTIONS, emit_math

# Max error in ULP of the correctly rounded result, (float32, float64): the table in
# docs/math.md. The float32 reference is numpy's float64 function rounded to float32; the
# float64 reference is numpy's long double function rounded to float64.
ULP_BOUNDS = {
    "exp": (1, 1), "exp2": (1, 1), "expm1": (2, 2), "log": (1, 1), "log2": (1, 1),
    "log10": (1, 1), "log1p": (1, 2), "sin": (1, 1), "cos": (1, 1), "tan": (4, 3),
    "tanh": (2, 3), "sinh": (2, 2), "cosh": (2, 1), "sigmoid": (2, 2), "atan": (2, 2),
    "asin": (2, 2), "acos": (1, 1), "pow": (2, 2),
}
# |x| below which sin/cos/tan meet the bounds (Cody-Waite reduction); see docs/math.md
TRIG_RANGE = {np.float32: mathlib.TRIG_RANGE[32], np.float64: mathlib.TRIG_RANGE[64]}
DTYPES = [np.float32, np.float64]
F64_REFERENCE_OK = np.finfo(np.longdouble).nmant > 52


def _sigmoid(x):
    one = x.dtype.type(1)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, one / (one + e), e / (one + e))


NUMPY = {
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log2": np.log2,
    "log10": np.log10, "log1p": np.log1p, "sin": np.sin, "cos": np.cos, "tan": np.tan,
    "tanh": np.tanh, "sinh": np.sinh, "cosh": np.cosh, "sigmoid": _sigmoid,
    "atan": np.arctan, "asin": np.arcsin, "acos": np.arccos, "pow": np.power,
}


def reference(name, dtype, *args):
    """The correctly rounded result, up to the reference's own (much smaller) error."""
    wide = np.longdouble if dtype == np.float64 else np.float64
    with np.errstate(all="ignore"):
        return NUMPY[name](*[a.astype(wide) for a in args]).astype(dtype)


def ulp_distance(a, b):
    """Distance in representable values (so 0 and the smallest subnormal are 1 apart)."""
    itype = np.int64 if a.dtype == np.float64 else np.int32
    sign = np.int64(2 ** (8 * a.itemsize - 1) - 1)

    def ordered(x):
        bits = x.view(itype).astype(np.int64)
        return np.where(bits < 0, -(bits & sign), bits)

    return np.abs(ordered(a) - ordered(b))


def assert_matches(name, dtype, args, got, want, bound):
    """nan-ness, infinities and the sign of zero exactly; everything else within `bound` ulp."""
    def where(mask):
        i = np.flatnonzero(mask)[:5]
        return "; ".join(f"{name}{tuple(a[j] for a in args)} = {got[j]!r}, want {want[j]!r}"
                         for j in i)

    nan_got, nan_want = np.isnan(got), np.isnan(want)
    assert not np.any(nan_got != nan_want), "nan mismatch: " + where(nan_got != nan_want)
    inf = np.isinf(got) | np.isinf(want)
    assert not np.any(inf & (got != want)), "infinity mismatch: " + where(inf & (got != want))
    zeros = (got == 0) & (want == 0)
    bad_zero = zeros & (np.signbit(got) != np.signbit(want))
    assert not np.any(bad_zero), "sign of zero: " + where(bad_zero)
    finite = ~(nan_got | inf)
    dist = np.where(finite, ulp_distance(got, want), 0)
    assert dist.max(initial=0) <= bound, (
        f"{name} {np.dtype(dtype).name}: {dist.max()} ulp > {bound}: " + where(dist == dist.max()))


@pytest.fixture(scope="module", params=["inlined", "outlined"])
def loops(request):
    """Every function compiled once per dtype as out[i] = f(in[i], ...): inlined into the
    loop, and as one shared function whose SIMD variants the vectorizer calls."""
    outlined = request.param == "outlined"
    return {dtype: mathlib._jit_loops(list(MATH_FUNCTIONS), dtype, outlined=outlined)
            for dtype in DTYPES}


def log_uniform(rng, n, lo, hi, dtype, signed=True):
    """Magnitudes 2**lo .. 2**hi, log-uniformly, random signs."""
    fi = np.finfo(dtype)
    lo = max(lo, np.log2(float(fi.smallest_subnormal)))
    hi = min(hi, np.log2(float(fi.max)))
    x = np.exp2(rng.uniform(lo, hi, n)).astype(dtype)
    return x * rng.choice(np.array([-1, 1], dtype), n) if signed else x


# magnitudes (log2) for the wide random test: past the overflow and underflow ends too
DOMAINS = {
    "exp": (-40, 10.5), "exp2": (-40, 11), "expm1": (-40, 10.5), "log": (-1100, 1100),
    "log2": (-1100, 1100), "log10": (-1100, 1100), "log1p": (-60, 1100), "tanh": (-40, 6),
    "sinh": (-40, 10.5), "cosh": (-40, 10.5), "sigmoid": (-40, 10.5), "atan": (-40, 200),
    "asin": (-40, 0.5), "acos": (-40, 0.5),
}


def random_args(name, dtype, rng, n=40000):
    if name == "pow":
        x = log_uniform(rng, n, -30, 30, dtype)
        log2x = np.log2(np.abs(x.astype(np.float64)))
        emax = 1100 if dtype == np.float64 else 160
        y = rng.uniform(-emax, emax, n) / np.where(log2x == 0, 1, log2x)  # results near range
        y = np.where(rng.random(n) < 0.3, np.round(y), y).astype(dtype)  # negative x needs ints
        small = rng.random(n) < 0.3
        y[small] = log_uniform(rng, small.sum(), -20, 4, dtype)
        return x, y
    if name in ("sin", "cos", "tan"):
        x = log_uniform(rng, n, -40, np.log2(TRIG_RANGE[dtype]), dtype)
    else:
        x = log_uniform(rng, n, *DOMAINS[name], dtype)
    if name == "log1p":  # the interesting part is (-1, 0]
        x[: n // 4] = -log_uniform(rng, n // 4, -60, 0, dtype, signed=False)
    return (x,)


def _skip_f64_without_long_double(dtype):
    if dtype == np.float64 and not F64_REFERENCE_OK:
        pytest.skip("float64 reference needs an extended long double on this platform")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(MATH_FUNCTIONS))
def test_wide_random_inputs(loops, name, dtype):
    _skip_f64_without_long_double(dtype)
    rng = np.random.default_rng(zlib.crc32(f"{name}/{np.dtype(dtype).name}".encode()))
    args = random_args(name, dtype, rng)
    got = loops[dtype][name](*args)
    bound = ULP_BOUNDS[name][dtype == np.float64]
    assert_matches(name, dtype, args, got, reference(name, dtype, *args), bound)


def edge_values(dtype):
    """Special operands, the ends of each range, thresholds, and their neighbours."""
    fi = np.finfo(dtype)
    base = [0.0, float(fi.smallest_subnormal), float(fi.smallest_normal - fi.smallest_subnormal),
            float(fi.smallest_normal), float(fi.max), 1.0, 0.5, 2.0, 1e-8, 1e-30, 3e38, 1e300,
            # exp/exp2/sinh/cosh overflow and underflow thresholds, both precisions
            88.72283905206835, 89.41598629223294, 103.97207708399179, 87.33654475055310,
            709.782712893384, 710.4758600739439, 745.1332191019411, 708.3964185322641,
            128.0, 149.0, 150.0, 1024.0, 1074.0, 1075.0,
            # branch points: tanh saturation, atan and asin splits
            9.01, 10.0, 19.06, 20.0, 2.414213562373095, 0.41421356237309503, 0.625]
    base += [k * np.pi / 2 for k in range(1, 64)] + [k * np.pi / 2 for k in (1000, 12345, 99999)]
    with np.errstate(over="ignore"):
        x = np.array(base, dtype=np.float64).astype(dtype)
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        up, down = np.nextafter(x, dtype(np.inf)), np.nextafter(x, dtype(-np.inf))
    x = np.concatenate([x, up, down])
    x = np.concatenate([x, -x, np.array([np.nan, np.inf, -np.inf], dtype)])
    return x[np.isfinite(x) | np.isnan(x) | np.isinf(x)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", [n for n, a in MATH_FUNCTIONS.items() if a == 1])
def test_edge_values(loops, name, dtype):
    _skip_f64_without_long_double(dtype)
    x = edge_values(dtype)
    if name in ("sin", "cos", "tan"):
        x = x[~(np.abs(x) > TRIG_RANGE[dtype])]
    got = loops[dtype][name](x)
    bound = ULP_BOUNDS[name][dtype == np.float64]
    assert_matches(name, dtype, (x,), got, reference(name, dtype, x), bound)


POW_SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 2.5, -2.5, np.inf, -np.inf,
                np.nan, 1e30, -1e30, 1e-30, 7.0, 1 / 3, 2.0 ** 24 + 2, -(2.0 ** 24 + 2), 2.0 ** 60,
                -(2.0 ** 60), 1e-45, -1e-45, 3e38]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_pow_special_cases_match_numpy(loops, dtype):
    """Every pair of special operands, against numpy's own power in the same dtype."""
    with np.errstate(over="ignore", under="ignore"):
        values = np.array(POW_SPECIALS, dtype=dtype)
    x, y = (a.ravel() for a in np.meshgrid(values, values))
    got = loops[dtype]["pow"](x, y)
    with np.errstate(all="ignore"):
        want = np.power(x, y)
    # numpy's own result may be 1 ulp off the correctly rounded one
    assert_matches("pow", dtype, (x, y), got, want, ULP_BOUNDS["pow"][dtype == np.float64] + 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_named_special_values(loops, dtype):
    f = loops[dtype]
    t = np.dtype(dtype).type

    def one(name, *args):
        return f[name](*[np.array([a], dtype) for a in args])[0]

    assert one("log", 0.0) == -np.inf and np.isnan(one("log", -1.0))
    assert one("log", 1.0) == 0.0 and one("log", np.inf) == np.inf
    assert one("log1p", -1.0) == -np.inf and np.isnan(one("log1p", -1.5))
    assert np.signbit(one("log1p", -0.0)) and np.signbit(one("expm1", -0.0))
    assert one("expm1", -np.inf) == -1.0 and one("exp", -np.inf) == 0.0
    assert one("sigmoid", -1000.0) == 0.0 and one("sigmoid", 1000.0) == 1.0
    assert one("sigmoid", -np.inf) == 0.0 and one("sigmoid", np.inf) == 1.0
    assert one("tanh", -np.inf) == -1.0 and np.signbit(one("tanh", -0.0))
    assert one("atan", np.inf) == t(np.pi / 2) and one("atan", -np.inf) == -t(np.pi / 2)
    assert np.isnan(one("asin", 1.5)) and np.isnan(one("sin", np.inf))
    assert one("pow", np.nan, 0.0) == 1.0 and one("pow", 1.0, np.nan) == 1.0
    assert one("pow", -1.0, np.inf) == 1.0 and np.isnan(one("pow", -2.0, 0.5))
    assert one("pow", -0.0, -3.0) == -np.inf and one("pow", -2.0, 3.0) == -8.0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_trig_past_the_accurate_range_stays_bounded(loops, dtype):
    x = log_uniform(np.random.default_rng(7), 4000, np.log2(TRIG_RANGE[dtype]), 127, dtype)
    x = np.concatenate([x, np.array([np.finfo(dtype).max, -np.finfo(dtype).max], dtype)])
    for name in ("sin", "cos"):
        got = loops[dtype][name](x)
        assert np.all(np.abs(got) <= 1), name
    assert np.all(np.isfinite(loops[dtype]["tan"](x)))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_outlined_trig_is_exact_lane_by_lane_past_the_range(dtype):
    """Outlined sin/cos/tan send only the far lanes to the C library: near lanes in the same
    vector keep the polynomial's result, far lanes get numpy's."""
    inlined = mathlib._jit_loops(["sin", "cos", "tan"], dtype)
    outlined = mathlib._jit_loops(["sin", "cos", "tan"], dtype, outlined=True)
    rng = np.random.default_rng(11)
    near = log_uniform(rng, 999, -10, np.log2(TRIG_RANGE[dtype]), dtype)
    far = log_uniform(rng, 999, np.log2(TRIG_RANGE[dtype]) + 0.1, 100, dtype)
    x = np.where(rng.random(999) < 0.1, far, near)  # mixed within every vector
    is_far = np.abs(x) > TRIG_RANGE[dtype]
    assert 20 < is_far.sum() < 500
    for name in ("sin", "cos", "tan"):
        got = outlined[name](x)
        np.testing.assert_array_equal(got[~is_far], inlined[name](x[~is_far]), err_msg=name)
        assert_matches(name, dtype, (x[is_far],), got[is_far],
                       reference(name, dtype, x[is_far]), ULP_BOUNDS[name][dtype == np.float64])


@settings(max_examples=25, deadline=None)
@given(data=st.data())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_hypothesis_any_float(loops, dtype, data):
    """Arbitrary floats, subnormals and specials included, for every function."""
    _skip_f64_without_long_double(dtype)
    width = 32 if dtype == np.float32 else 64
    elements = st.floats(width=width, allow_nan=True, allow_infinity=True)
    x = data.draw(hnp.arrays(dtype, 16, elements=elements))
    y = data.draw(hnp.arrays(dtype, 16, elements=elements))
    for name, arity in MATH_FUNCTIONS.items():
        args = (x, y)[:arity]
        if name in ("sin", "cos", "tan"):
            args = (np.where(np.abs(x) > TRIG_RANGE[dtype], dtype(0.5), x),)
        got = loops[dtype][name](*args)
        assert_matches(name, dtype, args, got, reference(name, dtype, *args),
                       ULP_BOUNDS[name][dtype == np.float64])


# --- the IR itself --------------------------------------------------------------------------------

ALLOWED_INTRINSICS = {"llvm.fabs", "llvm.sqrt", "llvm.floor", "llvm.ceil", "llvm.trunc",
                      "llvm.rint", "llvm.fma", "llvm.copysign", "llvm.minnum", "llvm.maxnum"}
FORBIDDEN = re.compile(r"@llvm\.(exp|exp2|exp10|log|log2|log10|sin|cos|tan|pow|powi|tanh|sinh|"
                       r"cosh|atan|asin|acos|atan2|ldexp|frexp)\.|"
                       r"@(exp|exp2|expm1|log|log2|log10|log1p|sin|cos|tan|tanh|sinh|cosh|pow|"
                       r"atan|asin|acos)f?\b")


def _module_with_every_function():
    module = ir.Module(name="all_math")
    for fty in (ir.FloatType(), ir.DoubleType()):
        fn = ir.Function(module, ir.FunctionType(fty, [fty, fty]), f"use_{fty}")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        acc = ir.Constant(fty, 0.0)
        for name, arity in MATH_FUNCTIONS.items():
            acc = b.fadd(acc, emit_math(b, name, *fn.args[:arity]))
        b.ret(acc)
    return module


def test_ir_uses_only_allowed_intrinsics_and_no_branches():
    module = _module_with_every_function()
    text = str(module)
    declared = set(re.findall(r"declare [^@]*@\"?([\w.]+)", text))
    assert {re.sub(r"\.f(32|64)$", "", d) for d in declared} <= ALLOWED_INTRINSICS, declared
    assert not FORBIDDEN.search(text)
    for fn in module.functions:
        if fn.name.startswith("symgraph."):
            assert fn.linkage == "internal" and "alwaysinline" in fn.attributes
            assert len(fn.blocks) == 1 and " br " not in str(fn), f"{fn.name} branches"
    defined = {fn.name for fn in module.functions if fn.name.startswith("symgraph.")}
    assert defined == {f"symgraph.{n}.{p}" for n in MATH_FUNCTIONS for p in ("f32", "f64")}


def test_optimized_ir_has_no_libm_calls():
    """LLVM must not re-recognize the polynomials as exp/log/... calls at O3."""
    engine, mod, _ = mathlib._host_compile(_module_with_every_function())
    text = str(mod)
    del engine  # it owns mod, so it lives until the text is taken
    assert not FORBIDDEN.search(text)


def test_emit_math_defines_each_function_once_and_checks_arguments():
    module = ir.Module()
    fn = ir.Function(module, ir.FunctionType(ir.FloatType(), [ir.FloatType(), ir.DoubleType()]),
                     "f")
    b = ir.IRBuilder(fn.append_basic_block())
    x, d = fn.args
    first, second = emit_math(b, "exp", x), emit_math(b, "exp", x)
    assert first.callee is second.callee is module.globals["symgraph.exp.f32"]
    assert emit_math(b, "exp", d).callee.name == "symgraph.exp.f64"
    with pytest.raises(ValueError, match="unknown math function"):
        emit_math(b, "erfc", x)
    with pytest.raises(TypeError, match="takes 2"):
        emit_math(b, "pow", x)
    with pytest.raises(TypeError, match="float or double"):
        emit_math(b, "pow", x, d)
    with pytest.raises(TypeError, match="float or double"):
        emit_math(b, "exp", ir.Constant(ir.IntType(32), 1))


def _host_features():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    return llvm.get_host_cpu_features()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_loops_vectorize_to_packed_simd(dtype):
    if not _host_features().get("avx2"):
        pytest.skip("host CPU lacks AVX2")
    fty = ir.FloatType() if dtype == np.float32 else ir.DoubleType()
    engine, mod, tm = mathlib._host_compile(mathlib._loop_module(list(MATH_FUNCTIONS), fty))
    asm = tm.emit_assembly(mod)
    del engine
    suffix = "ps" if dtype == np.float32 else "pd"
    packed = re.compile(rf"\bv(fn?m(add|sub)\d+|mul|add){suffix}\s[^\n]*%[yz]mm")
    bodies = re.split(r"\n(loop_\w+):", asm)[1:]
    found = dict(zip(bodies[::2], bodies[1::2]))
    assert set(found) == {f"loop_{n}" for n in MATH_FUNCTIONS}
    for name, body in found.items():
        assert packed.search(body), f"{name} did not vectorize"
        assert not re.search(r"\bcall", body), f"{name} calls out"


NVPTX_SCRIPT = textwrap.dedent("""
    import sys
    import llvmlite.binding as llvm
    from llvmlite import ir
    from symgraph.codegen.mathlib import MATH_FUNCTIONS, emit_math

    fty = ir.DoubleType() if sys.argv[1] == "64" else ir.FloatType()
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    triple = "nvptx64-nvidia-cuda"
    module = ir.Module("k")
    module.triple = triple
    ptr, i32 = ir.PointerType(), ir.IntType(32)
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr, ptr, ptr]), "kernel")
    fn.calling_convention = "ptx_kernel"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    tid = b.call(ir.Function(module, ir.FunctionType(i32, []),
                             "llvm.nvvm.read.ptx.sreg.tid.x"), [])
    x, y = (b.load(b.gep(p, [tid], source_etype=fty), typ=fty) for p in fn.args[:2])
    acc = ir.Constant(fty, 0.0)
    for name, arity in MATH_FUNCTIONS.items():
        acc = b.fadd(acc, emit_math(b, name, *(x, y)[:arity]))
    b.store(acc, b.gep(fn.args[2], [tid], source_etype=fty))
    b.ret_void()
    tm = llvm.Target.from_triple(triple).create_target_machine(cpu="sm_80", opt=3)
    module.data_layout = str(tm.target_data)
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(mod, pb)
    open(sys.argv[2], "w").write(tm.emit_assembly(mod))
""")


@pytest.mark.parametrize("bits", ["32", "64"])
def test_nvptx_kernel_assembles_with_ptxas(tmp_path, bits):
    """In a subprocess: NVPTX selection failures abort the process instead of raising."""
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not on PATH")
    ptx = tmp_path / f"math{bits}.ptx"
    run = subprocess.run([sys.executable, "-c", NVPTX_SCRIPT, bits, str(ptx)],
                         check=False, capture_output=True, text=True, timeout=120)
    if "No available targets" in run.stderr:
        pytest.skip("this llvmlite build has no NVPTX target")
    assert run.returncode == 0, run.stderr[-3000:]
    text = ptx.read_text()
    assert not re.search(r"\b(call|ex2|lg2|sin|cos)\.", text)
    done = subprocess.run([ptxas, "-arch=sm_80", str(ptx), "-o", str(tmp_path / "math.cubin")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
