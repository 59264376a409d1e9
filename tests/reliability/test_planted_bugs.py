"""The harness can fail: every planted bug (planted.py) is caught by the random-graph check."""
import json
import os
import subprocess
import sys

import pytest

from reliability.planted import BUGS

HERE = os.path.dirname(os.path.abspath(__file__))


def hunt(name):
    env = dict(os.environ, SYMGRAPH_CACHE="0")
    done = subprocess.run([sys.executable, os.path.join(HERE, "planted.py"), name],
                          capture_output=True, text=True, timeout=600, env=env)
    if done.returncode < 0:  # native code killed by a signal: the harness caught the bug too
        return {"bug": name, "caught": True, "batches": None, "first": f"signal {-done.returncode}"}
    assert done.returncode == 0, f"planting {name!r} failed:\n{done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_at_least_eight_bugs():
    assert len(BUGS) >= 8


@pytest.mark.parametrize("name", list(BUGS))
def test_planted_bug_is_caught(name):
    report = hunt(name)
    assert report["caught"], f"planted bug {name!r} went unnoticed"
