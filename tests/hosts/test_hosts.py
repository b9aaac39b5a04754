from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import rehash
from toolchain.core.errors import HostError, PackageError
from toolchain.hosts import HostResult, verify_on
from toolchain.hosts.result import from_report
from toolchain.package.verify import verify_package

pytestmark = pytest.mark.crossplatform

HOSTS = ("node", "browser", "cpp")
KIND = {"node": "onnx", "browser": "onnx", "cpp": "torchscript"}


def _verify(host: str, package: Path, tmp_path: Path, *, trust: bool = False) -> HostResult:
    shot = tmp_path / "test-artifacts" / f"{host}.png" if host == "browser" else None
    return verify_on(host, package, trust=trust, screenshot=shot)


def _artifacts(package: Path, fmt: str) -> list[str]:
    manifest = json.loads((package / "manifest.json").read_text())
    return [a["path"] for a in manifest["artifacts"] if a["format"] == fmt]


@pytest.mark.parametrize("host", HOSTS)
def test_host_verifies_every_artifact_of_its_kind(host: str, hosts_package: Path, tmp_path: Path) -> None:
    result = _verify(host, hosts_package, tmp_path)
    assert result, result.failures
    expected = _artifacts(hosts_package, KIND[host])
    assert sorted(a.path for a in result.artifacts) == sorted(expected)
    assert all(a.passed and len(a.worst) == 10 for a in result.artifacts)
    if host == "browser":
        shot = tmp_path / "test-artifacts" / "browser.png"
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("host", HOSTS)
def test_host_fails_a_flipped_byte_naming_the_file(host: str, package_copy: Path, tmp_path: Path) -> None:
    target = _artifacts(package_copy, KIND[host])[0]
    _flip_byte(package_copy / target)
    result = _verify(host, package_copy, tmp_path)
    assert not result
    assert any(line.startswith(target) and "sha256" in line for line in result.failures), result.failures
    assert result.problems == (f"{target}: sha256 does not match the manifest (file changed or corrupted)",)
    assert result.artifacts == ()


@pytest.mark.parametrize("host", HOSTS)
def test_host_fails_an_unlisted_file(host: str, package_copy: Path, tmp_path: Path) -> None:
    (package_copy / "samples" / "extra.npy").write_bytes(b"not listed")
    result = _verify(host, package_copy, tmp_path)
    assert not result
    assert any("samples/extra.npy" in line and "not listed" in line for line in result.failures), result.failures
    assert result.problems == ("samples/extra.npy: is not listed in the manifest (unexpected file)",)


def test_host_escapes_control_characters_in_file_names(package_copy: Path, tmp_path: Path) -> None:
    (package_copy / "samples" / "evil\x1b[31m.npy").write_bytes(b"x")
    result = _verify("node", package_copy, tmp_path)
    assert result.problems == ("samples/evil\\x1b[31m.npy: is not listed in the manifest (unexpected file)",)
    assert not any("\x1b" in line for line in result.failures)


def _scale_onnx(package: Path) -> str:
    rel = "onnx/model.onnx"
    model = onnx.load(str(package / rel))
    init = max(model.graph.initializer, key=lambda i: int(np.prod(i.dims)))
    array = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((array * 1.5).astype(array.dtype), init.name))
    onnx.save(model, str(package / rel))
    rehash(package, rel)
    return rel


def _scale_torchscript(package: Path) -> str:
    import torch

    import zoo  # noqa: F401
    from toolchain.core.spec import SPECS

    # NOTE: the exported TorchScript is frozen (weights are graph constants), so the tampered file is the
    # same seeded model with one weight scaled, scripted again and saved in its place.
    rel = "torchscript/model.pt"
    model = SPECS.get("face.match_lr").build().eval()
    with torch.no_grad():
        next(p for p in model.parameters() if p.dtype == torch.float32).mul_(1.5)
    torch.jit.save(torch.jit.script(model), str(package / rel))
    rehash(package, rel)
    return rel


@pytest.mark.parametrize("host", HOSTS)
def test_host_fails_a_scaled_weight_with_valid_hashes_naming_output_and_sample(
    host: str, package_copy: Path, tmp_path: Path
) -> None:
    rel = _scale_torchscript(package_copy) if host == "cpp" else _scale_onnx(package_copy)
    # NOTE: a re-hashed manifest is no longer the one this machine exported, so TorchScript needs --trust.
    result = _verify(host, package_copy, tmp_path, trust=True)
    assert not result
    assert result.problems == ()
    lines = [line for line in result.failures if line.startswith(rel)]
    assert any("output 'probability' on sample 'batch-17'" in line for line in lines), result.failures
    assert not result.outcome(rel).passed
    # only the tampered artifact fails: the others in the package still pass on this host
    assert all(a.passed for a in result.artifacts if a.path != rel)


_EPS = {"fp32": 2.0**-23, "fp16": 2.0**-10}


