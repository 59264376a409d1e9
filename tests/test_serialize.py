"""save/load round trips for every op family, and a corpus of hostile files all rejected."""
import io
import json
import pickle
import random
import zipfile

import numpy as np
import pytest

import symgraph as sg
from symgraph import serialize
from symgraph.errors import SerializationError
from symgraph.frontend import apply
from symgraph.ops import REGISTRY

RNG = np.random.default_rng(0)
BITWISE = {"and", "or", "xor", "invert"}


def same(a, b):
    """Bit-identical arrays (NaNs included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check_round_trip(f, *args, tmp_path=None):
    path = (tmp_path or _tmp()) / "f.sg"
    sg.save(f, path)
    g = sg.load(path)
    assert g.inputs == f.inputs
    assert (g.opt_level, g.disable, g.name) == (f.opt_level, f.disable, f.name)
    assert g.structure.kind == f.structure.kind and g.structure.keys == f.structure.keys
    want, got = f(*args), g(*args)
    if isinstance(want, dict):
        want, got = list(want.values()), list(got.values())
    if not isinstance(want, (list, tuple)):
        want, got = [want], [got]
    assert type(got) is type(want) and len(got) == len(want)
    for w, o in zip(want, got):
        assert same(w, o)
    return g


def _tmp():
    import pathlib
    import tempfile

    return pathlib.Path(tempfile.mkdtemp())


ELEMENTWISE = sorted(n for n, op in REGISTRY.items() if op.kind == "elementwise")


@pytest.mark.parametrize("opname", ELEMENTWISE)
def test_round_trip_every_elementwise_op(opname, tmp_path):
    op = REGISTRY[opname]
    if opname in BITWISE:
        x, y = sg.Variable("x", (5,), "bool"), sg.Variable("y", (5,), "bool")
        xv, yv = RNG.random(5) > 0.5, RNG.random(5) > 0.5
    else:
        x, y = sg.Variable("x", (2, 3), "float64"), sg.Variable("y", (3,), "float32")
        xv, yv = RNG.random((2, 3)) + 0.5, (RNG.random(3) + 0.5).astype("float32")
    if opname == "cast":
        out = apply("cast", x, dtype=np.dtype("int32" if opname not in BITWISE else "int64"))
    elif opname == "where":
        out = apply("where", x > 0.9, x, y * 1.5)
    elif op.arity == 1:
        out = apply(opname, x)
    else:
        out = apply(opname, x, y) if opname != "pow" else apply(opname, x, 2.5)
    f = sg.compile(out, inputs=[x, y])
    check_round_trip(f, xv, yv, tmp_path=tmp_path)


def test_round_trip_reductions_movement_matmul_concat(tmp_path):
    x = sg.Variable("x", (4, 6), "float64")
    n = sg.Variable("n", (6,), "int32")
    w = np.linspace(-1, 1, 12).reshape(6, 2)
    outs = {
        "sum": x.sum(axis=1, keepdims=True), "mean": sg.mean(x, axis=(0,)), "max": sg.max(x),
        "min": sg.min(n), "isum": sg.sum(n),
        "reshape": sg.reshape(x, (3, 8)), "T": x.T, "slice": x[1:, ::-2], "index": x[2],
        "bcast": sg.broadcast_to(n, (2, 6)), "mm": x @ w, "cat": sg.concatenate([x, x * 2], 1),
        "mixed": (x + n) * 0.5 - 3, "cast": (x * 10).astype("int64"), "flag": x > 0.25,
    }
    f = sg.compile(outs)
    check_round_trip(f, RNG.random((4, 6)), np.arange(6, dtype=np.int32), tmp_path=tmp_path)


@pytest.mark.parametrize("kind", ["single", "tuple", "list", "dict"])
def test_output_structures_input_order_and_options(kind, tmp_path):
    a, b = sg.Variable("a"), sg.Variable("b")
    y1, y2 = a * b + 1, sg.exp(a) - b
    packed = {"single": (y1,), "tuple": (y1, y2), "list": ([y1, y2],),
              "dict": ({"first": y1, "second": y2},)}[kind]
    f = sg.compile(*packed, inputs=[b, a], opt_level=1, disable=["cse"], name="my_fn")
    g = check_round_trip(f, np.arange(3.0), np.full(3, 2.0), tmp_path=tmp_path)
    assert g.inputs == ["b", "a"] and g.name == "my_fn"


def test_constants_weak_scalars_and_special_floats(tmp_path):
    x = sg.Variable("x", (3,), "float32")
    c = sg.Constant(np.array([np.nan, -0.0, np.inf], dtype=np.float64))
    y = (x * 0.1 + 7 + c, x * 3, sg.where(x > 1, x, float("-inf")), x * 1e-30)
    f = sg.compile(*y)
    check_round_trip(f, np.array([0.5, 1.5, -2], np.float32), tmp_path=tmp_path)


def test_undeclared_shapes_specialize_after_loading(tmp_path):
    x, y = sg.Variable("x"), sg.Variable("y", (None, 2))
    f = sg.compile(sg.sum(x * y, axis=0))
    g = check_round_trip(f, np.ones((3, 2)), RNG.random((3, 2)), tmp_path=tmp_path)
    assert same(g(np.ones(2, np.int32), np.ones((5, 2))), f(np.ones(2, np.int32), np.ones((5, 2))))


def test_save_expressions_directly_and_locations_kept(tmp_path):
    x = sg.Variable("x", (3,), "float64")
    y = sg.sin(x) + 1
    sg.save(y, tmp_path / "y.sg")
    g = sg.load(tmp_path / "y.sg")
    v = RNG.random(3)
    assert same(g(v), sg.compile(y)(v))
    (loaded_out,) = g.structure.exprs
    assert loaded_out.loc.file == y.loc.file and loaded_out.loc.line == y.loc.line


def test_cuda_functions_keep_their_target(tmp_path):
    """A function compiled for target='cuda' loads as one (same arch, same PTX)."""
    x = sg.Variable("x", (None, 3), "float32")
    f = sg.compile(sg.tanh(x).sum(axis=1), target="cuda", arch="sm_90")
    f.save(tmp_path / "f.sg")
    g = sg.load(tmp_path / "f.sg")
    assert g.target == "cuda" and g.arch == "sm_90" and g.ptx == f.ptx


def test_pickle_round_trip():
    x = sg.Variable("x", (4,), "float64")
    f = sg.compile({"y": sg.tanh(x) * 3, "z": x.sum()}, name="pickled")
    g = pickle.loads(pickle.dumps(f))
    v = RNG.random(4)
    assert g.name == "pickled" and all(same(f(v)[k], g(v)[k]) for k in ("y", "z"))


def test_round_trip_control_flow(tmp_path):
    x = sg.Variable("x", (3,), "float64")
    w = sg.Variable("w", (3, 3), "float64")
    y = sg.cond(sg.sum(x) > 0, lambda a: a * 2, lambda a: -a, x)
    z = sg.while_loop(lambda i, v: i < 4, lambda i, v: (i + 1, sg.tanh(v @ w) + x), (0, x),
                      max_iters=10)[1]
    c, ys = sg.scan(lambda c, r: (c + r, c * r), x * 0, sg.reshape(sg.concatenate([x, x]), (2, 3)))
    nested = sg.fori_loop(0, 3, lambda i, a: sg.cond(sg.sum(a) > 1.0, lambda q: q * 0.5,
                                                     lambda q: q + 1.0, a), x)
    f = sg.compile({"y": y, "z": z, "c": c, "ys": ys, "nested": nested})
    data, weights = np.array([1.0, -2.0, 0.5]), np.eye(3) * 0.5
    g = check_round_trip(f, data, weights, tmp_path=tmp_path)
    for sign in (1, -1):  # both branches of the loaded cond
        want, got = f(sign * data, weights), g(sign * data, weights)
        assert all(same(want[k], got[k]) for k in want)
    # The loaded graph still differentiates through its loops.
    loss = sg.sum(g.structure.exprs[1])
    (dx,) = sg.grad(loss, [g.variables[0]])
    fdx = sg.compile(dx)
    values = {"x": data, "w": weights}
    assert fdx(**{name: values[name] for name in fdx.inputs}).shape == (3,)


def test_save_needs_a_serializable_graph(tmp_path):
    with pytest.raises(SerializationError):
        serialize._encode(object(), [])


def test_loaded_graph_errors_stay_symgraph_errors(tmp_path):
    f = sg.compile(sg.Variable("x", (2,), "float64") * 2)
    g = sg.load(_save(f, tmp_path))
    with pytest.raises(sg.ShapeError):
        g(np.ones(3))


def _save(f, tmp_path):
    path = tmp_path / "f.sg"
    f.save(path)
    return path


# --- the hostile corpus ------------------------------------------------------------------------

def _valid():
    x = sg.Variable("x", (2, 3), "float64")
    n = sg.Variable("n", (3,), "int32")
    y = {"y": sg.exp(x) * np.arange(3.0) + n, "s": x[1:].sum(axis=1), "r": sg.reshape(x, (3, 2))}
    return serialize.dumps(sg.compile(y))


def _unpack(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return json.loads(zf.read("graph.json")), {n: zf.read(n) for n in zf.namelist()}


def _pack(doc=None, members=None, raw_json=None, compress=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        for name, data in (members or {}).items():
            if name != "graph.json":
                zf.writestr(name, data)
        if raw_json is not None:
            zf.writestr("graph.json", raw_json)
        elif doc is not None:
            zf.writestr("graph.json", json.dumps(doc))
    return buf.getvalue()


def _mutations():
    """(label, bytes) of structurally hostile files built from a valid one."""
    base = _valid()
    doc, members = _unpack(base)
    out = []

    def doc_case(label, change):
        d = json.loads(json.dumps(doc))
        change(d)
        out.append((label, _pack(d, members)))

    def node(d, op):
        return next(n for n in d["nodes"] if n["op"] == op)

    # formats and versions
    for v in [0, 3, 99, -1, "1", None, 1.0, [1], True]:
        doc_case(f"version {v!r}", lambda d, v=v: d.__setitem__("version", v))
    for fmt in ["", "symgraph", "pickle", None, 7]:
        doc_case(f"format {fmt!r}", lambda d, f=fmt: d.__setitem__("format", f))
    for key in ["nodes", "inputs", "structure", "options", "format"]:
        doc_case(f"missing {key}", lambda d, k=key: d.pop(k))
    # target options: only the known targets, architecture names and flags
    for key, value in [("target", "tpu"), ("target", None), ("target", ["cuda"]),
                       ("arch", "sm_80; rm -rf /"), ("arch", 80), ("arch", "sm_80"),
                       ("libdevice", "yes"), ("libdevice", True)]:
        doc_case(f"option {key}={value!r}",
                 lambda d, k=key, v=value: d["options"].__setitem__(k, v))
    # unknown ops: nothing named by the file is imported or evaluated
    for op in ["__import__", "os.system", "eval", "exec", "builtins.open", "subprocess.run",
               "numpy.load", "", "ADD", "cond", "while", "item", "pickle.loads", "lambda"]:
        doc_case(f"op {op!r}", lambda d, op=op: d["nodes"][-1].__setitem__("op", op))
    doc_case("op not a string", lambda d: d["nodes"][1].__setitem__("op", ["exp"]))
    # cycles, forward references and bad keys
    last = len(doc["nodes"]) - 1
    doc_case("self loop", lambda d: d["nodes"][last].__setitem__("args", [last, 0]))
    doc_case("forward ref", lambda d: d["nodes"][2].__setitem__("args", [last]))
    doc_case("cycle", lambda d: (d["nodes"][1].__setitem__("args", [last]),
                                 d["nodes"][last].__setitem__("args", [1, 1])))
    for bad in [-1, 10**6, "0", None, 1.5, True]:
        doc_case(f"arg {bad!r}", lambda d, b=bad: d["nodes"][last].__setitem__("args", [b, 0]))
    for bad in [5, -1, "0", None]:
        doc_case(f"key {bad!r}", lambda d, b=bad: d["nodes"][0].__setitem__("key", b))
    doc_case("duplicate key", lambda d: d["nodes"][1].__setitem__("key", 0))
    doc_case("no nodes", lambda d: d.__setitem__("nodes", []))
    doc_case("node not object", lambda d: d["nodes"].__setitem__(1, "exp"))
    doc_case("extra node field", lambda d: d["nodes"][1].__setitem__("code", "print(1)"))
    # arity
    doc_case("too many args", lambda d: node(d, "exp").__setitem__("args", [0, 0]))
    doc_case("too few args", lambda d: node(d, "add").__setitem__("args", [0]))
    doc_case("source with args", lambda d: node(d, "var").__setitem__("args", [0]))
    # attribute types
    attr_cases = [
        ("var", "name", "not an identifier"), ("var", "name", 3), ("var", "dtype", {"dtype": "object"}),
        ("var", "dtype", {"dtype": "complex128"}), ("var", "dtype", "float64"),
        ("var", "shape", {"tuple": [-1, 3]}), ("var", "shape", {"tuple": [2 ** 50, 3]}),
        ("var", "shape", {"tuple": [1] * 33}), ("var", "shape", {"tuple": [1.5, 3]}),
        ("var", "shape", {"tuple": [True, 3]}), ("var", "shape", [2, 3]),
        ("var", "shape", {"tuple": [2 ** 21, 2 ** 21]}),
        ("reshape", "shape", {"tuple": [7, 7]}), ("reshape", "shape", {"tuple": [2 ** 41]}),
        ("reshape", "shape", {"tuple": [-5, 6]}), ("reshape", "shape", "3,2"),
        ("sum", "axes", {"tuple": [5]}), ("sum", "axes", {"float": "0x1p+0"}), ("sum", "keepdims", 1),
        ("slice", "items", {"tuple": [{"tuple": ["eval", 1]}]}), ("slice", "items", 7),
        ("slice", "items", {"tuple": [{"tuple": ["int", 99]}]}),
        ("slice", "items", {"tuple": [{"tuple": ["slice", 0, 2, 0]}]}),
        ("const", "value", {"array": "arrays/missing.npy"}), ("const", "value", 3),
        ("const", "value", {"array": "../../etc/passwd"}),
    ]
    for op, key, value in attr_cases:
        doc_case(f"{op}.{key}={value!r}"[:60],
                 lambda d, op=op, k=key, v=value: node(d, op)["attrs"].__setitem__(k, v))
    doc_case("unknown attr", lambda d: node(d, "exp")["attrs"].__setitem__("evil", 1))
    doc_case("missing attr", lambda d: node(d, "reshape")["attrs"].pop("shape"))
    doc_case("deep nesting", lambda d: node(d, "reshape")["attrs"].__setitem__(
        "shape", json.loads("{\"tuple\": [" * 30 + "1" + "]}" * 30)))
    doc_case("unknown tag", lambda d: node(d, "reshape")["attrs"].__setitem__("shape", {"py": "x"}))
    doc_case("bad float hex", lambda d: node(d, "scalar" if any(
        n["op"] == "scalar" for n in d["nodes"]) else "exp")["attrs"].__setitem__("value", {"float": "zz"}))
    # wrong shapes that only inference sees
    doc_case("matmul-free mismatch", lambda d: node(d, "var")["attrs"].__setitem__(
        "shape", {"tuple": [2, 4]}))
    # structure, inputs and options
    doc_case("output out of range", lambda d: d["structure"].__setitem__("outputs", [999, 0, 1]))
    doc_case("no outputs", lambda d: d["structure"].__setitem__("outputs", []))
    doc_case("bad kind", lambda d: d["structure"].__setitem__("kind", "set"))
    doc_case("dict keys short", lambda d: d["structure"].__setitem__("keys", ["y"]))
    doc_case("dict keys repeated", lambda d: d["structure"].__setitem__("keys", ["y", "y", "y"]))
    doc_case("single with many", lambda d: d["structure"].__setitem__("kind", "single"))
    doc_case("inputs mismatch", lambda d: d.__setitem__("inputs", ["x", "zz"]))
    doc_case("inputs not str", lambda d: d.__setitem__("inputs", [1, 2]))
    for key, value in [("opt_level", -1), ("opt_level", "2"), ("opt_level", 10 ** 9),
                       ("name", "a b"), ("name", "x" * 1000), ("disable", "cse"), ("disable", [1])]:
        doc_case(f"option {key}={value!r}"[:40],
                 lambda d, k=key, v=value: d["options"].__setitem__(k, v))
    doc_case("bad loc", lambda d: d["nodes"][1].__setitem__("loc", ["f", "one", "g"]))
    doc_case("duplicate input", lambda d: node(d, "var")["attrs"].__setitem__("name", "n"))
    # JSON-level damage
    for raw in [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"version": NaN}', b"[" * 100000,
                b'{"format": "symgraph.graph", "version": 1, "nodes": ' + b"9" * 5000 + b"}",
                json.dumps(dict(doc, version=1)).replace('"x"', '"\\ud800"').encode()]:
        out.append((f"json {raw[:12]!r}", _pack(members=members, raw_json=raw)))
    # arrays: pickled, lying headers, unsupported dtypes
    npy_name = next(n for n in members if n.endswith(".npy"))

    def npy_case(label, data):
        m = dict(members)
        m[npy_name] = data
        out.append((label, _pack(doc, m)))

    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    npy_case("pickled npy", buf.getvalue())
    for dtype in ["complex128", "float16", "U3", "V8", [("a", "f8")], "uint8", "datetime64[s]"]:
        buf = io.BytesIO()
        np.save(buf, np.zeros(3, dtype=dtype))
        npy_case(f"npy dtype {dtype}", buf.getvalue())
    header = members[npy_name][:128]
    npy_case("npy huge shape", members[npy_name].replace(b"(3,)", b"(1099511627777,)", 1))
    npy_case("npy shape lies", members[npy_name].replace(b"(3,)", b"(4,)", 1))
    npy_case("npy shape negative", members[npy_name].replace(b"(3,)", b"(-3,)", 1))
    npy_case("npy code in header", members[npy_name].replace(b"(3,)", b"(__import__('os'),)", 1))
    npy_case("npy bad magic", b"\x93NUMPZ" + members[npy_name][6:])
    npy_case("npy version 9", members[npy_name][:6] + b"\x09\x00" + members[npy_name][8:])
    npy_case("npy truncated", members[npy_name][:-5])
    npy_case("npy header only", header[:20])
    npy_case("npy empty", b"")
    # found by the fuzzer: numpy's header parser raised tokenize.TokenError
    npy_case("npy header unbalanced", members[npy_name].replace(b"(3,)", b"((3,)", 1))
    # path tricks and unexpected members
    for name in ["../evil.npy", "/abs/path", "arrays/../../x", "C:\\evil", "arrays\\x.npy",
                 "a//b", "./graph.json", "evil.py", "arrays/", "arrays/x.npy\x00.py"]:
        m = dict(members)
        m[name] = b"print('pwned')"
        try:
            out.append((f"member {name!r}", _pack(doc, m)))
        except ValueError:
            pass
    # zip bombs and lying sizes
    m = dict(members)
    m["arrays/0.npy"] = b"\0" * (40 << 20)
    out.append(("zip bomb", _pack(doc, m)))
    big = _pack(doc, members)
    out.append(("declared size lies", _patch_sizes(big)))
    # found by the fuzzer: zipfile raised NotImplementedError for a zip version it lacks
    for version in (255, 0xFFFF):
        raw = bytearray(big)
        at = raw.rfind(b"PK\x01\x02")
        raw[at + 6:at + 8] = version.to_bytes(2, "little")
        out.append((f"zip version needed {version}", bytes(raw)))
    # not archives at all
    for raw in [b"", b"PK", b"PK\x03\x04" + b"\0" * 40, b"\x80\x04\x95" + b"\0" * 30,
                json.dumps(doc).encode(), bytes(range(256)) * 4]:
        out.append((f"raw {raw[:8]!r}", raw))
    # truncations
    for cut in sorted(set(np.linspace(0, len(base) - 1, 60).astype(int))):
        out.append((f"truncated at {cut}", base[:cut]))
    return out


def _patch_sizes(data):
    """The archive with graph.json's declared uncompressed size inflated in both headers."""
    buf = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("graph.json")
    real = info.file_size.to_bytes(4, "little")
    fake = (info.file_size + 1000).to_bytes(4, "little")
    # local header: size at offset 22; central directory entry: at 24 after its signature
    local = info.header_offset
    assert buf[local + 22:local + 26] == real
    buf[local + 22:local + 26] = fake
    central = buf.rfind(b"PK\x01\x02" + bytes(buf[local + 4:local + 6]))
    at = buf.find(real, central + 20)
    buf[at:at + 4] = fake
    return bytes(buf)


