"""Vectorizable elementwise math (exp, log, sin, pow, ...) emitted as plain LLVM IR.

Each function is a range reduction plus a minimax polynomial written with arithmetic, bit
casts, compares and selects only. There are no libm calls and no llvm.exp/log/sin/...
intrinsics: those stop LLVM's loop vectorizer on x86 and abort instruction selection on NVPTX.
Bodies are branch-free, so once inlined into a loop the vectorizer turns it into SIMD code.
Accuracy and range limits are measured in docs/math.md.
"""
from __future__ import annotations

import functools
import math
import struct
from decimal import Decimal, localcontext

from llvmlite import ir

MATH_FUNCTIONS: dict[str, int] = {
    "exp": 1, "exp2": 1, "expm1": 1, "log": 1, "log2": 1, "log10": 1, "log1p": 1,
    "sin": 1, "cos": 1, "tan": 1, "tanh": 1, "sinh": 1, "cosh": 1, "sigmoid": 1,
    "atan": 1, "asin": 1, "acos": 1, "pow": 2,
}

# |x| up to which sin/cos/tan meet their accuracy bounds (Cody-Waite reduction, no
# Payne-Hanek): a caller needing numpy's results past it must handle those elements itself.
TRIG_RANGE = {32: 2.0 ** 18, 64: 2.0 ** 45}

F32, F64 = ir.FloatType(), ir.DoubleType()
INF, NAN = float("inf"), float("nan")

# Constants to 45 digits; _split turns each into a head and tails of the working precision.
PIO2 = "1.5707963267948966192313216916397514420985847"
PI = "3.1415926535897932384626433832795028841971694"
LN2 = "0.693147180559945309417232121458176568075500134"
LOG2E = "1.44269504088896340735992468100189213742664595"
TWO_LOG2E = "2.88539008177792681471984936200378427485329191"
LOG10_2 = "0.301029995663981195213738894724493026768189881"
LOG10_E = "0.434294481903251827651128918916605082294397006"
TWO_OVER_PI = "0.636619772367581343075535053490057448137838583"

# Minimax coefficients, lowest degree first. Each was computed by a Remez exchange for the
# smallest relative error on the stated interval, in mpmath at 60 digits, then rounded to
# double (float32 rounds these again when emitted). The script is in docs/math.md.
_COEFFS = {
    # (e^r - 1 - r) / r^2 on |r| <= ln2/2; err 2^-52.1 (f64), 2^-22.9 (f32)
    "exp": {
        64: (0.5000000000000001, 0.16666666666666644, 0.04166666666662431,
             0.008333333333356197, 0.0013888888917138404, 0.0001984126978467126,
             2.4801521396297948e-05, 2.755735550294003e-06, 2.7620046671680496e-07,
             2.506817006144737e-08),
        32: (0.49999999552593005, 0.1666657728419762, 0.04166685341952604,
             0.008363146345587545, 0.001390128759715875),
    },
    # (sin(r)/r - 1) / z, z = r^2 <= (pi/4)^2; err 2^-52.8, 2^-23.0
    "sin": {
        64: (-0.16666666666666666, 0.008333333333330901, -0.00019841269836691342,
             2.7557316069757386e-06, -2.505112534698064e-08, 1.5917680581315447e-10),
        32: (-0.1666666462466657, 0.008332742638116588, -0.00019586854432660145),
    },
    # (cos(r) - 1 + z/2) / z^2; err 2^-54.8, 2^-24.3
    "cos": {
        64: (0.041666666666666664, -0.0013888888888887372, 2.4801587298730483e-05,
             -2.755731725431294e-07, 2.0876142775529797e-09, -1.1382388703229385e-11),
        32: (0.04166666463135651, -0.0013888298621209949, 2.454710182644023e-05),
    },
    # (2 atanh(s)/s - 2) / z, z = s^2 <= ((sqrt2-1)/(sqrt2+1))^2; err 2^-51.0
    "log": {
        64: (0.666666666666667, 0.3999999999989918, 0.28571428626106155, 0.22222211115828489,
             0.1818289036924309, 0.15331684003581109, 0.14616875727280979),
    },
    # (2 atanh(s)/s - 2 - 2z/3) / z^2: the tail of pow's double-double log; err 2^-57.6
    "logtail": {
        64: (0.4, 0.2857142857142937, 0.22222222221655236, 0.1818181833551788,
             0.15384594951120162, 0.13334805224565216, 0.11706224150571651,
             0.11723287938480628),
    },
    # (log1p(f) - f) / f^2 on sqrt(1/2)-1 <= f <= sqrt(2)-1: float32 log without a division;
    # err 2^-24.3
    "log1p": {
        32: (-0.4999999764450562, 0.33333325354305926, -0.25000778697790205,
             0.20001636286574848, -0.16627093461413198, 0.1419614535527467,
             -0.1311403669674014, 0.1277733669577252, -0.07778042944802199),
    },
    # the "log" fit at degree 3 scaled by log2(e): (2/ln2 (atanh(u)/u - 1)) / z for float32
    # pow's u^3 term; err 2^-29.1
    "log2_pow": {
        32: tuple(c * 1.4426950408889634 for c in (
            0.6666666655408089, 0.4000012209547734, 0.2855079760149683, 0.23330993686669727)),
    },
    # (atan(t)/t - 1) / z, z = t^2 <= tan(pi/8)^2; err 2^-53.3, 2^-24.4
    "atan": {
        64: (-0.3333333333333333, 0.1999999999999561, -0.14285714284683718,
             0.11111111016529705, -0.09090904626114661, 0.07692184230467701,
             -0.06664525166385177, 0.05858261009942864, -0.05086003458219814,
             0.039246806198261784, -0.019194503812028578),
        32: (-0.33333331792785587, 0.19999546261916934, -0.14264121992482293,
             0.1074527101362593, -0.06456389616951722),
    },
    # (asin(s)/s - 1) / z, z = s^2 <= 1/4; err 2^-53.6, 2^-25.5
    "asin": {
        64: (0.16666666666666669, 0.07499999999998336, 0.04464285714654184,
             0.030381944124503315, 0.02237217348692974, 0.017352380249442568,
             0.0139713938252075, 0.011477452130581546, 0.010333787950028246,
             0.005411426542548732, 0.017523542206622045, -0.015039399800504115,
             0.02888322593936446),
        32: (0.16666666317978776, 0.07500098524130505, 0.044598107586112185,
             0.03111532065842355, 0.01708165129227338, 0.03379971764750818),
    },
    # (sinh(x)/x - 1) / z, z = x^2 <= 1; err 2^-58.8, 2^-29.7
    "sinh": {
        64: (0.16666666666666666, 0.0083333333333333, 0.00019841269841323517,
             2.7557319191673267e-06, 2.5052117639613202e-08, 1.6057684633952952e-10,
             7.746011419054016e-13),
        32: (0.166666666472699, 0.008333339598402484, 0.0001983812270873694,
             2.8061417124037686e-06),
    },
}


