"""Save and load compiled functions as one versioned file that loading never executes.

The file is a zip archive holding ``graph.json`` (the untyped graph as a node table, the
output structure, the inputs and the compile options) and one ``arrays/N.npy`` member per
constant, read with pickle disabled. Loading checks everything before it builds anything:
member names and sizes, the format name and version, that every op is registered, that
operands refer only to earlier nodes (so no cycles), attribute types per op, declared
shapes and sizes, and each array header against its member's size. A file that fails any
check raises `SerializationError`; nothing named by the file is imported or evaluated.
Format reference: docs/deployment.md.
"""
from __future__ import annotations

import inspect
import io
import json
import re
import os
import struct
import math
import zipfile

import numpy as np
from numpy.lib import format as npformat

from . import dtypes as dt
from .errors import Loc, SerializationError, StorageError, SymgraphError
from .frontend import Constant, Expr, Variable, apply, find_variables, to_graph
from .graph import topo_order
from .ops import REGISTRY
from .ops.control import Body

FORMAT = "symgraph.graph"
VERSION = 2  # 2 added control-flow bodies; version 1 files read unchanged
READABLE_VERSIONS = (1, 2)
GRAPH_MEMBER = "graph.json"

MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 64 << 20
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 8 << 30
MAX_RATIO = 200  # uncompressed / compressed, for members over 1 MiB (zip bombs)
MAX_NODES = 200_000
MAX_RANK = 32
MAX_ELEMENTS = 1 << 40
MAX_INT = 1 << 63
MAX_STR = 4096
MAX_DEPTH = 8

UNSUPPORTED = frozenset()  # ops a file may not contain (none today)
MAX_BODY_DEPTH = 4  # control flow nested in control flow, at most this deep


def _fail(message, hint=None):
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # no lone surrogates
    raise SerializationError(message, hint=hint)


# --- encoding ----------------------------------------------------------------------------------