def _control_valid():
    x = sg.Variable("x", (3,), "float64")
    w = sg.Variable("w", (3, 3), "float64")
    y = sg.while_loop(lambda i, v: i < 4, lambda i, v: (i + 1, sg.tanh(v @ w) + x), (0, x),
                      max_iters=10)[1]
    return serialize.dumps(sg.compile(sg.cond(sg.sum(y) > 0, lambda a: a * 2, lambda a: -a, y)))


def _body_mutations():
    """Malformed control-flow bodies: each must be rejected like any other bad node."""
    doc, members = _unpack(_control_valid())
    out = []

    def body_of(d, op="while", k=1):
        node = next(n for n in d["nodes"] if n["op"] == op)
        return node["attrs"]["bodies"]["tuple"][k]["body"]

    def case(label, change):
        d = json.loads(json.dumps(doc))
        change(d)
        out.append((f"body: {label}", _pack(d, members)))

    case("missing field", lambda d: body_of(d).pop("params"))
    case("unknown field", lambda d: body_of(d).__setitem__("extra", 1))
    case("param is not an input", lambda d: body_of(d).__setitem__(
        "params", [len(body_of(d)["nodes"]) - 1] * len(body_of(d)["names"])))
    case("param out of range", lambda d: body_of(d)["params"].__setitem__(0, 10 ** 6))
    case("names and params differ", lambda d: body_of(d)["names"].append("extra"))
    case("bad name", lambda d: body_of(d)["names"].__setitem__(0, "not a name"))
    case("no outputs", lambda d: body_of(d).__setitem__("outputs", []))
    case("output out of range", lambda d: body_of(d)["outputs"].__setitem__(0, -1))
    case("forward reference", lambda d: body_of(d)["nodes"][-1].__setitem__("args", [10 ** 5]))
    case("unknown op", lambda d: body_of(d)["nodes"][-1].__setitem__("op", "os.system"))
    case("bad structure", lambda d: body_of(d).__setitem__("structure", "generator"))
    case("nodes not a list", lambda d: body_of(d).__setitem__("nodes", {"0": 1}))
    case("empty nodes", lambda d: body_of(d).__setitem__("nodes", []))
    case("bad loc", lambda d: body_of(d).__setitem__("loc", ["f", "line", "g"]))
    case("wrong body count", lambda d: next(n for n in d["nodes"] if n["op"] == "while")[
        "attrs"]["bodies"]["tuple"].pop())
    case("body where an int goes", lambda d: next(n for n in d["nodes"] if n["op"] == "while")[
        "attrs"].__setitem__("num_carried", {"body": body_of(d)}))
    case("huge num_carried", lambda d: next(n for n in d["nodes"] if n["op"] == "while")[
        "attrs"].__setitem__("num_carried", 10 ** 9))
    case("wrong result count", lambda d: body_of(d)["outputs"].pop())

    def nest(d):
        # a body whose nodes hold a cond whose body holds a cond ... past the depth limit
        inner = body_of(d, "cond", 0)
        for _ in range(serialize.MAX_BODY_DEPTH + 1):
            wrapper = json.loads(json.dumps(body_of(d, "cond", 0)))
            wrapper["nodes"].append({"key": len(wrapper["nodes"]), "op": "cond", "args": [0, 0],
                                     "attrs": {"bodies": {"tuple": [{"body": inner},
                                                                    {"body": inner}]},
                                               "num_operands": 1},
                                     "name": None, "loc": None})
            inner = wrapper
        next(n for n in d["nodes"] if n["op"] == "cond")["attrs"]["bodies"]["tuple"][0] = {
            "body": inner}

    case("nested too deeply", nest)
    return out


