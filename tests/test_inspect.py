"""The inspector's Python API: stages, JSON round trip and schema, DOT, SVG, dump files."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import symgraph as sg
from symgraph import inspect as insp
from symgraph.frontend import find_variables, to_graph
from symgraph.passes import pipeline
from symgraph.runtime import compiled


def _model():
    A = sg.Variable("A", shape=(6,), dtype="float32")
    B = sg.Variable("B", shape=(6,), dtype="float32")
    edges = sg.Constant(np.array([np.nan, np.inf, -np.inf, -0.0, 1.5, 2.0], np.float32))
    t = A * B
    y = sg.exp(t) + (A * B) * edges
    z = sg.where(A > 0, y / sg.sum(y), sg.astype(B, "float64").astype("float32"))
    return [z, sg.max(y, axis=0)]


def _trace():
    outputs = _model()
    variables = find_variables(outputs)
    types = {v.attrs["name"]: (v.attrs["shape"], v.attrs["dtype"]) for v in variables}
    return insp.trace(to_graph(outputs, variables), types, pipeline(2)), outputs


def _same_value(a, b):
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes())
    if isinstance(a, float) and np.isnan(a):
        return isinstance(b, float) and np.isnan(b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_value, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _assert_same_graph(g, h):
    assert sorted(g.nodes) == sorted(h.nodes)
    assert sorted(g.edges) == sorted(h.edges)
    for key in ("inputs", "outputs", "next_id"):
        assert g.graph[key] == h.graph[key]
    for n in g.nodes:
        a, b = g.nodes[n], h.nodes[n]
        for key in ("op", "args", "shape", "dtype", "name", "kernel", "buffer", "offset"):
            assert _same_value(a.get(key), b.get(key)), (n, key, a.get(key), b.get(key))
        assert _same_value(a["attrs"], b["attrs"]), n
        assert [(loc.file, loc.line) for loc in a["loc"]] == [(loc.file, loc.line) for loc in b["loc"]]


def check_schema(doc):
    """The documented JSON format (docs/inspector.md), checked key by key."""
    assert doc["schema"] == "symgraph.graph" and doc["version"] == insp.SCHEMA_VERSION
    assert doc["stage"] is None or isinstance(doc["stage"], str)
    assert all(isinstance(n, str) for n in doc["inputs"])
    keys = {node["key"] for node in doc["nodes"]}
    assert all(isinstance(o, int) and o in keys for o in doc["outputs"])
    assert isinstance(doc["next_id"], int) and all(k < doc["next_id"] for k in keys)
    assert isinstance(doc["graph"], dict)
    seen = set()
    for node in doc["nodes"]:
        assert set(insp.NODE_KEYS) <= set(node) <= set(insp.NODE_KEYS) | set(insp.ANNOTATIONS)
        assert isinstance(node["key"], int) and isinstance(node["op"], str)
        assert all(isinstance(a, int) and a in seen for a in node["args"]), "topological order"
        assert isinstance(node["attrs"], dict)
        assert node["shape"] is None or all(isinstance(d, (int, list)) for d in node["shape"])
        assert node["dtype"] is None or isinstance(node["dtype"], (str, list))
        assert node["name"] is None or isinstance(node["name"], str)
        assert all(re.fullmatch(r".+:\d+", loc) for loc in node["loc"])
        assert all(isinstance(node[k], int) for k in insp.ANNOTATIONS if k in node)
        seen.add(node["key"])
    for node in doc["nodes"]:
        if node["op"] == "const":
            value = node["attrs"]["value"]
            assert set(value) == {"array", "dtype", "shape"} and isinstance(value["array"], list)


def test_json_round_trip_every_stage():
    t, _ = _trace()
    for stage, g in t.stages.items():
        text = insp.graph_to_json(g, stage=stage)
        doc = json.loads(text)  # strict JSON: no NaN literals
        check_schema(doc)
        assert doc["stage"] == stage
        h = insp.graph_from_json(text)
        _assert_same_graph(g, h)
        assert sg.graph.to_text(h) == sg.graph.to_text(g)
        assert insp.graph_to_json(h, stage=stage) == text


def test_json_round_trip_untyped_graph():
    A, B = sg.Variable("A"), sg.Variable("B", dtype="int32")
    y = (A * 2.5 + B).sum(axis=0) + sg.Constant(np.zeros((0, 3), np.int64)).sum() + True
    g = to_graph([y, y], find_variables([y]))
    h = insp.graph_from_json(insp.graph_to_json(g))
    _assert_same_graph(g, h)
    check_schema(json.loads(insp.graph_to_json(g)))


def test_json_rejects_other_documents():
    with pytest.raises(sg.SerializationError):
        insp.graph_from_json("{")
    with pytest.raises(sg.SerializationError, match="version"):
        insp.graph_from_json(json.dumps({"schema": "symgraph.graph", "version": 99}))
    with pytest.raises(sg.SerializationError):
        insp.graph_from_json(json.dumps({"schema": "something else"}))


def test_stages_match_the_compiled_function():
    t, outputs = _trace()
    f = sg.compile(list(outputs))
    assert [r.name for r in t.log] == [r.name for r in f.pass_log]
    assert [(r.nodes_before, r.nodes_after) for r in t.log] == [
        (r.nodes_before, r.nodes_after) for r in f.pass_log]
    for stage, g in t.stages.items():
        assert sg.graph.to_text(g) == f.as_text(stage)
    assert t.stages["final"].graph["memory_plan"]["peak_bytes"] == f.memory_plan["peak_bytes"]


def test_stage_changes_reports_removed_nodes():
    t, _ = _trace()
    names = list(t.stages)
    i = names.index("dce")
    changes = insp.stage_changes(t.stages[names[i - 1]], t.stages["dce"])
    assert len(changes["removed"]) == t.record("dce").details["removed"]
    assert not changes["added"]


def test_memory_summary_and_shape_table():
    t, _ = _trace()
    g = t.stages["final"]
    plan = g.graph["memory_plan"]
    text = insp.memory_summary(plan)
    assert f"peak {plan['peak_bytes']:,} bytes" in text
    assert f"{plan['no_reuse_bytes']:,} bytes without reuse" in text
    table = insp.shape_table(g).splitlines()
    assert len(table) == g.number_of_nodes() + 1
    buffered = [n for n in g.nodes if g.nodes[n].get("buffer") is not None]
    assert buffered, "the model should materialize an intermediate"
    for n in buffered:
        row = next(r for r in table if r.startswith(f"%{n} "))
        assert str(g.nodes[n]["offset"]) in row.split()


def parse_dot(text):
    """A small structural reading of our DOT: node ids, edges and cluster membership."""
    assert text.count("{") == text.count("}")
    nodes, edges, clusters, current = {}, [], {}, None
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"subgraph cluster_k(\d+) \{", line)
        if m:
            current = int(m.group(1))
            clusters[current] = []
            continue
        if line == "}":
            current = None
            continue
        m = re.match(r'(\w+) -> (\w+)( \[label=(\d+)\])?;$', line)
        if m:
            edges.append((m.group(1), m.group(2)))
            continue
        m = re.match(r'(\w+) \[label="((?:[^"\\]|\\.)*)"(, shape=\w+)?\];$', line)
        if m:
            nodes[m.group(1)] = m.group(2)
            if current is not None:
                clusters[current].append(m.group(1))
    return nodes, edges, clusters


def test_dot_structure():
    t, _ = _trace()
    g = t.stages["final"]
    text = insp.graph_to_dot(g, title="final")
    nodes, edges, clusters = parse_dot(text)
    assert {f"n{n}" for n in g.nodes} <= set(nodes)
    assert all(a in nodes and b in nodes for a, b in edges)
    assert len(edges) == sum(len(g.nodes[n]["args"]) for n in g.nodes) + len(g.graph["outputs"])
    for k in set(g.nodes[n].get("kernel") for n in g.nodes) - {None}:
        assert sorted(clusters[k]) == sorted(f"n{n}" for n in g.nodes if g.nodes[n].get("kernel") == k)
    for n in g.nodes:
        assert nodes[f"n{n}"].startswith(f"%{n} {g.nodes[n]['op']}")
    try:
        import pydot
    except ImportError:
        return  # the structural reading above is the check
    (parsed,) = pydot.graph_from_dot_data(text)
    assert len(parsed.get_subgraphs()) == len(clusters)


def test_dot_escapes_quotes_and_backslashes():
    A = sg.Variable("A", shape=(2,), dtype="float64")
    y = A + 1
    g = to_graph([y], [A])
    g.nodes[0]["name"] = 'a "quoted" \\ name'
    nodes, _, _ = parse_dot(insp.graph_to_dot(g))
    assert 'a \\"quoted\\" \\\\ name' in nodes["n0"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not on PATH")
def test_svg_rendered_by_graphviz(tmp_path):
    t, _ = _trace()
    done = subprocess.run(["dot", "-Tsvg"], input=insp.graph_to_dot(t.stages["final"]).encode(),
                          capture_output=True, check=True)
    assert b"<svg" in done.stdout


def test_dump_dir_writes_numbered_stage_files(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled, "DUMP_DIR", str(tmp_path))
    outputs = _model()
    f = sg.compile(list(outputs), name="dumped")
    f2 = sg.compile(outputs[0] * 2, name="dumped")
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert folders == ["0000-dumped", "0001-dumped"]
    files = sorted(p.name for p in (tmp_path / folders[0]).iterdir())
    stages = ["input"] + [r.name for r in f.pass_log] + ["final"]
    expected = [f"{i:02d}-{s}.txt" for i, s in enumerate(stages)]
    n = len(stages)
    expected += [f"{n:02d}-llvm.ll", f"{n + 1:02d}-llvm-opt.ll", f"{n + 2:02d}-asm.s"]
    assert files == expected
    for i, s in enumerate(stages):
        assert (tmp_path / folders[0] / f"{i:02d}-{s}.txt").read_text() == f.as_text(s) + "\n"
    assert (tmp_path / folders[0] / expected[-3]).read_text() == f.llvm_ir
    assert "define" in (tmp_path / folders[0] / expected[-2]).read_text()
    assert (tmp_path / folders[0] / expected[-1]).read_text().strip()
    assert (tmp_path / folders[1] / "00-input.txt").read_text() == f2.as_text("input") + "\n"


def test_dump_dir_environment_variable(tmp_path):
    """The flag itself, read at import, in a fresh interpreter."""
    import os
    import sys

    code = ("import numpy as np, symgraph as sg\n"
            "A = sg.Variable('A')\n"
            "f = sg.compile(sg.exp(A) + 1)\n"
            "f(np.ones(3)); f(np.ones((2, 2), np.float32))\n")
    env = dict(os.environ, SYMGRAPH_DUMP_DIR=str(tmp_path / "dumps"))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    folders = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert folders == ["0000-symgraph_main", "0001-symgraph_main"]
    final = sorted((tmp_path / "dumps" / folders[1]).glob("*-final.txt"))
    assert len(final) == 1 and "float32[2,2]" in final[0].read_text()
