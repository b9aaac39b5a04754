from __future__ import annotations

from pathlib import Path

import pytest

import zoo
from tests.serve.conftest import samples, serving, triton_inputs
from toolchain.build.pipeline import export_package
from toolchain.core.parity import compare
from toolchain.core.spec import SPECS
from toolchain.package.format import open_package
from toolchain.serve.limits import Limits

tritonclient_http = pytest.importorskip("tritonclient.http")
ZOO = sorted(n for n in SPECS if n.split(".")[0] in zoo.__all__)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_package_answers_its_golden_samples(name: str, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    assert export_package(SPECS.get(name), package, formats=("auto",), optimize=False)
    tolerance = open_package(package).tolerance
    with serving([package]) as (_, server):
        client = tritonclient_http.InferenceServerClient(server.url)
        meta = client.get_model_metadata(name)
        assert sorted(i["name"] for i in meta["inputs"]) == sorted(samples(package)[0][1])
        for index, (sample, feeds, expected) in enumerate(samples(package)):
            # NOTE: JSON for every other set, unless it would pass the server's JSON limit (8 MiB: an image
            # batch as JSON text is ~15 MB); the limit is what a client meets, so the test keeps it.
            as_json = sum(a.size for a in feeds.values()) * 24 < Limits().max_json_bytes
            binary = index % 2 == 0 or not as_json
            outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in expected]
            result = client.infer(name, triton_inputs(feeds, binary=binary), outputs=outputs)
            actual = {n: result.as_numpy(n) for n in expected}
            report = compare(expected, actual, tolerance, sample=sample, feeds=feeds)
            assert report, report