def _encode(value, arrays):
    """JSON-safe form of an attribute value; tuples, dtypes, floats and arrays are tagged so
    they come back as the same Python types (floats bit-exactly, via hex)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return {"float": float(value).hex()}
    if isinstance(value, np.dtype):
        return {"dtype": value.name}
    if isinstance(value, type) and value in dt.WEAK_TYPES:
        return {"pytype": value.__name__}
    if isinstance(value, np.ndarray):
        member = f"arrays/{len(arrays)}.npy"
        arrays.append((member, value))
        return {"array": member}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, Body):
        g = to_graph(value.outputs, value.params, names=value.names)
        nodes, renumber = _encode_nodes(g, arrays)
        return {"body": {"names": list(value.names), "structure": value.structure,
                         "loc": _encode_loc(value.loc), "nodes": nodes,
                         "params": [renumber[n] for n in sorted(g.nodes)[:len(value.names)]],
                         "outputs": [renumber[o] for o in g.graph["outputs"]]}}
    if isinstance(value, Loc):
        return {"loc": _encode_loc(value)}
    raise SerializationError(f"cannot save an attribute of type {type(value).__name__}")


def _encode_loc(loc):
    return None if loc is None else [str(loc.file), int(loc.line), str(loc.function)]


def _encode_nodes(g, arrays):
    """The node table of a graph (operands refer to earlier rows) and {node: row}."""
    nodes, renumber = [], {}
    for n in topo_order(g):
        data = g.nodes[n]
        if data["op"] in UNSUPPORTED:
            _fail(f"graphs with {data['op']} cannot be saved")
        renumber[n] = len(nodes)
        loc = next((l for l in data["loc"] if l is not None), None)
        nodes.append({
            "key": renumber[n], "op": data["op"], "args": [renumber[a] for a in data["args"]],
            "attrs": {k: _encode(v, arrays) for k, v in sorted(data["attrs"].items())},
            "name": data["name"], "loc": _encode_loc(loc),
        })
    return nodes, renumber


def _npy_bytes(array):
    buf = io.BytesIO()
    npformat.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _parts(f_or_exprs):
    """(structure, variables, options) of a compiled function or of output expression(s)."""
    from .runtime.compiled import CompiledFunction, OutputStructure

    if isinstance(f_or_exprs, CompiledFunction):
        f = f_or_exprs
        options = {"opt_level": f.opt_level, "disable": list(f.disable), "name": f.name}
        if getattr(f, "target", "cpu") == "cuda":  # (the libdevice path is this machine's)
            options.update(target="cuda", arch=f.requested_arch, libdevice=bool(f.libdevice))
        return f.structure, f.variables, options
    structure = OutputStructure.of((f_or_exprs,))
    return structure, find_variables(structure.exprs), {"opt_level": 2, "disable": [],
                                                        "name": "symgraph_main"}


def dumps(f_or_exprs) -> bytes:
    """The saved-file bytes of a compiled function or of output expression(s)."""
    from . import __version__

    structure, variables, options = _parts(f_or_exprs)
    if structure.kind == "dict" and not all(
            isinstance(k, (str, int)) and not isinstance(k, bool) for k in structure.keys):
        _fail("only str and int dict output keys can be saved")
    g = to_graph(structure.exprs, variables)
    arrays = []
    nodes, renumber = _encode_nodes(g, arrays)
    doc = {
        "format": FORMAT, "version": VERSION, "symgraph_version": __version__,
        "inputs": list(g.graph["inputs"]),
        "structure": {"kind": structure.kind, "keys": structure.keys,
                      "outputs": [renumber[o] for o in g.graph["outputs"]]},
        "options": options, "nodes": nodes,
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(GRAPH_MEMBER, json.dumps(doc, sort_keys=True, allow_nan=False))
        for member, array in arrays:
            zf.writestr(zipfile.ZipInfo(member), _npy_bytes(array), zipfile.ZIP_STORED)
    return buf.getvalue()


def check_path(what, path):
    """A str/bytes/os.PathLike path (an int would be taken for a file descriptor)."""
    if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
        raise StorageError(f"{what} needs a file or directory path, got {type(path).__name__}")
    return path


def save(f_or_exprs, path) -> None:
    """Write a compiled function (or output expression(s)) to one file at `path`."""
    path = check_path("save", path)
    data = dumps(f_or_exprs)
    try:
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise StorageError(f"save: cannot write {path}: {exc.strerror or exc}") from None


# --- reading the archive -----------------------------------------------------------------------

def _check_member_name(name):
    if (not name or len(name) > 255 or name.startswith(("/", "\\")) or "\\" in name
            or ":" in name or "\x00" in name or any(p in ("", ".", "..") for p in name.split("/"))):
        _fail(f"archive member name {name!r} is not allowed (absolute, empty or escaping)")


def _read_members(source):
    """{name: bytes} of the archive, after checking names, counts, sizes and ratios."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError, struct.error) as exc:
        # NotImplementedError: a zip version or feature zipfile lacks (found by the fuzzer)
        _fail(f"not a symgraph file (not a readable zip archive: {exc})")
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            _fail(f"archive has {len(infos)} members (at most {MAX_MEMBERS})")
        total, members = 0, {}
        for info in infos:
            _check_member_name(info.filename)
            if info.filename in members:
                _fail(f"archive member {info.filename!r} appears twice")
            if info.is_dir():
                _fail(f"archive member {info.filename!r} is a directory")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                _fail(f"archive member {info.filename!r} uses an unsupported compression")
            size = info.file_size
            limit = MAX_JSON_BYTES if info.filename == GRAPH_MEMBER else MAX_MEMBER_BYTES
            if size > limit:
                _fail(f"archive member {info.filename!r} declares {size} bytes (at most {limit})")
            if size > (1 << 20) and size > MAX_RATIO * max(info.compress_size, 1):
                ratio = size // max(info.compress_size, 1)
                _fail(f"archive member {info.filename!r} expands {ratio}-fold: refusing a "
                      "possible zip bomb")
            total += size
            if total > MAX_TOTAL_BYTES:
                _fail(f"archive declares more than {MAX_TOTAL_BYTES} bytes in all")
            members[info.filename] = info
        out = {}
        for name, info in members.items():
            try:
                with zf.open(info) as fh:
                    data = fh.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError,
                    RuntimeError) as exc:
                _fail(f"archive member {name!r} is corrupt: {exc}")
            except Exception as exc:  # zlib.error and other decoder failures
                _fail(f"archive member {name!r} is corrupt: {type(exc).__name__}: {exc}")
            if len(data) != info.file_size:
                _fail(f"archive member {name!r} has {len(data)} bytes, not the declared "
                      f"{info.file_size}")
            out[name] = data
    return out


