"""At least 200 malformed or hostile serialized graphs are rejected with SerializationError
(the corpus lives in tests/test_serialize.py); the long tier fuzzes the loader with atheris."""
import os

import pytest

import symgraph as sg
from symgraph import serialize
from test_serialize import HOSTILE


def test_hostile_corpus_rejected():
    rejected = 0
    for label, data in HOSTILE:
        with pytest.raises(sg.SerializationError):
            serialize.loads(data)
        rejected += 1
    assert rejected >= 200


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SYMGRAPH_LONG", "") in ("", "0"), reason="long tier")
def test_atheris_fuzz_loader():
    atheris = pytest.importorskip("atheris")
    import subprocess
    import sys
    target = os.path.join(os.path.dirname(__file__), "fuzz_loader.py")
    done = subprocess.run([sys.executable, target, "-runs=200000"], capture_output=True,
                          text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert atheris
