from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import zoo  # noqa: F401 - registers the zoo's models
from tests.conftest import rehash
from toolchain.build.pipeline import export_package
from toolchain.cli import app
from toolchain.core.errors import RegistryError
from toolchain.core.spec import SPECS
from toolchain.package.format import load_array, open_package
from toolchain.registry.rules import Budgets
from toolchain.registry.table import compare_table

pytest.importorskip("mlflow")
from toolchain.registry.store import ModelRegistry

runner = CliRunner()
NAME = "face.match_lr"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three exports of one zoo model (different sample seeds) and one of another model with the same inputs.

    ``big`` ships the legacy ONNX path beside the torch.export one: an honest size regression.
    """
    out = tmp_path_factory.mktemp("registry-packages")
    spec = SPECS.get(NAME)
    built = {
        "v1": export_package(spec, out / "v1", formats=("onnx",), seed=1),
        "v2": export_package(spec, out / "v2", formats=("onnx",), seed=2),
        "big": export_package(spec, out / "big", formats=("onnx", "onnx_legacy"), seed=3),
        "svm": export_package(SPECS.get("face.match_svm"), out / "svm", formats=("onnx",), seed=4),
    }
    assert all(built.values())
    return {key: out / key for key in built}


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(f"sqlite:///{tmp_path / 'registry.db'}", artifacts=tmp_path / "artifacts")


def test_evidence_comes_from_the_package(registry: ModelRegistry, packages: dict[str, Path]) -> None:
    version = registry.add(packages["big"])
    e = version.evidence
    manifest = open_package(packages["big"]).manifest
    assert e.kept == ("onnx/model.onnx", "onnx_legacy/model.onnx")
    sizes = {f["path"]: f["size"] for f in manifest["files"]}
    assert e.sizes == {p: sizes[p] for p in e.kept}
    assert e.ops == len(onnx.load(str(packages["big"] / "onnx/model.onnx")).graph.node)
    assert e.worst_ratio["onnx/model.onnx"] == max(
        o["worst_ratio"] for o in manifest["parity"]["onnx/model.onnx"]["worst"].values()
    )
    assert version.tags["toolchain.kept"] == "onnx/model.onnx,onnx_legacy/model.onnx"
    found = registry._client.search_model_versions(f"tags.`toolchain.size_bytes` = '{e.size_bytes}'")
    assert [str(mv.version) for mv in found] == ["1"]
    stored = registry.local_path(version)
    assert (
        stored != packages["big"]
        and (stored / "manifest.json").read_bytes() == (packages["big"] / "manifest.json").read_bytes()
    )


def test_lifecycle_through_the_cli(tmp_path: Path, packages: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("TOOLCHAIN_REGISTRY_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("TOOLCHAIN_USER", "alice")

    def cli(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["registry", *args])
        assert result.exit_code == code, result.output
        return result.output

    for key in ("v1", "v2", "big"):
        assert "registered face.match_lr" in cli("add", str(packages[key]))
    assert "3 version(s), production —, latest 3" in cli("list")
    table = cli("compare", NAME).splitlines()
    assert len(table) == 5
    assert [line.split()[0] for line in table[1:4]] == ["1", "2", "3"]
    assert _size(cli("show", f"{NAME}@3")) > 1.1 * _size(cli("show", f"{NAME}@2")) > 0

    assert "face.match_lr: latency +10%, size +10% against production" in cli("budget", NAME)
    assert "promoted face.match_lr version 1 to production" in cli("promote", NAME, "1")
    assert "promoted face.match_lr version 2" in cli("promote", NAME, "2")
    refused = cli("promote", NAME, "3", code=1)
    assert "not promoted: version 3 vs production 2: size" in refused and "--force --reason" in refused
    assert "--force needs --reason" in cli("promote", NAME, "3", "--force", code=1)
    assert "production 2" in cli("list")
    assert "retired face.match_lr version 3" in cli("retire", NAME, "3", "--reason", "ships two ONNX copies")
    assert "is production; promote another version first" in cli("retire", NAME, "2", "--reason", "x", code=1)
    assert "face.match_lr version 2: production" in cli("show", NAME)

    log = cli("log", NAME).splitlines()
    steps = [[*line.split(" ", 3)[1:3], line.split(" ", 4)[3].rstrip(":")] for line in log]
    assert steps == [
        ["alice", "add", "1"], ["alice", "add", "2"], ["alice", "add", "3"],
        ["alice", "promote", "1"], ["alice", "promote", "2"], ["alice", "refused", "3"],
        ["alice", "retire", "3"],
    ]  # fmt: skip
    assert log[-1].endswith("retire 3: ships two ONNX copies")
    assert "size" in log[5]


def _size(shown: str) -> int:
    return int(shown.split("size:")[1].split(" B")[0])


def test_forced_promotion_is_recorded_with_its_reason(registry: ModelRegistry, packages: dict[str, Path]) -> None:
    registry.add(packages["v1"])
    registry.add(packages["big"])
    registry.promote(NAME, "1")
    check = registry.promote(NAME, "2", force=True, reason="the legacy path is needed by an old client")
    assert not check
    assert registry.production(NAME).version == "2"
    last = registry.log(NAME)[-1]
    assert (last.action, last.forced, last.why) == ("promote", True, "the legacy path is needed by an old client")
    assert "size" in last.findings[0]
    assert registry.get(NAME, "1").status == "registered"


def test_a_different_signature_is_refused(registry: ModelRegistry, packages: dict[str, Path]) -> None:
    registry.add(packages["v1"])
    registry.add(packages["svm"], name=NAME)
    registry.promote(NAME, "1")
    with pytest.raises(RegistryError, match=r"signature \w{12} differs from production's"):
        registry.promote(NAME, "2")


def test_a_package_that_does_not_verify_is_not_added(
    registry: ModelRegistry, packages: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(packages["v1"], bad)
    rel = open_package(bad).samples[0]["expected"]["probability"]
    np.save(bad / rel, load_array(bad / rel) + 0.5, allow_pickle=False)
    rehash(bad, rel)
    with pytest.raises(RegistryError, match="does not verify on this host, not added"):
        registry.add(bad)
    assert registry.names() == []


def test_a_stored_copy_changed_after_add_cannot_be_promoted(registry: ModelRegistry, packages: dict[str, Path]) -> None:
    stored = registry.local_path(registry.add(packages["v2"]))
    model = stored / "onnx/model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(RegistryError, match=r"does not verify on this host: onnx/model\.onnx: size"):
        registry.promote(NAME, "1")
    assert registry.production(NAME) is None
    assert [e.action for e in registry.log(NAME)] == ["add", "refused"]


def test_unknown_names_say_what_exists(registry: ModelRegistry, packages: dict[str, Path]) -> None:
    registry.add(packages["v1"])
    with pytest.raises(RegistryError, match=r"no model 'nope' .* known: \['face.match_lr'\]"):
        registry.versions("nope")
    with pytest.raises(RegistryError, match=r"no version '9' of 'face\.match_lr'"):
        registry.get(NAME, "9")


@pytest.mark.parametrize("name", ["x'y", "a/b", "", "-lead", "x" * 129])
def test_hostile_names_are_refused_before_mlflow_sees_them(registry: ModelRegistry, name: str) -> None:
    with pytest.raises(RegistryError, match="must be 1-128 letters, digits"):
        registry.versions(name)


def test_a_malformed_manifest_field_is_one_error(
    registry: ModelRegistry, packages: dict[str, Path], tmp_path: Path
) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(packages["v1"], odd)
    manifest = json.loads((odd / "manifest.json").read_text())
    manifest["recommended"] = {"1": {"artifact": "onnx/model.onnx", "p50_ms": "fast"}}
    (odd / "manifest.json").write_text(json.dumps(manifest))
    # NOTE: the package schema refuses it while verifying, naming the JSON path, before the registry reads it.
    with pytest.raises(RegistryError, match=r"not added: manifest.json: recommended\[\"1\"\]\.runtime: missing"):
        registry.add(odd)
    with pytest.raises(RegistryError, match="must be 1-128 letters"):
        registry.add(packages["v1"], name="x'y")


def test_the_registry_option_and_one_line_errors(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    listed = runner.invoke(app, ["registry", "--registry", uri, "list"])
    assert listed.exit_code == 0 and listed.output == ""
    assert (tmp_path / "cli.db").is_file()
    missing = runner.invoke(app, ["registry", "--registry", uri, "show", "face.match_lr@1"])
    assert missing.exit_code == 1
    assert missing.output.count("\n") == 1 and "error: no version '1' of 'face.match_lr'" in missing.output


def test_latency_bench_recorded_is_evidence(registry: ModelRegistry, packages: dict[str, Path], tmp_path: Path) -> None:
    from toolchain.perf.bench import bench_package, record_bench

    benched = tmp_path / "benched"
    shutil.copytree(packages["v1"], benched)
    record_bench(bench_package(benched, spec=SPECS.get(NAME), batches=(1, 16), runtimes=("ort",)))
    recorded = open_package(benched).manifest["recommended"]
    version = registry.add(benched)
    for batch in ("1", "16"):
        latency = version.evidence.latency[batch]
        assert latency.p50_ms == recorded[batch]["p50_ms"] and latency.artifact == recorded[batch]["artifact"]
        assert version.tags[f"toolchain.latency_ms.batch{batch}"] == f"{recorded[batch]['p50_ms']:.6g}"
    row = compare_table(registry.versions(NAME)).splitlines()[1].split()
    assert row[3:5] == [f"{recorded['1']['p50_ms']:.4g}", f"{recorded['16']['p50_ms']:.4g}"], row
    registry.promote(NAME, "1")
    registry.add(packages["v2"])  # not benched: promotion compares what it can and says what it could not
    check = registry.promote(NAME, "2")
    assert check and "no latency recorded" in check.notes[-1]


def test_declared_budgets_decide_and_are_logged(registry: ModelRegistry, packages: dict[str, Path]) -> None:
    registry.add(packages["v1"])
    registry.add(packages["big"])
    registry.promote(NAME, "1")
    with pytest.raises(RegistryError, match=r"size \d+ B is [\d.]+x production's"):
        registry.promote(NAME, "2")
    with pytest.raises(RegistryError, match="must be a share of production's value"):
        registry.declare_budgets(NAME, Budgets(size=-0.5))
    registry.declare_budgets(NAME, Budgets(size=1.0), reason="both ONNX paths ship from now on")
    assert registry.budgets(NAME) == Budgets(latency=0.10, size=1.0)
    assert registry.promote(NAME, "2")
    assert [(e.action, e.version) for e in registry.log(NAME)][-3:] == [
        ("refused", "2"),
        ("budget", "-"),
        ("promote", "2"),
    ]
    assert registry.log(NAME)[-2].why == "latency +10%, size +100%: both ONNX paths ship from now on"


def test_a_model_created_by_another_add_meanwhile_is_used(
    registry: ModelRegistry, packages: dict[str, Path], monkeypatch
) -> None:
    registry.add(packages["v1"])
    # NOTE: the other writer's model exists, but this add's search ran before it was created.
    monkeypatch.setattr(registry._client, "search_registered_models", lambda **kwargs: [])
    assert registry.add(packages["v2"]).version == "2"
