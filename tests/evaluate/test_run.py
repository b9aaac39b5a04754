from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.evaluate.family import FEATURES, NAMES, good, labelled, spec
from toolchain.build.pipeline import export_package
from toolchain.cli import app
from toolchain.core.errors import EvaluationError
from toolchain.core.spec import Dim, Input, ModelSpec
from toolchain.evaluate import evaluate_package
from toolchain.perf.bench import bench_package, record_bench

GOOD, NEAR, WEAK = NAMES


@pytest.fixture
def data(tmp_path: Path) -> Path:
    x, labels = labelled(203, seed=21)
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    return tmp_path / "data.npz"


def test_the_reference_scores_best_and_noise_weights_worst(family: dict[str, Path], data: Path) -> None:
    scores = {name: evaluate_package(family[name], data, "labels") for name in NAMES}
    good, near, weak = (scores[n] for n in NAMES)
    assert good.value == 1.0 and good.examples == 203 and good.metric == "accuracy" and good.output == "logits"
    assert 0.9 <= near.value < 1.0
    assert weak.value < 0.6
    assert good.artifact == "onnx/model.onnx" and "portable ONNX: no bench recorded" in good.chosen
    assert "declared by the spec" in good.metric_from
    assert good.data_sha256 == near.data_sha256
    assert evaluate_package(family[WEAK], data, "labels", metric="top5").value == 1.0  # every class of five


def test_the_recommended_artifact_runs_in_chunks_of_its_planned_batch(
    family: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    package = tmp_path / "benched"
    shutil.copytree(family[GOOD], package)
    record_bench(bench_package(package, spec=spec(GOOD, good), batches=(1, 4), providers=("cpu",)))
    result = evaluate_package(package, data, "labels")
    assert result.chosen == "recommended at batch 4" and result.artifact == "onnx/model.onnx"
    assert result.value == 1.0 and result.examples == 203  # 203 = 50 chunks of 4 and one of 3, padded


def test_labels_from_their_own_file_and_the_cli(family: dict[str, Path], tmp_path: Path) -> None:
    x, labels = labelled(40, seed=22)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "labels.npy", labels)
    data, labels_file = str(tmp_path / "x.npy"), str(tmp_path / "labels.npy")
    result = CliRunner().invoke(app, ["evaluate", str(family[GOOD]), "--data", data, "--labels", labels_file])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("accuracy(logits) = 1 on 40 examples")
    assert "artifact: onnx/model.onnx" in result.output


def _hostile(tmp_path: Path, case: str) -> tuple[Path, str, str]:
    """(data file, labels argument, expected message) for one kind of malformed input."""
    x, labels = labelled(10, seed=23)
    path = tmp_path / "data.npz"
    if case == "missing input":
        np.savez(path, features=x, labels=labels)
        return path, "labels", "no array for input\\(s\\) \\['x'\\]; the .npz holds \\['features', 'labels'\\]"
    if case == "wrong width":
        np.savez(path, x=x[:, :-1], labels=labels)
        return path, "labels", f"input 'x': axis 1 must be {FEATURES}, got {FEATURES - 1}"
    if case == "wrong rank":
        np.savez(path, x=x[None], labels=labels)
        return path, "labels", "input 'x': expected float32\\[batch, 8\\], got float32\\[1, 10, 8\\]"
    if case == "wrong dtype":
        np.savez(path, x=x.astype(np.int32), labels=labels)
        return path, "labels", "input 'x': dtype int32 where the model takes float32"
    if case == "complex dtype":
        np.savez(path, x=x.astype(np.complex64), labels=labels)
        return path, "labels", "dtype complex64"
    if case == "non-finite":
        x[3, 2] = np.nan
        np.savez(path, x=x, labels=labels)
        return path, "labels", "input 'x': 1 non-finite value"
    if case == "label count":
        np.savez(path, x=x, labels=labels[:-1])
        return path, "labels", "int64\\[9\\] labels for 10 examples"
    if case == "float labels":
        np.savez(path, x=x, labels=labels.astype(np.float32))
        return path, "labels", "accuracy needs integer class ids"
    if case == "class out of range":
        labels[4] = 9
        np.savez(path, x=x, labels=labels)
        return path, "labels", "class ids must lie in \\[0, 5\\), found 9"
    if case == "no labels":
        np.savez(path, x=x)
        return path, "targets", "--labels 'targets' is neither a .npy/.npz file nor an array of the data"
    if case == "no examples":
        np.savez(path, x=x[:0], labels=labels[:0])
        return path, "labels", "no examples"
    if case == "pickled object array":
        np.savez(path, x=np.array([{"a": 1}] * 10, dtype=object), labels=labels)
        return path, "labels", "not a plain numeric dtype; refusing it"
    if case == "not a zip":
        path.write_bytes(pickle.dumps({"x": x}))
        return path, "labels", "not a readable .npz archive"
    if case == "foreign member":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("../x.npy", b"")
        return path, "labels", "member '../x.npy' is not an array that np.savez writes"
    if case == "lying header":
        np.savez(path, x=x, labels=labels)
        raw = np.lib.format.header_data_from_array_1_0(x)
        raw["shape"] = (1 << 40, FEATURES)
        with zipfile.ZipFile(path, "w") as archive:
            import io

            buffer = io.BytesIO()
            np.lib.format.write_array_header_1_0(buffer, raw)
            archive.writestr("x.npy", buffer.getvalue() + x.tobytes())
            archive.writestr("labels.npy", b"")
        return path, "labels", "header claims shape \\[1099511627776, 8\\]"
    if case == "csv":
        path = tmp_path / "data.csv"
        path.write_text("1,2,3\n")
        return path, "labels", "expected a .npz \\(one array per input\\) or a .npy file"
    if case == "missing file":
        return tmp_path / "absent.npz", "labels", "cannot read the data file"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "missing input", "wrong width", "wrong rank", "wrong dtype", "complex dtype", "non-finite", "label count",
        "float labels", "class out of range", "no labels", "no examples", "pickled object array", "not a zip",
        "foreign member", "lying header", "csv", "missing file",
    ],
)  # fmt: skip
def test_hostile_data_is_refused_naming_the_file_and_field(family: dict[str, Path], tmp_path: Path, case: str) -> None:
    path, labels, match = _hostile(tmp_path, case)
    with pytest.raises(EvaluationError, match=match):
        evaluate_package(family[GOOD], path, labels)