HOSTILE = _mutations() + _body_mutations()


def test_weak_scalar_output_loads_as_a_0d_array():
    """Found by the fuzzer: a file whose output is a weak Python number's node (which the
    frontend only makes as an operand) crashed code generation; it is numpy's 0-d array."""
    x = sg.Variable("x", (3,), "float64")
    y = x * 2.5
    direct = sg.compile([y, y.args[1]], inputs=[x])
    doc, members = _unpack(serialize.dumps(sg.compile(y)))
    scalar = next(i for i, n in enumerate(doc["nodes"]) if n["op"] == "scalar")
    doc["structure"] = {"kind": "tuple", "keys": None, "outputs": [scalar, len(doc["nodes"]) - 1]}
    loaded = serialize.loads(_pack(doc, members))
    for f in (direct, loaded):
        value = f(np.ones(3))[0 if f is loaded else 1]
        assert value.shape == () and value.dtype == np.float64 and value == 2.5


def test_corpus_is_large():
    assert len(HOSTILE) >= 200


@pytest.mark.parametrize("label,data", HOSTILE, ids=[label for label, _ in HOSTILE])
def test_hostile_file_rejected(label, data, tmp_path):
    path = tmp_path / "hostile.sg"
    path.write_bytes(data)
    with pytest.raises(SerializationError) as info:
        sg.load(path)
    assert str(info.value).strip()