@pytest.mark.parametrize("host", HOSTS)
def test_hosts_agree_with_python_on_the_worst_error_ratio(host: str, hosts_package: Path, tmp_path: Path) -> None:
    python = from_report(verify_package(hosts_package, providers=("cpu",)))
    result = _verify(host, hosts_package, tmp_path)
    manifest = json.loads((hosts_package / "manifest.json").read_text())
    samples = {s["name"]: s for s in manifest["samples"]}
    compared = 0
    for outcome in result.artifacts:
        entry = next(a for a in manifest["artifacts"] if a["path"] == outcome.path)
        atol = (entry.get("tolerance") or manifest["tolerance"])["atol"]
        reference = python.outcome(outcome.path)
        assert reference is not None and set(reference.worst) == set(outcome.worst)
        for sample, ratio in outcome.worst.items():
            expected = np.load(hosts_package / samples[sample]["expected"]["probability"])
            # NOTE: float rounding: outputs differing by 4 units in the last place at magnitude max(1, |e|), over
            # the tolerance. Runtimes round intermediates differently (WebAssembly's kernels measured 3e-3 apart
            # from Python's on this model, onnxruntime-node 0); a wrong rule or another artifact is far outside.
            slack = 4 * _EPS[entry["variant"]] * max(1.0, float(np.abs(expected).max())) / atol
            assert abs(ratio - reference.worst[sample]) <= slack, (outcome.path, sample, ratio, reference.worst[sample])
            compared += 1
    assert compared == 10 * len(result.artifacts) > 0


def test_cpp_refuses_torchscript_of_an_untrusted_package(hosts_package: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TOOLCHAIN_HOME", str(tmp_path / "elsewhere"))
    result = verify_on("cpp", hosts_package)
    assert not result
    assert sorted(result.refused) == sorted(_artifacts(hosts_package, "torchscript"))
    assert verify_on("cpp", hosts_package, trust=True)


@pytest.mark.parametrize("host", HOSTS)
def test_missing_package_folder_is_a_package_error(host: str, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="nope: no such package folder"):
        verify_on(host, tmp_path / "nope")


def test_missing_node_is_a_clear_error(hosts_package: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(HostError, match=r"Node\.js \('node'\) is not on PATH; install it"):
        verify_on("node", hosts_package)


def test_missing_chromium_is_a_clear_error(hosts_package: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TOOLCHAIN_CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(HostError, match=r"TOOLCHAIN_CHROMIUM=.* is not a file"):
        verify_on("browser", hosts_package)


def test_cli_verify_host_all_prints_a_host_by_artifact_table(hosts_package: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "toolchain.cli", "verify", str(hosts_package), "--host", "all"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if line.startswith("artifact "))
    assert header.split() == ["artifact", "python", "node", "browser", "cpp"]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("torchscript/model.pt ")).split()
    assert (row[1], row[3], row[4], row[5]) == ("ok", "-", "-", "ok"), row
    assert f"verified on python, node, browser, cpp: {hosts_package}" in proc.stdout


def test_cli_verify_unknown_host_is_one_line(hosts_package: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "toolchain.cli", "verify", str(hosts_package), "--host", "wasm"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: unknown host 'wasm'; choose one of python, node, browser, cpp or all"


def _cli_verify(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "toolchain.cli", "verify", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)


def test_cli_verify_on_a_host_says_what_it_did_not_check_and_strict_fails_on_it(hosts_package: Path) -> None:
    torchscript = sorted(_artifacts(hosts_package, "torchscript"))
    proc = _cli_verify(str(hosts_package), "--host", "node")
    assert proc.returncode == 0, proc.stderr
    assert f"partly verified on node: {hosts_package}: not checked there: {', '.join(torchscript)}" in proc.stdout
    strict = _cli_verify(str(hosts_package), "--host", "node", "--strict")
    assert strict.returncode == 1
    assert f"--strict: not verified on node: {', '.join(torchscript)}" in strict.stderr


def test_cli_verify_on_a_host_checks_the_signature_first_and_reads_archives(
    hosts_package: Path, tmp_path: Path
) -> None:
    from toolchain.package.archive import pack

    unsigned = _cli_verify(str(hosts_package), "--host", "node", "--require-signature")
    assert unsigned.returncode == 1 and "model.sig" in unsigned.stderr and "[node]" not in unsigned.stdout
    archive = pack(hosts_package, tmp_path / "pkg.zip")
    packed = _cli_verify(str(archive), "--host", "node")
    assert packed.returncode == 0, packed.stderr
    assert f"partly verified on node: {archive}: not checked there" in packed.stdout


def test_cli_verify_provider_is_refused_for_another_host(hosts_package: Path) -> None:
    proc = _cli_verify(str(hosts_package), "--host", "node", "--provider", "cuda")
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: --provider cuda: chooses ONNX Runtime providers for --host python only; node replays on its own CPU "
        "runtime (drop --provider)"
    )
