"""atheris fuzz target: symgraph.serialize.loads raises SerializationError or returns.

Byte mutations of a whole file rarely get past the zip container's checksums, so the first
input byte picks what the rest is: the whole file, or the text of ``graph.json`` (or the
bytes of one ``.npy`` member) packed into a valid archive. The seed corpus holds saved
models of several kinds in each form plus the hostile files of tests/test_serialize.py.

    python tests/reliability/fuzz_loader.py -max_total_time=600
"""
import io
import os
import sys
import tempfile

import atheris

HERE = os.path.dirname(os.path.abspath(__file__))

with atheris.instrument_imports(include=["symgraph", "zipfile", "numpy.lib"]):
    import zipfile

    import numpy as np

    import symgraph as sg
    from symgraph import serialize

WHOLE, GRAPH_JSON, ARRAY = 0, 1, 2


def _archive(graph_json: bytes, arrays=()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(serialize.GRAPH_MEMBER, graph_json)
        for i, data in enumerate(arrays):
            zf.writestr(f"arrays/{i}.npy", data)
    return buffer.getvalue()


def _members(data: bytes):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        graph = zf.read(serialize.GRAPH_MEMBER)
        arrays = [zf.read(n) for n in sorted(zf.namelist()) if n.endswith(".npy")]
    return graph, arrays


def seed_models():
    x = sg.Variable("x", (None, 4), "float32")
    w = sg.Variable("w", (4, 3), "float32")
    yield sg.compile(sg.relu(x @ w + sg.Constant(np.arange(3, dtype=np.float32))))
    a = sg.Variable("a", (5,), "float64")
    yield sg.compile({"s": sg.sum(sg.exp(a) * 2.0), "m": sg.maximum(a, 0.5)[1:4]})
    n = sg.Variable("n", (), "int32")
    yield sg.compile(sg.while_loop(lambda i, acc: i < n, lambda i, acc: (i + 1, acc * 2.0),
                                   (sg.Constant(np.int32(0)), sg.Constant(1.0)))[1])
    img = sg.Variable("img", (1, 2, 6, 6), "float32")
    yield sg.compile(sg.max_pool2d(sg.conv2d(img, sg.Variable("k", (3, 2, 3, 3), "float32"),
                                             padding=1), 2))


def write_corpus(directory):
    """Seed files: each model whole, as its graph.json, and as each of its arrays; plus the
    hostile corpus."""
    count = 0

    def put(kind, payload):
        nonlocal count
        with open(os.path.join(directory, f"seed{count}"), "wb") as fh:
            fh.write(bytes([kind]) + payload)
        count += 1

    for f in seed_models():
        data = serialize.dumps(f)
        graph, arrays = _members(data)
        put(WHOLE, data)
        put(GRAPH_JSON, graph)
        for array in arrays:
            put(ARRAY, array)
    sys.path[:0] = [os.path.dirname(HERE)]
    try:
        from test_serialize import HOSTILE
    except ImportError:
        HOSTILE = []
    for _, data in HOSTILE:
        put(WHOLE, data)
    return count


_FIRST_SEED = None


def one(data: bytes):
    if not data:
        return
    kind, payload = data[0] % 3, data[1:]
    if kind == GRAPH_JSON:
        payload = _archive(payload, _FIRST_SEED[1])
    elif kind == ARRAY:
        payload = _archive(_FIRST_SEED[0], [payload])
    try:
        serialize.loads(payload)
    except sg.SerializationError:
        pass


def main():
    global _FIRST_SEED
    _FIRST_SEED = _members(serialize.dumps(next(seed_models())))
    corpus = tempfile.mkdtemp(prefix="symgraph-fuzz-")
    write_corpus(corpus)
    atheris.Setup(sys.argv + [corpus], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
