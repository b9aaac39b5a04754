from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serve.conftest import serving, triton_inputs
from toolchain.core.parity import compare
from toolchain.core.signature import Signature, TensorSig
from toolchain.package.format import open_package
from toolchain.serve.batching import Batcher, batch_plan
from toolchain.serve.repository import ServeOptions
from toolchain.serve.versions import VersionSpec, open_version

tritonclient_http = pytest.importorskip("tritonclient.http")


def _signature(verified: tuple[int, ...]) -> Signature:
    return Signature(
        (TensorSig("x", "float32", ("batch", 4)),), (TensorSig("y", "float32", ("batch", 2)),), {"batch": verified}
    )


def test_plan_follows_the_verified_range_and_the_leading_dim() -> None:
    assert batch_plan(_signature((1, 3, 7)), max_batch=64).limit == 7  # type: ignore[union-attr]
    assert batch_plan(_signature((1, 512)), max_batch=16).limit == 16  # type: ignore[union-attr]
    assert batch_plan(_signature((1,)), max_batch=64) is None
    assert batch_plan(_signature((1, 7)), max_batch=1) is None
    odd = Signature((TensorSig("x", "float32", (4, "batch")),), (TensorSig("y", "float32", ("batch",)),))
    assert batch_plan(odd, max_batch=64) is None


def test_merges_only_up_to_the_verified_size_and_splits_back() -> None:
    release, runs = threading.Event(), []

    def run(feeds: Any) -> dict[str, np.ndarray]:
        release.wait(30)
        runs.append(feeds["x"].shape[0])
        return {"y": feeds["x"][:, :2] * 2}

    batcher = Batcher(run, plan=batch_plan(_signature((1, 3, 7)), max_batch=64), max_queue=16)
    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((rows, 4)).astype(np.float32) for rows in (1, 3, 3, 3, 2)]
    futures = [batcher.submit({"x": x}, deadline=time.monotonic() + 60) for x in feeds]
    release.set()
    for x, future in zip(feeds, futures, strict=True):
        np.testing.assert_array_equal(future.result(30)["y"], x[:, :2] * 2)
    assert max(runs) <= 7 and sum(runs) == 12 and len(runs) < len(feeds)
    batcher.close()
    batcher.join(5)


def test_a_request_that_fails_in_a_merged_run_fails_alone() -> None:
    release = threading.Event()

    def run(feeds: Any) -> dict[str, np.ndarray]:
        release.wait(30)
        if (feeds["x"] < 0).any():
            from toolchain.core.errors import InferenceError

            raise InferenceError("negative input")
        return {"y": feeds["x"][:, :2]}

    batcher = Batcher(run, plan=batch_plan(_signature((1, 8)), max_batch=8), max_queue=16)
    good = [batcher.submit({"x": np.ones((1, 4), np.float32)}, deadline=time.monotonic() + 60) for _ in range(3)]
    bad = batcher.submit({"x": -np.ones((1, 4), np.float32)}, deadline=time.monotonic() + 60)
    release.set()
    assert all(f.result(30)["y"].shape == (1, 2) for f in good)
    with pytest.raises(Exception, match="negative input"):
        bad.result(30)
    batcher.close()


def test_the_batch_delay_is_paid_only_under_load() -> None:
    release, runs = threading.Event(), []

    def run(feeds: Any) -> dict[str, np.ndarray]:
        release.wait(30)
        runs.append(feeds["x"].shape[0])
        return {"y": feeds["x"][:, :2]}

    batcher = Batcher(run, plan=batch_plan(_signature((1, 8)), max_batch=8), max_queue=16, max_delay_s=60.0)
    x = np.ones((1, 4), np.float32)
    release.set()
    # a lone request runs at once, not after the 60 s delay
    assert batcher.submit({"x": x}, deadline=time.monotonic() + 120).result(30)["y"].shape == (1, 2)
    release.clear()
    burst = [batcher.submit({"x": x}, deadline=time.monotonic() + 120) for _ in range(3)]
    release.set()
    for future in burst:  # the worker held the first; the other two waited and ran merged
        future.result(30)
    # under load (the last run merged), a request waits for partners until the batch is full (8 rows)
    first = batcher.submit({"x": x}, deadline=time.monotonic() + 120)
    time.sleep(0.2)
    second = batcher.submit({"x": np.ones((7, 4), np.float32)}, deadline=time.monotonic() + 120)
    for future in (first, second):
        future.result(30)
    assert runs[0] == 1 and runs[-1] == 8, runs
    batcher.close()
    batcher.join(5)


def test_batched_answers_equal_unbatched_within_the_package_tolerance(dlrm_package: Path) -> None:
    tolerance = open_package(dlrm_package).tolerance
    alone = open_version(VersionSpec("feed.dlrm_small", "1", dlrm_package))
    rng = np.random.default_rng(7)
    requests = [
        {
            "dense": rng.standard_normal((rows, 13)).astype(np.float32),
            "sparse": rng.integers(0, 100, (rows, 8, 4)).astype(np.int64),
        }
        for rows in (1, 5, 2, 8, 3, 1, 7, 4)
    ]
    with serving([dlrm_package], options=ServeOptions(max_batch=64)) as (repository, server):
        batcher = repository.resolve("feed.dlrm_small").batcher
        assert batcher is not None
        release, entered, run, rows_run = threading.Event(), threading.Event(), batcher._run, []

        def held(feeds: Any) -> Any:
            entered.set()
            release.wait(30)
            rows_run.append(next(iter(feeds.values())).shape[0])
            return run(feeds)

        batcher._run = held
        client = tritonclient_http.InferenceServerClient(server.url, concurrency=len(requests))
        with ThreadPoolExecutor(len(requests)) as pool:
            first = pool.submit(client.infer, "feed.dlrm_small", triton_inputs(requests[0], binary=True))
            assert entered.wait(30)
            rest = [pool.submit(client.infer, "feed.dlrm_small", triton_inputs(r, binary=True)) for r in requests[1:]]
            while batcher.depth < len(requests):
                time.sleep(0.01)
            release.set()
            results = [first.result(60)] + [f.result(60) for f in rest]
    assert rows_run == [1, sum(len(r["dense"]) for r in requests[1:])]  # the waiting 7 ran as one batch of 30
    for feeds, result in zip(requests, results, strict=True):
        expected = dict(alone.run(feeds))
        report = compare(expected, {"score": result.as_numpy("score")}, tolerance)
        assert report, report