def _round(value: Decimal, bits: int) -> float:
    """Round to the working precision (float32 through struct, which rounds to nearest)."""
    x = float(value)
    return x if bits == 64 else struct.unpack("f", struct.pack("f", x))[0]


@functools.cache
def _split(digits: str, bits: int, parts: int = 2) -> tuple[float, ...]:
    """`digits` as a sum of `parts` floats, each the rounding of what the previous ones left."""
    with localcontext() as ctx:
        ctx.prec = 80
        rest, out = Decimal(digits), []
        for _ in range(parts):
            out.append(_round(rest, bits))
            rest -= Decimal(out[-1])
    return tuple(out)


def _head_split(digits: str, head_bits: int) -> tuple[float, float]:
    """A double head with only `head_bits` significant bits (so small integer multiples of it
    are exact) and a double tail."""
    value = float(digits)
    mant, exp = math.frexp(value)
    head = math.ldexp(math.floor(math.ldexp(mant, head_bits)), exp - head_bits)
    with localcontext() as ctx:
        ctx.prec = 80
        return head, float(Decimal(digits) - Decimal(head))


# ln2 with a 42-bit head: k*head is exact for the |k| < 1100 of a double's exponent range
_LN2_HEAD42 = _head_split(LN2, 42)


class _Emit:
    """Arithmetic of one float precision on one builder, so each algorithm is written once."""

    def __init__(self, builder: ir.IRBuilder, fty: ir.Type):
        self.b = builder
        self.fty = fty
        # A vector type runs the same algorithm on every lane (constants become splats).
        self.lanes = fty.count if isinstance(fty, ir.VectorType) else None
        scalar = fty.element if self.lanes else fty
        self.bits = 64 if isinstance(scalar, ir.DoubleType) else 32
        self._scalar_f, self._scalar_i = scalar, ir.IntType(self.bits)
        self.ity = ir.VectorType(self._scalar_i, self.lanes) if self.lanes else self._scalar_i
        self.mant = 52 if self.bits == 64 else 23
        self.bias = 1023 if self.bits == 64 else 127
        self.min_normal = 2.0 ** (1 - self.bias)

    # --- constants ----------------------------------------------------------------------------
    def _v(self, x):
        return x if isinstance(x, ir.Value) else self._splat(self._scalar_f, float(x))

    def i(self, v):
        return self._splat(self._scalar_i, v)

    def _splat(self, ty, value):
        c = ir.Constant(ty, value)
        return ir.Constant(ir.VectorType(ty, self.lanes), [c] * self.lanes) if self.lanes else c

    def split(self, digits, parts=2):
        return _split(digits, self.bits, parts)

    def coeffs(self, name):
        return _COEFFS[name][self.bits]

    # --- float arithmetic ---------------------------------------------------------------------
    def add(self, a, b):
        return self.b.fadd(self._v(a), self._v(b))

    def sub(self, a, b):
        return self.b.fsub(self._v(a), self._v(b))

    def mul(self, a, b):
        return self.b.fmul(self._v(a), self._v(b))

    def div(self, a, b):
        return self.b.fdiv(self._v(a), self._v(b))

    def neg(self, a):
        return self.b.fneg(self._v(a))

    def fma(self, a, b, c):
        return self._intr("llvm.fma", a, b, c)

    def _intr(self, name, *args):
        args = [self._v(a) for a in args]
        fnty = ir.FunctionType(self.fty, [self.fty] * len(args))
        suffix = f"v{self.lanes}f{self.bits}" if self.lanes else f"f{self.bits}"
        module = self.b.module
        fn = module.globals.get(f"{name}.{suffix}") or ir.Function(module, fnty, f"{name}.{suffix}")
        return self.b.call(fn, args)

    def abs(self, a):
        return self._intr("llvm.fabs", a)

    def copysign(self, a, b):
        return self._intr("llvm.copysign", a, b)

    def rint(self, a):
        return self._intr("llvm.rint", a)

    def trunc(self, a):
        return self._intr("llvm.trunc", a)

    def sqrt(self, a):
        return self._intr("llvm.sqrt", a)

    def poly(self, x, coeffs):
        """Horner with explicit fma: one rounding per step, no reliance on contraction."""
        acc = self._v(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, c)
        return acc

    # --- compares and selects -----------------------------------------------------------------
    def lt(self, a, b):
        return self.b.fcmp_ordered("<", self._v(a), self._v(b))

    def le(self, a, b):
        return self.b.fcmp_ordered("<=", self._v(a), self._v(b))

    def gt(self, a, b):
        return self.b.fcmp_ordered(">", self._v(a), self._v(b))

    def ge(self, a, b):
        return self.b.fcmp_ordered(">=", self._v(a), self._v(b))

    def eq(self, a, b):
        return self.b.fcmp_ordered("==", self._v(a), self._v(b))

    def isnan(self, a):
        return self.b.fcmp_unordered("uno", a, a)

    def zero_or_nan(self, a):
        """True where a is ±0 or nan: the inputs a function returns unchanged."""
        return self.b.fcmp_unordered("==", a, self._v(0.0))

    def sel(self, cond, a, b):
        return self.b.select(cond, self._v(a), self._v(b))

    def min(self, a, c):
        """min(a, c) that gives c for a nan (x86 vminps order), keeping nan out of fptosi."""
        return self.sel(self.lt(a, c), a, c)

    def max(self, a, c):
        return self.sel(self.gt(a, c), a, c)

    def clamp(self, a, lo, hi):
        return self.min(self.max(a, lo), hi)

    # --- integers and bits ----------------------------------------------------------------------
    def to_bits(self, a):
        return self.b.bitcast(a, self.ity)

    def from_bits(self, i):
        return self.b.bitcast(i, self.fty)

    def bits_of(self, x: float):
        packed = struct.pack("<d" if self.bits == 64 else "<f", x)
        return self.i(int.from_bytes(packed, "little", signed=True))

    def to_int(self, a):
        return self.b.fptosi(a, self.ity)

    def to_float(self, i):
        return self.b.sitofp(i, self.fty)

    def pow2(self, n):
        """2**n for integer n with 1 - bias <= n <= bias, built in the exponent field."""
        return self.from_bits(self.b.shl(self.b.add(n, self.i(self.bias)), self.i(self.mant)))

    def ldexp(self, p, n):
        """p * 2**n in two exact halves, so n may reach twice the exponent range: the single
        rounding happens in the last multiply, giving correct overflow and subnormals."""
        n1 = self.b.ashr(n, self.i(1))
        return self.mul(self.mul(p, self.pow2(n1)), self.pow2(self.b.sub(n, n1)))

    def flip_sign(self, v, cond_bits):
        """v with its sign flipped where the integer cond_bits has bit 1 set (quadrant q & 2)."""
        mask = self.b.shl(self.b.and_(cond_bits, self.i(2)), self.i(self.bits - 2))
        return self.from_bits(self.b.xor(self.to_bits(v), mask))