def _read_npy(name, data):
    """The array in an .npy member: header first, pickle disabled, sizes checked."""
    fh = io.BytesIO(data)
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh, max_header_size=10_000)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh, max_header_size=10_000)
        else:
            raise ValueError(f"npy version {version}")
    except Exception as exc:  # numpy's header parser also raises tokenize.TokenError & co.
        _fail(f"array member {name!r} has a bad .npy header: {type(exc).__name__}: {exc}")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        _fail(f"array member {name!r} has dtype {dtype}, which may not be stored")
    try:
        native = dt.check_supported(dtype)
    except SymgraphError:
        _fail(f"array member {name!r} has unsupported dtype {dtype}")
    _check_shape(shape, f"array member {name!r}")
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - fh.tell():
        _fail(f"array member {name!r} declares {count} elements of {dtype.itemsize} bytes but "
              f"holds {len(data) - fh.tell()} bytes of data")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=fh.tell())
    array = array.reshape(shape, order="F" if fortran else "C").astype(native)
    return np.ascontiguousarray(array)


# --- validation --------------------------------------------------------------------------------

def _check_shape(shape, what, allow_none=False):
    if not isinstance(shape, tuple) or len(shape) > MAX_RANK:
        _fail(f"{what}: shape {shape!r} is not a tuple of rank at most {MAX_RANK}")
    total = 1
    for d in shape:
        if d is None and allow_none:
            continue
        if type(d) is not int or d < 0 or d > MAX_ELEMENTS:
            _fail(f"{what}: shape {shape!r} has an invalid size {d!r}")
        total *= d
    if total > MAX_ELEMENTS:
        _fail(f"{what}: shape {shape!r} has {total} elements (at most {MAX_ELEMENTS})")


