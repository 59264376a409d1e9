"""The examples run and do what they say."""
import pathlib
import runpy
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs():
    result = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "[3. 3. 3. 3. 3. 3. 3. 3. 3. 3.]" in result.stdout


def test_train_mlp_reaches_95_percent_on_digits():
    pytest.importorskip("sklearn", reason="the training example needs scikit-learn")
    module = runpy.run_path(str(EXAMPLES / "train_mlp.py"))
    assert module["main"]() >= 0.95