def test_the_cli_prints_a_refusal_as_one_line(family: dict[str, Path], tmp_path: Path) -> None:
    path, labels, _ = _hostile(tmp_path, "wrong width")
    result = CliRunner().invoke(app, ["evaluate", str(family[GOOD]), "--data", str(path), "--labels", labels])
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error: ")
    assert str(path) in result.output


class _Pooled(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(FEATURES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(x.mean(dim=1)))


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ModelSpec(
        name="test.pooled",
        factory=_Pooled,
        inputs={"x": Input.normal(("batch", "seq", FEATURES))},
        outputs=("probability",),
        dims={"batch": Dim(example=4, max=64), "seq": Dim(example=3, min=2, max=8)},
        tags=("ranking",),
    )
    out = tmp_path_factory.mktemp("pooled") / "pkg"
    assert export_package(spec, out, formats=("onnx",), optimize=False)
    return out


def test_a_scorer_gets_the_auc_its_task_tag_implies_and_ndcg_over_groups(pooled: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(24)
    x = rng.standard_normal((120, 5, FEATURES)).astype(np.float32)
    torch.manual_seed(0)
    model = _Pooled().eval()  # the spec's seed 0: the same weights as the package
    with torch.no_grad():
        score = model(torch.from_numpy(x)).numpy().reshape(-1)
    clicks = (score > np.median(score)).astype(np.int64)
    np.savez(tmp_path / "data.npz", x=x, clicks=clicks, noise=rng.integers(0, 2, 120), query=np.arange(120) // 10)
    result = evaluate_package(pooled, tmp_path / "data.npz", "clicks")
    assert (result.metric, result.value, result.examples) == ("auc", 1.0, 120)
    assert "implied by the spec's tag 'ranking'" in result.metric_from
    assert 0.3 < evaluate_package(pooled, tmp_path / "data.npz", "noise").value < 0.7
    ndcg = evaluate_package(pooled, tmp_path / "data.npz", "clicks", metric="ndcg@5", groups="query")
    assert ndcg.metric == "ndcg@5" and ndcg.value == pytest.approx(1.0)
    with pytest.raises(EvaluationError, match="groups must be 120 integer query ids, found float32"):
        np.savez(tmp_path / "bad.npz", x=x, clicks=clicks, query=np.zeros(120, np.float32))
        evaluate_package(pooled, tmp_path / "bad.npz", "clicks", metric="ndcg@5", groups="query")


@pytest.mark.parametrize(("seq", "match"), [(1, "dim 'seq' is 1, outside \\[2, 8\\]"), (9, "dim 'seq' is 9")])
def test_a_dim_outside_the_verified_range_is_refused(pooled: Path, tmp_path: Path, seq: int, match: str) -> None:
    x = np.zeros((6, seq, FEATURES), np.float32)
    np.savez(tmp_path / "data.npz", x=x, labels=np.array([0, 1] * 3))
    with pytest.raises(EvaluationError, match=match):
        evaluate_package(pooled, tmp_path / "data.npz", "labels")


def test_a_zoo_matcher_declares_auc_and_scores_its_own_eager_decisions(tmp_path: Path) -> None:
    import zoo  # noqa: F401 - registers the zoo's models
    from toolchain.core.spec import SPECS

    spec = SPECS.get("face.match_lr")
    assert export_package(spec, tmp_path / "pkg", formats=("onnx",), optimize=False)
    rng = np.random.default_rng(25)
    a, b = (rng.uniform(-1, 1, (64, spec.inputs["a"].shape[1])).astype(np.float32) for _ in range(2))
    b[:32] = a[:32] + 0.01 * rng.standard_normal(a[:32].shape).astype(np.float32)  # same faces
    model = spec.build().eval()
    with torch.no_grad():
        probability = model(torch.from_numpy(a), torch.from_numpy(b)).numpy().reshape(-1)
    np.savez(tmp_path / "pairs.npz", a=a, b=b, same=(probability > np.median(probability)).astype(np.int64))
    result = evaluate_package(tmp_path / "pkg", tmp_path / "pairs.npz", "same")
    assert (result.metric, result.output, result.value) == ("auc", "probability", 1.0)
    assert result.metric_from == "declared by the spec (tag metric:auc)"


def test_a_compressed_npz_that_would_unpack_past_the_limit_is_refused_unread(
    family: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, labels = labelled(10, seed=26)
    np.savez_compressed(tmp_path / "bomb.npz", x=x, labels=labels, padding=np.zeros(1 << 20, np.uint8))
    assert (tmp_path / "bomb.npz").stat().st_size < 20_000
    monkeypatch.setattr("toolchain.evaluate.data.MAX_DATA_BYTES", 1 << 19)
    with pytest.raises(EvaluationError, match=r"bomb.npz: its arrays would unpack to 10[0-9]{5} bytes, more than"):
        evaluate_package(family[GOOD], tmp_path / "bomb.npz", "labels")