# --- exponentials ---------------------------------------------------------------------------------

def _exp_limits(m):
    """Clamp range for exp arguments: beyond it the result is already 0 or inf (or -1)."""
    return (-760.0, 720.0) if m.bits == 64 else (-110.0, 100.0)


def _expm1_poly(m, r):
    """expm1(r) = r + r^2 Q(r) for |r| <= ln2/2; written around r so it keeps relative accuracy."""
    return m.fma(m.mul(r, r), m.poly(r, m.coeffs("exp")), r)


def _exp_core(m, x):
    """exp(x) = 2**n (1 + t): n = rint(x/ln2) and t = expm1(x - n ln2) for finite clamped x.

    Cody-Waite: r = x - n*ln2_hi is exact in the fma (both are multiples of ulp(ln2_hi) and
    |r| < 1/2), so the only reduction error is the tiny n*ln2_lo term.
    """
    ln2_hi, ln2_lo = m.split(LN2)
    n = m.rint(m.mul(x, m.split(LOG2E)[0]))
    r = m.fma(m.neg(n), ln2_hi, x)
    r = m.fma(m.neg(n), ln2_lo, r)
    return n, _expm1_poly(m, r)


def _expm1_scale(m, n, t):
    """2**n (1 + t) - 1 as 2**n (t + (1 - 2**-n)): 1 - 2**-n is exact, so one rounding only."""
    ni = m.to_int(n)
    cap = m.i(m.mant + 3)  # past this 2**-n is below half an ulp of 1; keeps 2**-n normal
    capped = m.b.select(m.b.icmp_signed("<", ni, cap), ni, cap)
    u = m.pow2(m.b.neg(capped))
    return m.ldexp(m.add(t, m.sub(1.0, u)), ni)


def _exp(m, x):
    """exp: clamp (nan-safe), reduce, scale; nan passes through."""
    n, t = _exp_core(m, m.clamp(x, *_exp_limits(m)))
    return m.sel(m.isnan(x), x, m.ldexp(m.add(t, 1.0), m.to_int(n)))


def _exp2(m, x):
    """exp2: n = rint(x), r = x - n exactly, then e^(r ln2) with ln2 in two parts."""
    lim = 1100.0 if m.bits == 64 else 160.0
    xc = m.clamp(x, -lim, lim)
    n = m.rint(xc)
    r = m.sub(xc, n)
    ln2_hi, ln2_lo = m.split(LN2)
    t = _expm1_poly(m, m.fma(r, ln2_hi, m.mul(r, ln2_lo)))
    return m.sel(m.isnan(x), x, m.ldexp(m.add(t, 1.0), m.to_int(n)))


def _expm1(m, x):
    """expm1: below -40 (f64) / -20 (f32) the result rounds to -1, so clamp there."""
    lo = -40.0 if m.bits == 64 else -20.0
    n, t = _exp_core(m, m.clamp(x, lo, _exp_limits(m)[1]))
    return m.sel(m.zero_or_nan(x), x, _expm1_scale(m, n, t))


def _sinh(m, x):
    """sinh: odd minimax polynomial for |x| < 1, else h - 1/(4h) with h = e^|x|/2 scaled
    in the exponent (not e^(|x| - ln2), whose rounded argument would cost ~|x| ulps)."""
    a = m.abs(x)
    z = m.mul(a, a)
    small = m.fma(m.mul(a, z), m.poly(z, m.coeffs("sinh")), a)
    n, t = _exp_core(m, m.min(a, _exp_limits(m)[1]))
    h = m.ldexp(m.add(t, 1.0), m.b.sub(m.to_int(n), m.i(1)))
    big = m.sub(h, m.div(0.25, h))
    res = m.copysign(m.sel(m.lt(a, 1.0), small, big), x)
    return m.sel(m.isnan(x), x, res)