def test_bit_flips_never_crash():
    """A flipped bit is caught by a checksum or a check, or lands in metadata that does not
    matter (timestamps): then the function loads and computes the same results."""
    base = _valid()
    good = serialize.loads(base)
    xv, nv = RNG.random((2, 3)), np.arange(3, dtype=np.int32)
    want = good(xv, nv)
    rng = random.Random(1)
    rejected = 0
    for _ in range(150):
        data = bytearray(base)
        at = rng.randrange(len(data))
        data[at] ^= 1 << rng.randrange(8)
        try:
            f = serialize.loads(bytes(data))
        except SerializationError:
            rejected += 1
            continue
        got = f(xv, nv)
        assert all(same(want[k], got[k]) for k in want)
    assert rejected > 50


def test_round_trip_nn_and_indexing_ops(tmp_path):
    nn = pytest.importorskip("symgraph.ops.nn")
    from symgraph.frontend import argmax, take

    x = sg.Variable("x", (1, 2, 6, 6), "float32")
    i = sg.Variable("i", (3,), "int64")
    v = sg.Variable("v", (5, 4), "float64")
    w = RNG.random((3, 2, 3, 3)).astype("float32")
    f = sg.compile({"conv": nn.conv2d(x, w, padding=1), "max": nn.max_pool2d(x, 2),
                    "avg": nn.avg_pool2d(x, 2), "argmax": argmax(v, axis=1),
                    "take": take(v, i, axis=0)})
    check_round_trip(f, RNG.random((1, 2, 6, 6)).astype("float32"), np.array([0, 4, 2]),
                     RNG.random((5, 4)), tmp_path=tmp_path)


