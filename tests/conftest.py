"""Shared test setup: a private compile cache, and hypothesis profiles.

HYPOTHESIS_PROFILE selects the profile: "ci" (the default: derandomized, so every run
checks the same examples, sized to finish in well under a minute) or "long" (many more
random examples, for a soak run).
"""
import os
import sys

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(__file__))  # tests import helpers and strategies

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=150, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile(
    "long", deadline=None, max_examples=2000, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