def _cosh(m, x):
    """cosh = h + 1/(4h), h = e^|x|/2: no cancellation, and h overflows exactly when cosh does."""
    n, t = _exp_core(m, m.min(m.abs(x), _exp_limits(m)[1]))
    h = m.ldexp(m.add(t, 1.0), m.b.sub(m.to_int(n), m.i(1)))
    return m.sel(m.isnan(x), x, m.add(h, m.div(0.25, h)))


def _tanh(m, x):
    """tanh(|x|) = -e/(2 + e), e = expm1(-2|x|): accurate near 0 and exactly 1 past 20 / 10.

    The argument is <= 0, so 2**n stays normal and expm1 = 2**n t + (2**n - 1) is a single
    fma, much cheaper than the general expm1 scaling.
    """
    lim = 20.0 if m.bits == 64 else 10.0
    n, t = _exp_core(m, m.mul(m.min(m.abs(x), lim), -2.0))
    s = m.pow2(m.to_int(n))
    e = m.fma(s, t, m.sub(s, 1.0))
    res = m.copysign(m.div(m.neg(e), m.add(e, 2.0)), x)
    return m.sel(m.isnan(x), x, res)


def _sigmoid(m, x):
    """sigmoid = num / (1 + e), e = exp(-|x|) <= 1, num = 1 or e: never inf/inf, and it keeps
    relative accuracy (down to subnormals) for very negative x."""
    lo = _exp_limits(m)[0]
    n, t = _exp_core(m, m.max(m.neg(m.abs(x)), lo))
    e = m.ldexp(m.add(t, 1.0), m.to_int(n))
    res = m.div(m.sel(m.lt(x, 0.0), e, 1.0), m.add(e, 1.0))
    return m.sel(m.isnan(x), x, res)


# --- logarithms -----------------------------------------------------------------------------------

def _log_reduce(m, x, subnormals=True):
    """x = 2**k (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)), for finite x > 0; f is exact.

    Subtracting the bits of sqrt(1/2) before splitting exponent and mantissa (as in musl) puts
    the mantissa in that interval without a compare. Subnormals are scaled by 2**K first.
    Any other bit pattern (0, negative, inf, nan) gives finite garbage, never poison, so
    callers need no sanitized input and replace those results afterwards.
    """
    kadj = None
    if subnormals:
        scale = 64 if m.bits == 64 else 32
        small = m.lt(x, m.min_normal)
        x = m.sel(small, m.mul(x, 2.0 ** scale), x)
        kadj = m.sel(small, -scale, 0.0)
    sqrt_half = m.bits_of(0.7071067811865476 if m.bits == 64 else 0.70710677)
    ix = m.b.sub(m.to_bits(x), sqrt_half)
    k = m.to_float(m.b.ashr(ix, m.i(m.mant)))
    mant = m.b.and_(ix, m.i((1 << m.mant) - 1))
    f = m.sub(m.from_bits(m.b.add(mant, sqrt_half)), 1.0)
    return (k if kadj is None else m.add(k, kadj)), f


def _log1p_small(m, f):
    """log1p(f) - f for f from _log_reduce: a correction c <= f/5 whose rounding costs little.

    float32 uses a direct polynomial in f (no division). float64 would need degree ~20 that
    way, so it goes through s = f/(2+f), log1p(f) = 2 atanh(s), in fdlibm's arrangement
    f - hfsq + s (hfsq + R(s^2)) with hfsq = f^2/2.
    """
    if m.bits == 32:
        return m.mul(m.mul(f, f), m.poly(f, m.coeffs("log1p")))
    s = m.div(f, m.add(f, 2.0))
    z = m.mul(s, s)
    r = m.mul(z, m.poly(z, m.coeffs("log")))
    hfsq = m.mul(m.mul(f, f), 0.5)
    return m.fma(s, m.add(hfsq, r), m.neg(hfsq))


def _log_finish(m, x, res):
    """Special operands of log-like functions: 0 -> -inf, +inf -> +inf, x < 0 or nan -> nan.

    The core needs no sanitized input: on any bit pattern it only does integer work and
    finite float arithmetic, so the garbage it makes for these operands is replaced here.
    """
    res = m.sel(m.gt(x, 0.0), res, m.sel(m.eq(x, 0.0), -INF, NAN))
    return m.sel(m.eq(x, INF), INF, res)


def _log_combine(m, k, f, c):
    """k ln2 + f + c. float64: k*ln2_hi + f is exact when k = ±1 cancels f, the usual bad
    case. float32 (k*ln2 is not exact there): one final fma rounding, the inner sum's error
    being at most 2**-26 absolute, a small part of an ulp once k != 0."""
    ln2_hi, ln2_lo = m.split(LN2)
    if m.bits == 32:
        return m.fma(k, ln2_hi, m.add(f, m.fma(k, ln2_lo, c)))
    return m.add(m.fma(k, ln2_hi, f), m.fma(k, ln2_lo, c))


def _log(m, x):
    k, f = _log_reduce(m, x)
    return _log_finish(m, x, _log_combine(m, k, f, _log1p_small(m, f)))


def _log_base(m, x, k_scale, f_scale):
    """k*A + (f + c)*B (A = log_b 2, B = log_b e) with the heads' rounding errors recovered by
    fma and a two-sum, so the result is rounded about once."""
    k, f = _log_reduce(m, x)
    c = _log1p_small(m, f)
    b_hi, b_lo = m.split(f_scale)
    if m.bits == 32:  # float32 needs no error recovery for ~1 ulp: a chain of fmas will do
        lo = m.fma(f, b_lo, m.mul(c, b_hi))
        if k_scale is None:
            return _log_finish(m, x, m.add(k, m.fma(f, b_hi, lo)))
        a_hi, a_lo = m.split(k_scale)
        res = m.fma(k, a_hi, m.fma(f, b_hi, m.fma(k, a_lo, lo)))
        return _log_finish(m, x, res)
    hi_f = m.mul(f, b_hi)
    err = m.fma(f, b_hi, m.neg(hi_f))
    if k_scale is None:  # log2: A = 1, k itself is exact
        hi_k = k
    else:
        a_hi, a_lo = m.split(k_scale)
        hi_k = m.mul(k, a_hi)
        err = m.add(err, m.fma(k, a_hi, m.neg(hi_k)))
        err = m.fma(k, a_lo, err)
    hi = m.add(hi_f, hi_k)
    bb = m.sub(hi, hi_f)
    two_sum_err = m.add(m.sub(hi_f, m.sub(hi, bb)), m.sub(hi_k, bb))
    lo = m.fma(c, b_hi, m.fma(f, b_lo, m.add(err, two_sum_err)))
    return _log_finish(m, x, m.add(hi, lo))


