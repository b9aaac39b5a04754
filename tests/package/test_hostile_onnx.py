"""CHECKLIST rows 8 (external data escaping), 9 (hostile offsets and keys) and 10 (invalid ONNX bytes)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.package.hostile import cli, fail_lines, first_initializer, point_external, restamp, verify_measured
from toolchain.core.errors import PackageError
from toolchain.package import onnxwire
from toolchain.package.format import check_integrity, open_package

DATA = "onnx/model.onnx.data"


def test_external_data_package_verifies_from_memory(external_package: Path, hostile, canary) -> None:
    pkg = hostile(external_package)
    assert (pkg / DATA).stat().st_size > 0
    package = open_package(pkg)
    model, external = package.onnx_model("onnx/model.onnx")
    assert model == (pkg / "onnx/model.onnx").read_bytes()
    assert external == {"model.onnx.data": (pkg / DATA).read_bytes()}
    # NOTE: ONNX Runtime gets the bytes that were hashed: the file on disk is not read again.
    (pkg / DATA).rename(pkg.parent / "moved.data")
    from runtimes.ort import OrtRuntime

    session = OrtRuntime().load_bytes(model, name="onnx/model.onnx", signature=package.signature, external=external)
    feeds = {t.name: package.array(package.samples[0]["inputs"][t.name]) for t in package.signature.inputs}
    expected = package.array(package.samples[0]["expected"]["probability"])
    np.testing.assert_allclose(session.run(feeds)["probability"], expected, rtol=1e-4, atol=1e-5)
    (pkg.parent / "moved.data").rename(pkg / DATA)
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert f"verified: {pkg}" in result.stdout


ESCAPES = {
    "parent": lambda pkg, canary: point_external(pkg, location="../../secret.bin"),
    "absolute": lambda pkg, canary: point_external(pkg, location=str(canary.path)),
    "windows": lambda pkg, canary: point_external(pkg, location="C:\\secret.bin"),
    "backslash": lambda pkg, canary: point_external(pkg, location="..\\..\\secret.bin"),
    "inner dots": lambda pkg, canary: point_external(pkg, location="sub/../../../secret.bin"),
    "symlink": lambda pkg, canary: _replace_data(pkg, lambda: (pkg / DATA).symlink_to(canary.path)),
    "hard link": lambda pkg, canary: _replace_data(pkg, lambda: os.link(canary.path, pkg / DATA)),
}


def _replace_data(pkg: Path, make) -> None:
    data = (pkg / DATA).read_bytes()
    (pkg.parent / "secret.bin").write_bytes(data)  # NOTE: the canary holds what the package would want to read
    (pkg / DATA).unlink()
    make()
    restamp(pkg, keep=(DATA,))


@pytest.mark.parametrize("case", list(ESCAPES))
def test_external_data_that_escapes_is_refused_unopened(
    external_package: Path, hostile, canary, no_runtime, case: str
) -> None:
    pkg = hostile(external_package)
    ESCAPES[case](pkg, canary)
    if case in ("symlink", "hard link"):
        canary.content = canary.path.read_bytes()
    canary.arm()
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    lines = fail_lines(result)
    assert "external data" in lines[0] and "escapes the package" in lines[0], result.stderr
    assert lines[0].startswith("FAIL onnx/model.onnx: tensor ")
    assert no_runtime == []
    with pytest.raises(PackageError, match="escapes the package"):
        open_package(pkg)


def test_external_data_in_an_unlisted_file_is_refused(external_package: Path, hostile, canary, no_runtime) -> None:
    pkg = hostile(external_package)
    point_external(pkg, location="other.data")
    problems = check_integrity(pkg)
    assert str(problems[0]).endswith("external data 'other.data' is not a file the manifest lists")


HOSTILE_FIELDS = [
    ({"offset": "-1"}, "external data offset '-1' is not a non-negative integer"),
    ({"offset": "abc"}, "external data offset 'abc' is not a non-negative integer"),
    ({"length": "1e3"}, "external data length '1e3' is not a non-negative integer"),
    ({"length": str(2**50)}, f"external data offset 0 + length {2**50} lies past the end of {DATA}"),
    ({"offset": str(2**63)}, "lies past the end"),
    ({"offset": "9" * 30}, "is not a non-negative integer"),
    ({"basepath": "/etc"}, "external data key 'basepath' is unknown or repeated"),
]


@pytest.mark.parametrize(("fields", "message"), HOSTILE_FIELDS, ids=[str(f)[:20] for f, _ in HOSTILE_FIELDS])
def test_hostile_offset_length_or_key_is_refused_without_allocating(
    external_package: Path, hostile, canary, no_runtime, fields: dict[str, str], message: str
) -> None:
    pkg = hostile(external_package)
    point_external(pkg, **fields)
    result, peak = verify_measured(pkg)
    assert result.exit_code == 1
    assert message in fail_lines(result)[0], result.stderr
    assert peak < 64 << 20
    assert no_runtime == []


def test_offset_past_the_end_of_the_file(external_package: Path, hostile, canary, no_runtime) -> None:
    pkg = hostile(external_package)
    size = (pkg / DATA).stat().st_size
    point_external(pkg, offset=str(size), length="4")
    assert f"external data offset {size} + length 4 lies past the end of {DATA} ({size} bytes)" in str(
        check_integrity(pkg)[0]
    )


def _model_bytes(pkg: Path) -> bytes:
    return (pkg / "onnx/model.onnx").read_bytes()


INVALID = {
    "random": lambda pkg: np.random.default_rng(0).bytes(4096),
    "truncated": lambda pkg: _model_bytes(pkg)[: len(_model_bytes(pkg)) // 2],
    "empty": lambda pkg: b"",
    "text": lambda pkg: b"ir_version: 8\ngraph { }\n",
    "no graph": lambda pkg: onnx.ModelProto(ir_version=8, producer_name="x").SerializeToString(),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_model_that_is_not_onnx_is_a_clear_error(zoo_package: Path, hostile, canary, no_runtime, case: str) -> None:
    pkg = hostile(zoo_package)
    (pkg / "onnx/model.onnx").write_bytes(INVALID[case](pkg))
    restamp(pkg)
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    lines = fail_lines(result)
    assert len(lines) == 1 and lines[0].startswith("FAIL onnx/model.onnx: not a valid ONNX model: "), result.stderr
    assert no_runtime == []


def test_wire_field_numbers_match_onnx() -> None:
    kinds = {
        onnxwire._MODEL: onnx.ModelProto,
        onnxwire._GRAPH: onnx.GraphProto,
        onnxwire._NODE: onnx.NodeProto,
        onnxwire._ATTRIBUTE: onnx.AttributeProto,
        onnxwire._FUNCTION: onnx.FunctionProto,
        onnxwire._TRAINING: onnx.TrainingInfoProto,
        onnxwire._SPARSE: onnx.SparseTensorProto,
        onnxwire._TENSOR: onnx.TensorProto,
    }
    for kind, fields in onnxwire._FIELDS.items():
        by_number = {f.number: f for f in kinds[kind].DESCRIPTOR.fields}
        for number, (holds, repeated) in fields.items():
            described = by_number[number]
            assert described.message_type.name == kinds[holds].DESCRIPTOR.name, (kinds[kind], number)
            assert described.is_repeated == repeated
    tensor = {f.name: f.number for f in onnx.TensorProto.DESCRIPTOR.fields}
    assert (tensor["name"], tensor["external_data"], tensor["data_location"]) == (8, 13, 14)
    model = {f.name: f.number for f in onnx.ModelProto.DESCRIPTOR.fields}
    assert (model["ir_version"], model["opset_import"], model["graph"]) == (1, 8, 7)
    assert onnx.TensorProto.EXTERNAL == onnxwire.EXTERNAL


def test_external_data_in_a_subgraph_and_a_constant_is_found(tmp_path: Path) -> None:
    helper = onnx.helper
    weight = onnx.numpy_helper.from_array(np.ones(4, np.float32), "inner")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../secret.bin")
    branch = helper.make_graph([helper.make_node("Identity", ["inner"], ["o"])], "b", [], [], [weight])
    const = helper.make_node("Constant", [], ["c"], value=onnx.numpy_helper.from_array(np.ones(2, np.float32), "k"))
    const.attribute[0].t.data_location = onnx.TensorProto.EXTERNAL
    const.attribute[0].t.external_data.add(key="location", value="/abs")
    node = helper.make_node("If", ["cond"], ["o"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([const, node], "g", [], [])
    model = helper.make_model(graph)
    found = onnxwire.external_tensors(model.SerializeToString())
    assert sorted(t.entries[0][1] for t in found) == ["../../secret.bin", "../../secret.bin", "/abs"]
    twice = model.SerializeToString() + b"\x3a\x00"  # NOTE: an empty graph (field 7) appended: protobuf would merge
    with pytest.raises(onnxwire.WireError, match="singular field 7 given twice"):
        onnxwire.external_tensors(twice)


def test_first_initializer_helper_reads_external_data(external_package: Path) -> None:
    assert first_initializer(external_package).size > 0
