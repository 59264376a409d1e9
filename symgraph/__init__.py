"""symgraph: a define-then-run symbolic graph compiler for numpy, with an LLVM backend.

Build a graph from Variables with numpy-like operators, ``compile`` it, call it on arrays.
"""
from .errors import (
    ArgumentError,
    CompileError,
    DTypeError,
    ExecutionError,
    GraphError,
    IndexOutOfRange,
    NonFiniteError,
    OutOfMemory,
    SerializationError,
    StorageError,
    ShapeError,
    SymgraphError,
    TracerBoolError,
)
from .frontend import (
    Constant,
    Expr,
    Variable,
    absolute,
    argmax,
    argmin,
    astype,
    broadcast_to,
    clip,
    concatenate,
    cos,
    cosh,
    cross_entropy,
    exp,
    exp2,
    expm1,
    floor,
    log,
    log1p,
    log2,
    log10,
    logical_not,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    negative,
    one_hot,
    relu,
    reshape,
    sigmoid,
    sin,
    sinh,
    sqrt,
    sum,
    take,
    tan,
    tanh,
    transpose,
    where,
)
from .control import cond, fori_loop, scan, while_loop
from .autodiff import grad, vjp
from .interpret import evaluate
from .ops.nn import avg_pool2d, conv2d, log_softmax, logsumexp, max_pool2d, softmax
from .jit import jit
from .runtime.compiled import CompiledFunction, compile
from .serialize import load, save

abs = absolute  # noqa: A001  (numpy's name for it)

__version__ = "0.1.0"

__all__ = [
    "argmax", "argmin", "cross_entropy", "one_hot", "take",
    "ArgumentError", "CompileError", "CompiledFunction", "Constant", "DTypeError",
    "ExecutionError", "Expr", "GraphError", "IndexOutOfRange", "NonFiniteError", "OutOfMemory",
    "SerializationError", "ShapeError", "StorageError", "SymgraphError", "TracerBoolError", "Variable",
    "abs", "absolute", "load", "save", "cond", "fori_loop", "jit", "scan", "while_loop", "astype", "broadcast_to", "clip", "compile", "concatenate", "cos",
    "cosh", "evaluate", "exp", "exp2", "expm1", "floor", "grad", "log", "log1p", "log2", "log10",
    "logical_not", "matmul", "max", "maximum", "mean", "min", "minimum", "negative", "relu",
    "reshape", "sigmoid", "sin", "sinh", "sqrt", "sum", "tan", "tanh", "transpose", "vjp", "where",
    "avg_pool2d", "conv2d", "log_softmax", "logsumexp", "max_pool2d", "softmax",
]