def _log2(m, x):
    return _log_base(m, x, None, LOG2E)


def _log10(m, x):
    return _log_base(m, x, LOG10_2, LOG10_E)


def _log1p(m, x):
    """log1p: u = 1 + x with its exact rounding error e (two-sum); log1p = log(u) + e/u."""
    u = m.add(x, 1.0)
    bb = m.sub(u, 1.0)
    e = m.add(m.sub(1.0, m.sub(u, bb)), m.sub(x, bb))
    k, f = _log_reduce(m, u, subnormals=False)  # 1 + x is 0 or at least 2**-mant-1
    c = m.add(_log1p_small(m, f), m.div(e, u))
    res = _log_finish(m, u, _log_combine(m, k, f, c))
    res = m.sel(m.eq(x, INF), INF, res)  # u - 1 is inf - inf there
    return m.sel(m.zero_or_nan(x), x, res)


# --- trigonometry ---------------------------------------------------------------------------------

def _trig_reduce(m, x):
    """x = q pi/2 + r, |r| <= pi/4 (+ rounding of q): Cody-Waite with pi/2 in three parts.

    The first fma is exact (q*p1 and x are multiples of ulp(p1) and |r| < 1), the later parts
    are rounded relative to r. q is clamped so fptosi stays defined for huge or nan x, and r
    to [-1, 1] so that past the accurate range results stay bounded instead of exploding.
    """
    p1, p2, p3 = m.split(PIO2, parts=3)
    qlim = 2.0 ** 60 if m.bits == 64 else 2.0 ** 30
    q = m.clamp(m.rint(m.mul(x, m.split(TWO_OVER_PI)[0])), -qlim, qlim)
    nq = m.neg(q)
    r = m.fma(nq, p3, m.fma(nq, p2, m.fma(nq, p1, x)))
    return m.to_int(q), m.clamp(r, -1.0, 1.0)


def _sin_cos_poly(m, r):
    """(sin r, cos r) for |r| <= pi/4; cos keeps the rounding error of 1 - z/2 (fdlibm)."""
    z = m.mul(r, r)
    s = m.fma(m.mul(r, z), m.poly(z, m.coeffs("sin")), r)
    hz = m.mul(z, 0.5)
    w = m.sub(1.0, hz)
    tail = m.fma(m.mul(z, z), m.poly(z, m.coeffs("cos")), m.sub(m.sub(1.0, w), hz))
    return s, m.add(w, tail)


def _is_odd(m, q):
    return m.b.icmp_signed("!=", m.b.and_(q, m.i(1)), m.i(0))


def _sin_from_quadrant(m, q, r):
    s, c = _sin_cos_poly(m, r)
    return m.flip_sign(m.sel(_is_odd(m, q), c, s), q)


def _trig_finish(m, x, res):
    """±0 returns itself (sign kept), inf and nan give nan."""
    res = m.sel(m.eq(m.abs(x), INF), NAN, res)
    return m.sel(m.zero_or_nan(x), x, res)


def _sin(m, x):
    q, r = _trig_reduce(m, x)
    return _trig_finish(m, x, _sin_from_quadrant(m, q, r))


def _cos(m, x):
    """cos(x) = sin(x + pi/2): the same polynomials one quadrant on."""
    q, r = _trig_reduce(m, x)
    res = _sin_from_quadrant(m, m.b.add(q, m.i(1)), r)
    return m.sel(m.b.fcmp_unordered("==", m.abs(x), m._v(INF)), NAN, res)  # inf or nan


def _tan(m, x):
    """tan = sin r / cos r, or -cos r / sin r in odd quadrants (period pi)."""
    q, r = _trig_reduce(m, x)
    s, c = _sin_cos_poly(m, r)
    odd = _is_odd(m, q)
    res = m.div(m.sel(odd, c, s), m.sel(odd, s, c))
    res = m.sel(odd, m.neg(res), res)
    return _trig_finish(m, x, res)


def _atan(m, x):
    """atan(|x|) = base + atan(t): t = |x|, (|x|-1)/(|x|+1) or -1/|x| split at tan(pi/8) and
    tan(3pi/8), chosen by select so one division serves all three; base is 0, pi/4 or pi/2."""
    a = m.abs(x)
    big = m.gt(a, 2.414213562373095)
    mid = m.gt(a, 0.41421356237309503)
    num = m.sel(big, -1.0, m.sel(mid, m.sub(a, 1.0), a))
    den = m.sel(big, a, m.sel(mid, m.add(a, 1.0), 1.0))
    t = m.div(num, den)
    pio2_hi, pio2_lo = m.split(PIO2)
    pio4_hi, pio4_lo = pio2_hi / 2, pio2_lo / 2
    base_hi = m.sel(big, pio2_hi, m.sel(mid, pio4_hi, 0.0))
    base_lo = m.sel(big, pio2_lo, m.sel(mid, pio4_lo, 0.0))
    z = m.mul(t, t)
    inner = m.fma(m.mul(t, z), m.poly(z, m.coeffs("atan")), base_lo)
    return m.copysign(m.add(base_hi, m.add(t, inner)), x)


