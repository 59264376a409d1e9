"""Shared test setup."""
import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    """Point the persistent compile cache at a temporary directory for the whole run, so
    tests never read or fill the user's cache."""
    saved = {k: os.environ.get(k) for k in ("SYMGRAPH_CACHE_DIR", "SYMGRAPH_CACHE")}
    os.environ["SYMGRAPH_CACHE_DIR"] = str(tmp_path_factory.mktemp("symgraph-cache"))
    os.environ.pop("SYMGRAPH_CACHE", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
