"""Random graphs over the op registry, checked several ways (docs/reliability.md).

Fast tier: 2,000 graphs compiled vs interpreter, 200 with every pass switched off alone and a
save/load round trip, 10 through an exported shared library, and CUDA vs interpreter when a
GPU is present. SYMGRAPH_LONG=1 runs every check on 100,000 graphs. Zero mismatches allowed.
"""
import os
import shutil

import pytest

from reliability import harness

LONG = os.environ.get("SYMGRAPH_LONG", "") not in ("", "0")
PER_BATCH = 40


def _assert_clean(res, want_graphs):
    assert res.graphs >= want_graphs
    assert not res.failures, f"{len(res.failures)} mismatches:\n" + "\n".join(res.failures[:10])


@pytest.mark.parametrize("chunk", range(5))
def test_compiled_matches_interpreter(chunk):
    seeds = range(chunk * 10, chunk * 10 + 10)  # 5 chunks x 10 batches x 40 graphs = 2,000
    _assert_clean(harness.check_many(seeds, PER_BATCH), 10 * PER_BATCH)


def test_every_pass_ablation_and_round_trip():
    res = harness.check_many(range(1000, 1005), PER_BATCH, ablations=True, round_trip=True,
                             opt_levels=(0, 2))
    _assert_clean(res, 200)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="no C compiler to link an exported library")
def test_exported_library_matches_jit():
    _assert_clean(harness.check_many([2000], 12, export=True), 10)


@pytest.mark.skipif(not harness.has_gpu(), reason="no CUDA device")
def test_cuda_matches_interpreter():
    _assert_clean(harness.check_many(range(3000, 3005), PER_BATCH, gpu=True), 200)


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long tier: set SYMGRAPH_LONG=1")
def test_long_tier_all_checks():
    n = int(os.environ.get("SYMGRAPH_LONG_GRAPHS", "100000"))
    seeds = range(10_000, 10_000 + n // PER_BATCH)
    res = harness.check_many(seeds, PER_BATCH, ablations=True, round_trip=True,
                             opt_levels=(0, 2), export=True, gpu=harness.has_gpu())
    _assert_clean(res, n)