def _asin_parts(m, x):
    """For a = |x|: small = a <= 1/2, p = asin(s) with s = a there, else s = sqrt((1-a)/2),
    so asin(a) = pi/2 - 2p. Both branches share one polynomial on z = s^2 <= 1/4."""
    a = m.abs(x)
    small = m.le(a, 0.5)
    z = m.sel(small, m.mul(a, a), m.mul(m.sub(1.0, a), 0.5))
    s = m.sel(small, a, m.sqrt(z))  # |x| > 1 makes z < 0 and s nan: the domain error
    p = m.fma(m.mul(s, z), m.poly(z, m.coeffs("asin")), s)
    return small, p


def _asin(m, x):
    small, p = _asin_parts(m, x)
    pio2_hi, pio2_lo = m.split(PIO2)
    big = m.sub(pio2_hi, m.sub(m.mul(p, 2.0), pio2_lo))
    return m.copysign(m.sel(small, p, big), x)


def _acos(m, x):
    """acos = pi/2 - asin(x) near 0; 2 asin(sqrt((1-x)/2)) for x > 1/2; pi - that for x < -1/2."""
    small, p = _asin_parts(m, x)
    pio2_hi, pio2_lo = m.split(PIO2)
    pi_hi, pi_lo = m.split(PI)
    near0 = m.add(pio2_hi, m.sub(pio2_lo, m.copysign(p, x)))
    p2 = m.mul(p, 2.0)
    far = m.sel(m.lt(x, 0.0), m.sub(pi_hi, m.sub(p2, pi_lo)), p2)
    return m.sel(small, near0, far)


# --- pow ------------------------------------------------------------------------------------------

def _pow_core_f32(m, ax, y):
    """float32 |x|**y staying in float32 (16 lanes per AVX-512 vector, no conversions).

    y*log2|x| reaches ~150, so log2|x| is carried as head + tail: log2(1+f) = C u +
    u^3 P(u^2) with u = f/(2+f) (u's rounding error recovered by fma) and C = 2/ln2 in two
    parts; only the small u^3 term is plain float32. Then z = y*log2|x| as head + tail and
    exp2 of it, the tail entering the reduced argument.
    """
    k, f = _log_reduce(m, ax)
    d = m.add(f, 2.0)
    d_lo = m.add(m.sub(2.0, d), f)  # exact: |2| >= |f|
    rcp = m.div(1.0, d)
    u = m.mul(f, rcp)
    u_lo = m.mul(m.sub(m.fma(m.neg(u), d, f), m.mul(u, d_lo)), rcp)
    c_hi, c_lo = m.split(TWO_LOG2E)
    p = m.mul(u, c_hi)
    p_lo = m.fma(u, c_lo, m.fma(u_lo, c_hi, m.fma(u, c_hi, m.neg(p))))
    # u^3 P(u^2) in plain float32 from the head of u, plus the first-order term of u's tail
    z = m.mul(u, u)
    coeffs = m.coeffs("log2_pow")
    tail = m.fma(m.mul(z, 3.0 * coeffs[0]), u_lo, m.mul(m.mul(u, z), m.poly(z, coeffs)))
    hi = m.add(k, p)
    lo = m.add(m.add(m.sub(p, m.sub(hi, k)), p_lo), tail)  # fast two-sum: |k| >= |p| or k = 0
    hi2 = m.add(hi, lo)  # renormalize so that y*lo stays a small correction
    lo = m.sub(lo, m.sub(hi2, hi))
    hi = hi2
    zh = m.mul(y, hi)
    zl = m.fma(y, lo, m.fma(y, hi, m.neg(zh)))
    lim = 160.0
    zc = m.clamp(zh, -lim, lim)
    zl = m.sel(m.eq(zc, zh), zl, 0.0)  # clamped (or nan): drop a possibly inf/nan tail
    n = m.rint(zc)
    r = m.add(m.sub(zc, n), zl)
    ln2_hi, ln2_lo = m.split(LN2)
    t = _expm1_poly(m, m.fma(r, ln2_hi, m.mul(r, ln2_lo)))
    return m.ldexp(m.add(t, 1.0), m.to_int(n))


def _pow_core_f64(m, ax, y):
    """float64 |x|**y: y*log|x| reaches ~745, so log|x| is carried in double-double (relative
    error ~2**-66) and the exponential takes the low part as a correction to its argument.

    log1p(f) = 2 atanh(s) = 2s + (2/3)s^3 + s^5 T(s^2), s = f/(2+f): s and the s^3 term are
    computed with their rounding errors (fma), only the small tail T in plain double.
    """
    k, f = _log_reduce(m, ax)
    d = m.add(f, 2.0)
    d_lo = m.add(m.sub(2.0, d), f)  # exact: |2| >= |f|
    inv = m.div(1.0, d)
    s = m.mul(f, inv)
    s_lo = m.mul(m.sub(m.fma(m.neg(s), d, f), m.mul(s, d_lo)), inv)
    a = m.mul(s, s)
    a_lo = m.fma(s, s, m.neg(a))
    b = m.mul(a, s)
    b_lo = m.fma(a_lo, s, m.fma(a, s, m.neg(b)))
    c23_hi, c23_lo = m.split("0.666666666666666666666666666666666666666666667")
    c = m.mul(b, c23_hi)
    c_lo = m.fma(b, c23_lo, m.fma(b_lo, c23_hi, m.fma(b, c23_hi, m.neg(c))))
    tail = m.mul(m.mul(s, m.mul(a, a)), m.poly(a, m.coeffs("logtail")))
    s2 = m.mul(s, 2.0)
    u = m.add(s2, c)
    u_err = m.sub(c, m.sub(u, s2))
    ln2_hi, ln2_lo = _LN2_HEAD42
    kh = m.mul(k, ln2_hi)
    v = m.add(kh, u)
    v_err = m.sub(u, m.sub(v, kh))  # fast two-sum: |kh| >= |u| or kh == 0
    lo = m.fma(m.mul(a, 2.0), s_lo, m.fma(s_lo, 2.0, m.add(c_lo, m.add(u_err, v_err))))
    lo = m.fma(k, ln2_lo, m.add(lo, tail))
    hi = m.add(v, lo)
    lo = m.sub(lo, m.sub(hi, v))
    # z = y * (hi + lo) in double-double
    zh = m.mul(y, hi)
    zl = m.fma(y, lo, m.fma(y, hi, m.neg(zh)))
    zc = m.clamp(zh, *_exp_limits(m))
    zl = m.sel(m.eq(zc, zh), zl, 0.0)  # clamped (or nan): drop a possibly inf/nan tail
    e_hi, e_lo = m.split(LN2)
    n = m.rint(m.mul(zc, m.split(LOG2E)[0]))
    r1 = m.fma(m.neg(n), e_hi, zc)  # exact, as in _exp_core
    r_lo = m.fma(m.neg(n), e_lo, zl)
    r = m.add(r1, r_lo)
    r_err = m.sub(r_lo, m.sub(r, r1))
    t = m.add(_expm1_poly(m, r), r_err)  # e^(r + r_err) ~ (1 + t(r)) (1 + r_err)
    return m.ldexp(m.add(t, 1.0), m.to_int(n))


