"""Looking inside a compilation: every stage of the graph as text, DOT or JSON, and dumps.

``trace`` runs the pass pipeline keeping each stage's graph (passes are pure, so every
stage stays intact); ``graph_to_dot`` draws fused kernels as clusters around their ops;
``graph_to_json`` / ``graph_from_json`` round-trip the node table (format: docs/inspector.md);
``dump_compilation`` writes the numbered files behind ``SYMGRAPH_DUMP_DIR``.
"""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from .errors import Loc, SerializationError
from .graph import new_graph, topo_order, type_str
from .shapes import Sym

SCHEMA = "symgraph.graph"
SCHEMA_VERSION = 1
NODE_KEYS = ("key", "op", "args", "attrs", "shape", "dtype", "name", "loc")
ANNOTATIONS = ("kernel", "buffer", "offset")


# --- stages ------------------------------------------------------------------------------------

@dataclass
class Trace:
    """The graph at every stage ('input', then each pass by name, then 'final') and the log."""

    stages: dict = field(default_factory=dict)
    log: list = field(default_factory=list)

    def record(self, name):
        """The pass record that produced stage `name` (None for 'input' and 'final')."""
        return next((r for r in self.log if r.name == name), None)


def trace(template, signature, passes, *, verify=False) -> Trace:
    """Specialize the untyped `template` graph for {name: (shape, dtype)} and run `passes`.
    Open sizes (None or named axes) stay symbolic, as compile() keeps them; a graph that
    needs concrete sizes there raises NotGeneric."""
    from .infer import specialize_open
    from .passes import run_passes

    t = Trace()
    g = specialize_open(template, signature)
    t.stages["input"] = g

    def on_stage(name, graph):
        t.stages[name] = graph

    g, t.log = run_passes(g, passes, verify=verify, on_stage=on_stage)
    t.stages["final"] = g
    return t


def stage_changes(before, after) -> dict:
    """Node keys removed, added and rewritten (op, operands or attributes) between stages."""
    removed = sorted(set(before.nodes) - set(after.nodes))
    added = sorted(set(after.nodes) - set(before.nodes))
    changed = []
    for n in sorted(set(before.nodes) & set(after.nodes)):
        a, b = before.nodes[n], after.nodes[n]
        if a["op"] != b["op"] or a["args"] != b["args"] or _attrs_key(a) != _attrs_key(b):
            changed.append(n)
    return {"removed": removed, "added": added, "changed": changed}


def _attrs_key(data):
    return json.dumps(encode_value(data["attrs"]), sort_keys=True)


def memory_summary(plan) -> str:
    """One line on the workspace: peak bytes with reuse against one region per buffer."""
    if not plan or "peak_bytes" not in plan:
        return "memory plan: none (no intermediates are materialized)"
    peak, plain = plan["peak_bytes"], plan["no_reuse_bytes"]
    if isinstance(peak, Sym) or isinstance(plain, Sym):  # open sizes: bytes as formulas
        return (f"memory plan: peak {peak!r} bytes vs {plain!r} bytes without reuse "
                f"({plan.get('num_buffers', 0)} buffers for {plan.get('intermediates', 0)} "
                f"intermediates)")
    saved = f", {100 * (plain - peak) / plain:.0f}% saved" if plain else ""
    return (f"memory plan: peak {peak:,} bytes vs {plain:,} bytes without reuse{saved} "
            f"({plan.get('num_buffers', 0)} buffers for {plan.get('intermediates', 0)} "
            f"intermediates)")