def _decode(value, arrays, depth=0, bodies=0):
    """Inverse of `_encode`, accepting only its tags. `bodies` counts the control-flow
    bodies this value sits in."""
    if depth > MAX_DEPTH:
        _fail("attribute nested too deeply")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_INT <= value < 2 * MAX_INT:
            _fail(f"integer attribute {value} is out of range")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STR:
            _fail("string attribute too long")
        return value
    if isinstance(value, list):
        return [_decode(v, arrays, depth + 1, bodies) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "float" and isinstance(inner, str) and len(inner) < 64:
            try:
                return float.fromhex(inner)
            except (ValueError, OverflowError):
                _fail(f"bad float {inner!r}")
        if tag == "dtype" and isinstance(inner, str):
            if inner not in {d.name for d in dt.SUPPORTED}:
                _fail(f"unsupported dtype {inner!r}")
            return np.dtype(inner)
        if tag == "pytype" and inner in ("bool", "int", "float"):
            return {"bool": bool, "int": int, "float": float}[inner]
        if tag == "array" and isinstance(inner, str):
            if inner not in arrays:
                _fail(f"attribute refers to a missing array member {inner!r}")
            return arrays[inner]
        if tag == "tuple" and isinstance(inner, list):
            return tuple(_decode(v, arrays, depth + 1, bodies) for v in inner)
        if tag == "loc":
            return _decode_loc(inner, "attribute")
        if tag == "body" and isinstance(inner, dict):
            return _decode_body(inner, arrays, bodies + 1)
    _fail(f"unrecognized attribute value {str(value)[:80]}")


def _decode_loc(loc, where):
    if loc is None:
        return None
    _require(isinstance(loc, list) and len(loc) == 3 and isinstance(loc[0], str)
             and _is_int(loc[1]) and isinstance(loc[2], str)
             and len(loc[0]) + len(loc[2]) <= MAX_STR, f"{where}: bad source location")
    return Loc(loc[0], loc[1], loc[2])


def _decode_body(doc, arrays, bodies):
    """A control-flow body: its own node table, parameters first, rebuilt like the graph."""
    _require(bodies <= MAX_BODY_DEPTH, "control flow nested too deeply")
    _require(set(doc) == {"names", "structure", "loc", "nodes", "params", "outputs"},
             "a control-flow body has missing or unknown fields")
    names, params, outputs = doc["names"], doc["params"], doc["outputs"]
    _require(doc["structure"] in ("single", "tuple", "list"), "bad body structure")
    _require(isinstance(doc["nodes"], list), "a body's nodes are not a list")
    exprs, variables = _build(doc["nodes"], arrays, bodies)
    _require(isinstance(names, list) and isinstance(params, list) and len(names) == len(params)
             and all(isinstance(n, str) and n.isidentifier() for n in names),
             "a body's parameter names are malformed")
    _require(all(_is_int(p) and 0 <= p < len(exprs) and exprs[p].op == "var"
                 and exprs[p].attrs["name"] == n for p, n in zip(params, names)),
             "a body's parameters are not its input nodes")
    _require(sorted(names) == sorted(variables), "a body uses inputs it does not declare")
    _require(isinstance(outputs, list) and outputs
             and all(_is_int(o) and 0 <= o < len(exprs) for o in outputs),
             "a body's outputs are empty or refer to missing nodes")
    return Body([exprs[p] for p in params], [exprs[o] for o in outputs], list(names),
                _decode_loc(doc["loc"], "body"), doc["structure"])


def _is_int(v):
    return type(v) is int


def _int_tuple(v, lo=-MAX_ELEMENTS, hi=MAX_ELEMENTS):
    return (isinstance(v, tuple) and len(v) <= MAX_RANK
            and all(_is_int(d) and lo <= d <= hi for d in v))


def _slice_items(v):
    if not isinstance(v, tuple) or len(v) > MAX_RANK:
        return False
    for item in v:
        if not isinstance(item, tuple) or not item:
            return False
        if item[0] == "int":
            ok = len(item) == 2 and _is_int(item[1]) and abs(item[1]) <= MAX_ELEMENTS
        elif item[0] == "slice":
            ok = len(item) == 4 and all(p is None or (_is_int(p) and abs(p) <= MAX_ELEMENTS)
                                        for p in item[1:])
        else:
            ok = False
        if not ok:
            return False
    return True


def _bodies(v, count):
    return isinstance(v, tuple) and len(v) == count and all(isinstance(b, Body) for b in v)


def _count_attr(v, lo=0):
    return _is_int(v) and lo <= v <= 4096


def _axes(v):
    return v is None or (_is_int(v) and abs(v) <= MAX_RANK) or _int_tuple(v, -MAX_RANK, MAX_RANK)


def _var_shape(v):
    return v is None or (isinstance(v, tuple) and len(v) <= MAX_RANK
                         and all(d is None or (isinstance(d, str) and d.isidentifier()
                                               and len(d) <= 100)
                                 or (_is_int(d) and 0 <= d <= MAX_ELEMENTS) for d in v))


# Attribute schema per op: {attr: check}. Elementwise and matmul ops take none.
SCHEMAS = {
    "var": {"name": lambda v: isinstance(v, str) and v.isidentifier(), "shape": _var_shape,
            "dtype": lambda v: v is None or isinstance(v, np.dtype)},
    "const": {"value": lambda v: isinstance(v, np.ndarray)},
    "scalar": {"value": lambda v: type(v) in (bool, int, float) and
               (type(v) is not int or -MAX_INT <= v < 2 * MAX_INT)},
    "cast": {"dtype": lambda v: isinstance(v, np.dtype)},
    "concat": {"axis": lambda v: _is_int(v) and abs(v) <= MAX_RANK},
    "reshape": {"shape": lambda v: _int_tuple(v, -1)},
    "transpose": {"perm": lambda v: v is None or _int_tuple(v, -MAX_RANK, MAX_RANK)},
    "slice": {"items": _slice_items},
    "broadcast_to": {"shape": lambda v: _int_tuple(v, 0)},
    **{r: {"axes": _axes, "keepdims": lambda v: isinstance(v, bool)}
       for r in ("sum", "mean", "max", "min")},
    "cond": {"bodies": lambda v: _bodies(v, 2), "num_operands": lambda v: _count_attr(v)},
    "while": {"bodies": lambda v: _bodies(v, 2), "num_carried": lambda v: _count_attr(v),
              "max_iters": lambda v: v is None or (_is_int(v) and 0 <= v < MAX_INT),
              "init_loc": lambda v: v is None or isinstance(v, Loc)},
    "scan": {"bodies": lambda v: _bodies(v, 1), "num_carried": lambda v: _count_attr(v),
             "num_xs": lambda v: _count_attr(v, 1),
             "init_loc": lambda v: v is None or isinstance(v, Loc)},
    "item": {"index": lambda v: _count_attr(v)},
}


def _reference_keywords(op):
    """Keyword parameter names of an op's numpy reference (None: it takes **kwargs)."""
    try:
        params = list(inspect.signature(op.reference).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    skip = {p.name for p in positional[:op.arity or 0]}
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in skip}


def _check_attrs(op, attrs, where):
    schema = SCHEMAS.get(op)
    if schema is None:
        if REGISTRY[op].kind not in ("elementwise", "matmul"):
            # An op without a schema here: its values are inert (decoded from the tags
            # above), its names must be keywords of its numpy reference, and its own shape
            # rule validates the values while the graph is rebuilt.
            allowed = _reference_keywords(REGISTRY[op])
            unknown = set(attrs) - allowed if allowed is not None else set()
            if unknown:
                _fail(f"{where}: unexpected attribute(s) {sorted(unknown)} for op {op!r}")
            return
        schema = {}
    unknown = set(attrs) - set(schema)
    if unknown:
        _fail(f"{where}: unexpected attribute(s) {sorted(unknown)} for op {op!r}")
    for key, check in schema.items():
        if key not in attrs:
            _fail(f"{where}: op {op!r} needs attribute {key!r}")
        if not check(attrs[key]):
            _fail(f"{where}: attribute {key}={str(attrs[key])[:80]} is invalid for op {op!r}")


def _require(cond, message):
    if not cond:
        _fail(message)


def _parse_document(members):
    if GRAPH_MEMBER not in members:
        _fail(f"not a symgraph file: no {GRAPH_MEMBER} in the archive")
    try:
        doc = json.loads(members[GRAPH_MEMBER].decode("utf-8"),
                         parse_constant=lambda c: _fail(f"non-finite number {c} in graph"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        _fail(f"{GRAPH_MEMBER} is not valid JSON: {exc}")
    _require(isinstance(doc, dict), f"{GRAPH_MEMBER} is not a JSON object")
    if doc.get("format") != FORMAT:
        _fail(f"not a symgraph graph file (format {str(doc.get('format'))[:40]!r})")
    version = doc.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        _fail(f"unsupported file version {str(version)[:20]} (this symgraph reads version "
              f"{VERSION})", hint="save the graph again with this symgraph version")
    for key, kind in (("inputs", list), ("structure", dict), ("options", dict), ("nodes", list)):
        _require(isinstance(doc.get(key), kind),
                 f"{GRAPH_MEMBER}: {key!r} missing or not a {kind.__name__}")
    return doc


def _build(nodes, arrays, bodies=0):
    """Exprs rebuilt node by node through the frontend (which re-infers shapes)."""
    _require(0 < len(nodes) <= MAX_NODES, f"graph has {len(nodes)} nodes (1 to {MAX_NODES})")
    exprs, variables = [], {}
    for i, node in enumerate(nodes):
        _require(isinstance(node, dict), f"node {i} is not an object")
        _require(set(node) <= {"key", "op", "args", "attrs", "name", "loc"},
                 f"node {i} has unknown fields")
        where = f"node {i}"
        _require(node.get("key") == i and _is_int(node.get("key")),
                 f"{where}: keys must be 0, 1, 2... in order (got {str(node.get('key'))[:20]})")
        op = node.get("op")
        _require(isinstance(op, str) and op in REGISTRY and op not in UNSUPPORTED,
                 f"{where}: unknown op {str(op)[:40]!r}")
        where = f"node {i} ({op})"
        args = node.get("args")
        _require(isinstance(args, list) and all(_is_int(a) and 0 <= a < i for a in args),
                 f"{where}: operands must refer to earlier nodes (no cycles or forward references)")
        arity = REGISTRY[op].arity
        _require(len(args) == arity if arity is not None else 1 <= len(args) <= 4096,
                 f"{where}: takes {arity if arity is not None else '1 or more'} operand(s), "
                 f"got {len(args)}")
        raw = node.get("attrs")
        _require(isinstance(raw, dict), f"{where}: attrs is not an object")
        attrs = {str(k): _decode(v, arrays, bodies=bodies) for k, v in raw.items()}
        _check_attrs(op, attrs, where)
        name = node.get("name")
        _require(name is None or (isinstance(name, str) and len(name) <= MAX_STR),
                 f"{where}: bad name")
        loc = _decode_loc(node.get("loc"), where)
        try:
            e = _make(op, [exprs[a] for a in args], attrs, where)
        except SerializationError:
            raise
        except SymgraphError as exc:
            _fail(f"{where}: {exc.message}")
        except Exception as exc:  # a rule met attributes it does not expect
            _fail(f"{where}: invalid node ({type(exc).__name__}: {str(exc)[:200]})")
        if e.shape is not None:  # a control node has a tuple of shapes, one per result
            for shape in (e.shape if REGISTRY[op].kind == "control" else (e.shape,)):
                if shape is not None:
                    _check_shape(tuple(shape), where)
        e.loc, e.name = loc, name
        if op == "var":
            _require(attrs["name"] not in variables, f"{where}: input {attrs['name']!r} twice")
            variables[attrs["name"]] = e
        exprs.append(e)
    return exprs, variables


def _make(op, args, attrs, where):
    if op == "var":
        shape = attrs["shape"]
        e = Variable(attrs["name"], shape, attrs["dtype"])
        e.attrs["shape"] = None if shape is None else tuple(shape)
        return e
    if op == "const":
        return Constant(attrs["value"])
    if op == "scalar":
        value = attrs["value"]
        return Expr("scalar", (), {"value": value}, shape=(), dtype=type(value))
    return apply(op, *args, **attrs)


def loads(data: bytes):
    """A compiled function from saved-file bytes (see `load`)."""
    return _load(io.BytesIO(bytes(data)))


def load(path):
    """The compiled function saved at `path`: same inputs, input order, output structure and
    options. Raises SerializationError for any malformed, truncated or hostile file."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        _fail(f"load needs a file path, got {type(path).__name__}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_TOTAL_BYTES + 1)
    except OSError as exc:
        _fail(f"cannot read {path}: {exc}")
    return _load(io.BytesIO(data))


def _load(source):
    from .runtime.compiled import compile as compile_

    members = _read_members(source)
    doc = _parse_document(members)
    arrays = {name: _read_npy(name, data) for name, data in members.items()
              if name.startswith("arrays/") and name.endswith(".npy")}
    extra = set(members) - set(arrays) - {GRAPH_MEMBER}
    _require(not extra, f"unexpected archive members {sorted(extra)[:5]}")
    exprs, variables = _build(doc["nodes"], arrays)

    inputs = doc["inputs"]
    _require(all(isinstance(n, str) for n in inputs) and sorted(inputs) == sorted(variables),
             "the input list does not match the graph's Variables")
    structure = doc["structure"]
    kind, keys, outs = structure.get("kind"), structure.get("keys"), structure.get("outputs")
    _require(kind in ("single", "tuple", "list", "dict"),
             f"unknown output structure {str(kind)[:20]!r}")
    _require(isinstance(outs, list) and outs
             and all(_is_int(o) and 0 <= o < len(exprs) for o in outs),
             "output list is empty or refers to missing nodes")
    _require(kind != "single" or len(outs) == 1, "a single output lists several nodes")
    if kind == "dict":
        _require(isinstance(keys, list) and len(keys) == len(outs)
                 and len(set(map(str, keys))) == len(keys)
                 and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in keys),
                 "dict output keys are missing, repeated or of the wrong type")
    options = doc["options"]
    opt_level, disable, name = options.get("opt_level"), options.get("disable"), options.get("name")
    _require(_is_int(opt_level) and 0 <= opt_level <= 3, "bad opt_level option")
    _require(isinstance(disable, list) and all(isinstance(d, str) and len(d) < 64 for d in disable),
             "bad disable option")
    _require(isinstance(name, str) and name.isidentifier() and len(name) <= 200, "bad name option")
    target, arch = options.get("target", "cpu"), options.get("arch")
    libdevice = options.get("libdevice", False)
    _require(target in ("cpu", "cuda"), "bad target option")
    _require(arch is None or (target == "cuda" and isinstance(arch, str)
                              and re.fullmatch(r"sm_[0-9]{2,3}a?", arch)), "bad arch option")
    _require(isinstance(libdevice, bool) and (target == "cuda" or not libdevice),
             "bad libdevice option")
    cuda = {"target": "cuda", "arch": arch, "libdevice": libdevice or None} \
        if target == "cuda" else {}

    values = [exprs[o] for o in outs]
    packed = {"single": lambda: values[0], "tuple": lambda: tuple(values),
              "list": lambda: list(values), "dict": lambda: dict(zip(keys, values))}[kind]()
    try:
        return compile_(packed, inputs=[variables[n] for n in inputs], opt_level=opt_level,
                        disable=tuple(disable), name=name, **cuda)
    except SerializationError:
        raise
    except SymgraphError as exc:
        _fail(f"the saved graph does not compile: {exc.message}")