def _pow(m, x, y):
    """pow with the C99/IEEE special cases numpy follows; |x|**y itself comes from a core that
    takes any bits (its finite garbage for special operands is replaced here)."""
    ax = m.abs(x)
    core = _pow_core_f64 if m.bits == 64 else _pow_core_f32
    g = core(m, ax, y)
    y_int = m.eq(m.trunc(y), y)  # true for ±inf, which count as even
    half = m.mul(y, 0.5)
    y_odd = m.b.and_(y_int, m.b.fcmp_ordered("!=", m.trunc(half), half))
    # x = ±0 or ±inf, or y = ±inf: the result is 1 at |x| = 1, else 0 or inf by whether
    # |x| > 1 and the sign of y
    special = m.b.or_(m.b.or_(m.eq(ax, 0.0), m.eq(ax, INF)), m.eq(m.abs(y), INF))
    limit = m.sel(m.b.xor(m.gt(ax, 1.0), m.lt(y, 0.0)), INF, 0.0)
    mag = m.sel(special, m.sel(m.eq(ax, 1.0), 1.0, limit), g)
    x_sign = m.b.icmp_signed("<", m.to_bits(x), m.i(0))
    res = m.sel(m.b.and_(y_odd, x_sign), m.neg(mag), mag)
    negative_finite = m.b.and_(m.lt(x, 0.0), m.gt(x, -INF))
    domain = m.b.and_(negative_finite, m.b.not_(y_int))
    res = m.sel(m.b.or_(domain, m.b.fcmp_unordered("uno", x, y)), NAN, res)
    return m.sel(m.b.or_(m.eq(y, 0.0), m.eq(x, 1.0)), 1.0, res)


_IMPLS = {
    "exp": _exp, "exp2": _exp2, "expm1": _expm1, "log": _log, "log2": _log2, "log10": _log10,
    "log1p": _log1p, "sin": _sin, "cos": _cos, "tan": _tan, "tanh": _tanh, "sinh": _sinh,
    "cosh": _cosh, "sigmoid": _sigmoid, "atan": _atan, "asin": _asin, "acos": _acos,
    "pow": _pow,
}


def emit_math(builder: ir.IRBuilder, name: str, *args: ir.Value, outlined: bool = False) -> ir.Value:
    """Call the math function `name` on scalar float or double values (the type of args[0]
    picks the precision).

    By default the body is inlined at every use. ``outlined=True`` calls one shared copy per
    module instead, declared with SIMD variants that LLVM's loop vectorizer calls for whole
    vectors (the vector-function ABI): for kernels with hundreds of math calls this keeps
    the module, and LLVM's time on it, a fraction of the inlined size.
    """
    arity = MATH_FUNCTIONS.get(name)
    if arity is None:
        raise ValueError(f"unknown math function {name!r}; known: {sorted(MATH_FUNCTIONS)}")
    if len(args) != arity:
        raise TypeError(f"math function {name!r} takes {arity} argument(s), got {len(args)}")
    fty = args[0].type
    if not isinstance(fty, (ir.FloatType, ir.DoubleType)) or any(a.type != fty for a in args):
        raise TypeError(f"math function {name!r} needs float or double arguments of one type, "
                        f"got {', '.join(str(a.type) for a in args)}")
    module = builder.module
    tag = "f64" if isinstance(fty, ir.DoubleType) else "f32"
    if not outlined:
        fn = _define_math(module, f"symgraph.{name}.{tag}", name, fty)
        fn.attributes.add("alwaysinline")
        return builder.call(fn, list(args))
    fname = f"symgraph_{name}_{tag}"
    fn = module.globals.get(fname)
    if fn is None:
        variants = []
        for lanes in VECTOR_LANES[tag]:
            vname = f"{fname}_v{lanes}"
            _define_math(module, vname, name, ir.VectorType(fty, lanes), exact_trig=True)
            variants.append(f"_ZGV_LLVM_N{lanes}{'v' * arity}_{fname}({vname})")
            _keep(module, vname)
        fn = _define_math(module, fname, name, fty, exact_trig=True)
        fn.attributes.add("noinline")
        # llvmlite knows no string attributes; the set prints its members as written.
        set.add(fn.attributes, f'"vector-function-abi-variant"="{",".join(variants)}"')
    return builder.call(fn, list(args))


# SIMD widths given a vector variant: every width the vectorizer may pick up to 512 bits.
VECTOR_LANES = {"f64": (2, 4, 8), "f32": (4, 8, 16)}


def _define_math(module, fname, name, ty, exact_trig=False):
    fn = module.globals.get(fname)
    if fn is None:
        arity = MATH_FUNCTIONS[name]
        fn = ir.Function(module, ir.FunctionType(ty, [ty] * arity), fname)
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        fn.attributes.add("readnone")
        body = ir.IRBuilder(fn.append_basic_block("entry"))
        m = _Emit(body, ty)
        result = _IMPLS[name](m, *fn.args)
        if exact_trig and name in ("sin", "cos", "tan"):
            result = _exact_far_lanes(m, name, fn.args[0], result)
        body.ret(result)
    return fn