def shape_table(g) -> str:
    """Per node: op, shape, dtype, bytes, kernel, buffer and offset, in topological order."""
    rows = [("node", "op", "type", "bytes", "kernel", "buffer", "offset", "name")]
    for n in topo_order(g):
        d = g.nodes[n]
        size = "?"
        if isinstance(d.get("shape"), tuple) and isinstance(d.get("dtype"), np.dtype):
            size = repr(math.prod(d["shape"]) * d["dtype"].itemsize)
        rows.append((f"%{n}", d["op"], type_str(d), size,
                     *("-" if d.get(k) is None else str(d[k]) for k in ANNOTATIONS),
                     d.get("name") or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


# --- DOT ---------------------------------------------------------------------------------------

def _dot_quote(text) -> str:
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _short_loc(loc) -> str:
    return f"{os.path.basename(loc.file)}:{loc.line}" if isinstance(loc, Loc) else str(loc)


def _node_label(n, d) -> str:
    from .graph import _attr_str

    head = " ".join(p for p in (f"%{n}", d["op"], _attr_str(d["op"], d["attrs"])) if p)
    lines = [head, type_str(d)]
    notes = [f"name={d['name']}"] if d.get("name") else []
    notes += [f"buffer={d['buffer']}"] if d.get("buffer") is not None else []
    if notes:
        lines.append(" ".join(notes))
    if d.get("loc"):
        lines.append(", ".join(_short_loc(loc) for loc in d["loc"]))
    return "\n".join(lines)


def graph_to_dot(g, title: str | None = None) -> str:
    """Graphviz DOT text: one box per node, fused kernels as clusters (``cluster_k<N>``)."""
    from .ops import get_op

    lines = [f"digraph {_dot_quote(title or 'symgraph')} {{",
             '  node [shape=box, fontname="monospace", fontsize=10];']
    kernels = {}
    for n in topo_order(g):
        kernels.setdefault(g.nodes[n].get("kernel"), []).append(n)

    def node_line(n):
        d = g.nodes[n]
        kind = get_op(d["op"]).kind if d["op"] in _registry() else ""
        style = ", shape=ellipse" if kind == "source" else ""
        return f"n{n} [label={_dot_quote(_node_label(n, d))}{style}];"

    for k in sorted(k for k in kernels if k is not None):
        lines.append(f"  subgraph cluster_k{k} {{")
        lines.append(f'    label="kernel {k}"; style=rounded; color=gray40;')
        lines += ["    " + node_line(n) for n in kernels[k]]
        lines.append("  }")
    lines += ["  " + node_line(n) for n in kernels.get(None, [])]
    for n in topo_order(g):
        args = g.nodes[n]["args"]
        for i, a in enumerate(args):
            label = f" [label={i}]" if len(args) > 1 else ""
            lines.append(f"  n{a} -> n{n}{label};")
    for i, o in enumerate(g.graph["outputs"]):
        lines.append(f'  out{i} [label="output {i}", shape=plaintext];')
        lines.append(f"  n{o} -> out{i};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _registry():
    from .ops import REGISTRY

    return REGISTRY


# --- JSON --------------------------------------------------------------------------------------

_FLOAT_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_WEAK = {"bool": bool, "int": int, "float": float}


def _float_json(x: float):
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def _array_json(a: np.ndarray):
    if a.dtype.kind == "f":
        flat = [_float_json(float(x)) for x in a.ravel()]
    else:
        flat = a.ravel().tolist()
    return {"array": flat, "dtype": str(a.dtype), "shape": list(a.shape)}


def _array_from_json(v) -> np.ndarray:
    dtype = np.dtype(v["dtype"])
    flat = [_FLOAT_WORDS[x] if isinstance(x, str) else x for x in v["array"]]
    a = np.array(flat, dtype=dtype).reshape(tuple(v["shape"]))
    a.flags.writeable = False
    return a


def encode_value(value):
    """A JSON-safe form of an attribute value, tagged so `decode_value` restores its type."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {"float": _float_json(value)}
    if isinstance(value, np.ndarray):
        return _array_json(value)
    if isinstance(value, np.dtype):
        return {"dtype": str(value)}
    if isinstance(value, type) and value in (bool, int, float):
        return {"weak": value.__name__}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"dtype": str(np.dtype(value))}
    if isinstance(value, tuple):
        return {"tuple": [encode_value(v) for v in value]}
    if isinstance(value, list):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): encode_value(v) for k, v in value.items()}}
    if isinstance(value, nx.DiGraph):
        return {"graph": graph_to_dict(value)}
    if isinstance(value, Loc):
        return {"loc": f"{value.file}:{value.line}"}
    return {"repr": repr(value)}  # shown, not restored


def decode_value(value):
    """The Python value of an `encode_value` result."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 3 and "array" in value:
        return _array_from_json(value)
    if len(value) != 1:
        raise SerializationError(f"unrecognized attribute value {str(value)[:80]}")
    (tag, v), = value.items()
    if tag == "float":
        return _FLOAT_WORDS[v]
    if tag == "dtype":
        return np.dtype(v)
    if tag == "weak":
        return _WEAK[v]
    if tag == "tuple":
        return tuple(decode_value(x) for x in v)
    if tag == "dict":
        return {k: decode_value(x) for k, x in v.items()}
    if tag == "graph":
        return graph_from_dict(v)
    if tag == "loc":
        return _parse_loc(v)
    if tag == "repr":
        return v
    raise SerializationError(f"unrecognized attribute tag {tag!r}")


def _parse_loc(text) -> Loc:
    file, _, line = text.rpartition(":")
    return Loc(file, int(line))


def _dtype_json(dtype):
    if dtype is None:
        return None
    if isinstance(dtype, tuple):
        return [_dtype_json(d) for d in dtype]
    if isinstance(dtype, type) and dtype in (bool, int, float):
        return f"weak {dtype.__name__}"
    return str(np.dtype(dtype))


def _dtype_from_json(text):
    if text is None:
        return None
    if isinstance(text, list):
        return tuple(_dtype_from_json(t) for t in text)
    if text.startswith("weak "):
        return _WEAK[text[5:]]
    return np.dtype(text)


def _shape_json(shape):
    """A shape as JSON; a symbolic size (an open axis) as its text, like "batch" or "2*x.0"."""
    if shape is None:
        return None
    return [_shape_json(s) if isinstance(s, tuple) else repr(s) if isinstance(s, Sym) else s
            for s in shape]


def _shape_from_json(shape):
    if shape is None:
        return None
    return tuple(_shape_from_json(s) if isinstance(s, list) else s for s in shape)


def graph_to_dict(g, stage: str | None = None) -> dict:
    """The JSON document of graph `g` as Python dicts and lists (see `graph_to_json`)."""
    nodes = []
    for n in topo_order(g):
        d = g.nodes[n]
        node = {"key": n, "op": d["op"], "args": list(d["args"]),
                "attrs": {k: encode_value(v) for k, v in sorted(d["attrs"].items())},
                "shape": _shape_json(d.get("shape")), "dtype": _dtype_json(d.get("dtype")),
                "name": d.get("name"),
                "loc": [f"{loc.file}:{loc.line}" for loc in d.get("loc", ()) if loc is not None]}
        for k in ANNOTATIONS:
            if d.get(k) is not None:
                node[k] = int(d[k])
        nodes.append(node)
    extra = {k: encode_value(v) for k, v in sorted(g.graph.items())
             if k not in ("inputs", "outputs", "next_id")}
    return {"schema": SCHEMA, "version": SCHEMA_VERSION, "stage": stage,
            "inputs": list(g.graph["inputs"]), "outputs": list(g.graph["outputs"]),
            "next_id": g.graph["next_id"], "graph": extra, "nodes": nodes}


def graph_to_json(g, stage: str | None = None, indent: int | None = 1) -> str:
    """The node table of `g` as JSON: keys, op, operands, attributes (constants as lists with
    their dtype), shape, dtype, name and source locations ("file:line"), deterministically."""
    return json.dumps(graph_to_dict(g, stage), indent=indent, allow_nan=False) + "\n"


def graph_from_dict(doc) -> nx.DiGraph:
    """The graph of a `graph_to_dict` document."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise SerializationError(f"not a {SCHEMA} document")
    if doc.get("version") != SCHEMA_VERSION:
        raise SerializationError(f"{SCHEMA} version {doc.get('version')!r} is not supported "
                                 f"(this symgraph reads version {SCHEMA_VERSION})")
    g = new_graph(doc["inputs"])
    for node in doc["nodes"]:
        missing = [k for k in NODE_KEYS if k not in node]
        if missing:
            raise SerializationError(f"node {node.get('key')!r} lacks {missing}")
        n = node["key"]
        g.add_node(n, op=node["op"], args=tuple(node["args"]),
                   attrs={k: decode_value(v) for k, v in node["attrs"].items()},
                   shape=_shape_from_json(node["shape"]), dtype=_dtype_from_json(node["dtype"]),
                   loc=tuple(_parse_loc(s) for s in node["loc"]), name=node["name"])
        for k in ANNOTATIONS:
            if k in node:
                g.nodes[n][k] = node[k]
    for node in doc["nodes"]:
        for a in set(node["args"]):
            if a not in g:
                raise SerializationError(f"node {node['key']} uses missing node {a}")
            g.add_edge(a, node["key"])
    g.graph.update({k: decode_value(v) for k, v in doc.get("graph", {}).items()})
    g.graph.update(outputs=list(doc["outputs"]), next_id=doc["next_id"])
    return g


def graph_from_json(text: str) -> nx.DiGraph:
    """The graph of a `graph_to_json` document."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SerializationError(f"graph JSON does not parse: {exc}") from None
    return graph_from_dict(doc)


# --- SYMGRAPH_DUMP_DIR -------------------------------------------------------------------------

def optimized_ir(library) -> str:
    """The LLVM IR after optimization: the library's own copy, else re-optimized from the
    IR it was built from (the same pipeline, so the same text)."""
    if getattr(library, "optimized_ir", None):
        return library.optimized_ir
    import llvmlite.binding as llvm

    from .codegen import cpu

    cpu.initialize()
    mod = llvm.parse_assembly(library.llvm_ir)
    cpu.optimize(mod, cpu.target_machine(), library.llvm_ir)
    return str(mod)


def _safe(name) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def dump_compilation(directory, name, stages, library) -> str | None:
    """Write one compilation's stages to a new numbered folder in `directory`:
    00-input.txt, 01-<pass>.txt, ..., NN-final.txt, then the LLVM IR before and after
    optimization and the assembly. Returns the folder (None, with a warning, on failure)."""
    try:
        os.makedirs(directory, exist_ok=True)
        count = len(os.listdir(directory))
        while True:  # mkdir is atomic: concurrent compilations never share a folder
            folder = os.path.join(directory, f"{count:04d}-{_safe(name)}")
            try:
                os.mkdir(folder)
                break
            except FileExistsError:
                count += 1
        files = [(f"{stage}.txt", text + "\n") for stage, text in stages.items()]
        files.append(("llvm.ll", library.llvm_ir))
        files.append(("llvm-opt.ll", optimized_ir(library)))
        files.append(("asm.s", library.asm))
        for i, (suffix, text) in enumerate(files):
            with open(os.path.join(folder, f"{i:02d}-{suffix}"), "w") as fh:
                fh.write(text)
        return folder
    except OSError as exc:
        warnings.warn(f"SYMGRAPH_DUMP_DIR: cannot write to {directory}: {exc}", stacklevel=2)
        return None