@pytest.mark.parametrize("attrs", [
    {"stride": {"tuple": [0, 0]}}, {"padding": {"tuple": [2 ** 40, 2 ** 40]}},
    {"stride": "1"}, {"groups": -1}, {"evil": {"tuple": []}},
])
def test_ops_without_a_schema_still_reject_bad_attributes(attrs):
    nn = pytest.importorskip("symgraph.ops.nn")
    x = sg.Variable("x", (1, 2, 6, 6), "float32")
    doc, members = _unpack(serialize.dumps(nn.conv2d(x, np.ones((3, 2, 3, 3), "float32"))))
    conv = next(n for n in doc["nodes"] if n["op"] == "conv2d")
    conv["attrs"].update(attrs)
    with pytest.raises(SerializationError):
        serialize.loads(_pack(doc, members))


@pytest.mark.parametrize("path", [5, True, None, "/no/such/dir/model.sgz", "/"])
def test_save_to_a_bad_path_is_a_storage_error(path):
    f = sg.compile(sg.Variable("x", (3,), "float64") + 1)
    with pytest.raises(sg.StorageError) as info:
        sg.save(f, path)
    assert isinstance(info.value, OSError)


@pytest.mark.parametrize("path", [5, None, 2.5])
def test_load_from_a_non_path(path):
    with pytest.raises(SerializationError, match="file path"):
        sg.load(path)