def _exact_far_lanes(m, name, x, fast):
    """`fast` with the lanes whose |x| exceeds TRIG_RANGE recomputed by the C library, on a
    branch taken only when such a lane exists (the polynomial reduction is not exact there)."""
    b = m.b
    far = m.gt(m.abs(x), TRIG_RANGE[m.bits])
    lanes = m.lanes or 1
    any_far = far if m.lanes is None else b.icmp_unsigned(
        "!=", b.bitcast(far, ir.IntType(lanes)), ir.Constant(ir.IntType(lanes), 0))
    entry = b.block
    slow_bb = b.append_basic_block("far")
    done_bb = b.append_basic_block("done")
    b.cbranch(any_far, slow_bb, done_bb)
    b.position_at_end(slow_bb)
    scalar = m._scalar_f
    symbol = name + ("f" if m.bits == 32 else "")
    libm = b.module.globals.get(symbol) or ir.Function(
        b.module, ir.FunctionType(scalar, [scalar]), symbol)
    exact = fast
    for lane in range(lanes):
        if m.lanes is None:
            exact = b.call(libm, [x])
        else:
            at = ir.Constant(ir.IntType(32), lane)
            lane_x = b.extract_element(x, at)
            lane_far = b.extract_element(far, at)
            value = b.select(lane_far, b.call(libm, [lane_x]), b.extract_element(fast, at))
            exact = b.insert_element(exact, value, at)
    slow_end = b.block
    b.branch(done_bb)
    b.position_at_end(done_bb)
    result = b.phi(m.fty)
    result.add_incoming(fast, entry)
    result.add_incoming(exact, slow_end)
    return result


def _keep(module, fname):
    """List a function in llvm.compiler.used, so LLVM keeps a vector variant it has not yet
    called until the vectorizer (which runs after dead-function removal) may call it."""
    kept = getattr(module, "_symgraph_kept", None)
    if kept is None:
        kept = module._symgraph_kept = []
    kept.append(module.get_global(fname))
    old = module.globals.pop("llvm.compiler.used", None)
    if old is not None:
        module.scope._useset.discard("llvm.compiler.used")
    ty = ir.ArrayType(ir.PointerType(), len(kept))
    used = ir.GlobalVariable(module, ty, "llvm.compiler.used")
    used.linkage = "appending"
    used.section = "llvm.metadata"
    used.initializer = ir.Constant(ty, kept)


# --- JIT helpers for tests and benchmarks --------------------------------------------------------

def _loop_module(names, fty, triple="", outlined=False) -> ir.Module:
    """A module with `void loop_<name>(ptr in0, [ptr in1,] ptr out, i64 n)` per name."""
    module = ir.Module(name="mathlib_loops")
    module.triple = triple
    ptr, i64 = ir.PointerType(), ir.IntType(64)
    for name in names:
        arity = MATH_FUNCTIONS[name]
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [ptr] * (arity + 1) + [i64]),
                         f"loop_{name}")
        for arg in fn.args[:-1]:
            arg.add_attribute("noalias")
        *ins, out, n = fn.args
        entry, body, done = (fn.append_basic_block(s) for s in ("entry", "body", "done"))
        b = ir.IRBuilder(entry)
        b.cbranch(b.icmp_signed(">", n, ir.Constant(i64, 0)), body, done)
        b.position_at_end(body)
        i = b.phi(i64)
        i.add_incoming(ir.Constant(i64, 0), entry)
        vals = [b.load(b.gep(p, [i], source_etype=fty, inbounds=True), typ=fty) for p in ins]
        b.store(emit_math(b, name, *vals, outlined=outlined),
                b.gep(out, [i], source_etype=fty, inbounds=True))
        nxt = b.add(i, ir.Constant(i64, 1))
        i.add_incoming(nxt, body)
        b.cbranch(b.icmp_signed("<", nxt, n), body, done)
        b.position_at_end(done)
        b.ret_void()
    return module


def _host_compile(module: ir.Module):
    """Verify and optimize at O3 (loop and SLP vectorization) for the host CPU; returns
    (engine, module, target machine), the engine owning the module."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    target = llvm.Target.from_default_triple()
    tm = target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                      features=llvm.get_host_cpu_features().flatten(), opt=3)
    module.triple = target.triple
    module.data_layout = str(tm.target_data)
    mod = llvm.parse_assembly(str(module))
    mod.verify()
    pto = llvm.create_pipeline_tuning_options(speed_level=3)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    engine = llvm.create_mcjit_compiler(mod, tm)
    engine.finalize_object()
    return engine, mod, tm


def _jit_loops(names, dtype, outlined=False):
    """{name: f(*arrays) -> out} running the compiled loops on contiguous numpy arrays."""
    import ctypes

    import numpy as np

    dtype = np.dtype(dtype)
    fty = F64 if dtype == np.float64 else F32
    engine, _, _ = _host_compile(_loop_module(names, fty, outlined=outlined))
    out = {}
    for name in names:
        arity = MATH_FUNCTIONS[name]
        cfn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * (arity + 1), ctypes.c_int64)(
            engine.get_function_address(f"loop_{name}"))

        def call(*arrays, out=None, _cfn=cfn, _engine=engine):
            if len({np.shape(a) for a in arrays}) > 1:
                arrays = np.broadcast_arrays(*arrays)
            arrays = [np.ascontiguousarray(a, dtype=dtype) for a in arrays]
            if out is None:
                out = np.empty_like(arrays[0])
            _cfn(*[a.ctypes.data for a in arrays], out.ctypes.data, out.size)
            return out

        out[name] = call
    return out


def _jit_unary_loop(name, dtype):
    """One compiled loop `out[i] = name(in[i]...)`, for quick checks and benchmarks."""
    return _jit_loops([name], dtype)[name]
