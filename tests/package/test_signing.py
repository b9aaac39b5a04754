from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from tests.canary import Canary
from tests.package import hostile
from toolchain.cli import app
from toolchain.core.errors import PackageError
from toolchain.package.archive import pack, unpack
from toolchain.package.format import SIGNATURE_FILE, check_integrity
from toolchain.package.signing import sign_package, verify_signature

runner = CliRunner()


def _keypair(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "keys"
    folder.mkdir()
    return _keypair(folder, "signer")


@pytest.fixture
def signed(tiny_package: Path, tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    result = runner.invoke(app, ["sign", str(package), "--key", str(keys[0])])
    assert result.exit_code == 0, result.output
    assert (package / SIGNATURE_FILE).is_file()
    return package


def _verify(package: Path, *options: str) -> tuple[int, list[str], list[str]]:
    """Exit code, every line printed, and the lines on stderr."""
    result = runner.invoke(app, ["verify", str(package), "--provider", "cpu", *options])
    return result.exit_code, result.output.strip().splitlines(), result.stderr.strip().splitlines()


def test_signed_package_verifies_and_prints_the_manifest_digest(signed: Path, keys: tuple[Path, Path]) -> None:
    assert check_integrity(signed) == []
    code, lines, _errors = _verify(signed, "--require-signature", "--public-key", str(keys[1]))
    assert code == 0, lines
    assert lines[0] == "signature: valid, by the key signer.pub, over manifest.json and every file"
    digest = hashlib.sha256((signed / "manifest.json").read_bytes()).hexdigest()
    assert lines[1] == f"manifest sha256: {digest}"
    assert lines[-1] == f"verified: {signed}"


def test_manifest_edited_and_rehashed_fails_before_any_model_is_parsed(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["tolerance"]["atol"] = 9e99
    (signed / "onnx" / "model.onnx").write_bytes(hostile.constant_of_shape(2**40))
    hostile.rehash_all(signed, manifest)
    assert check_integrity(signed) == []  # the forger re-hashed everything: integrity alone is fooled
    canary = Canary(tmp_path / "canary.txt", allowed=("pkg", "keys"))
    # NOTE: the signature check hashes every file; a file only ever hashed (report.md) shows how often.
    only_hashed = Canary(signed / "report.md", existing=True)
    model = Canary(signed / "onnx" / "model.onnx", existing=True)
    code, lines, errors = _verify(signed, "--require-signature", "--public-key", str(keys[1]))
    assert code == 1
    assert lines == errors and len(errors) == 1
    assert errors[0].startswith(f"error: {signed / SIGNATURE_FILE}: signature check failed: ")
    assert "manifest.json" in lines[0]
    assert model.events() == only_hashed.events(), "the model was read for more than hashing"
    canary.assert_untouched()


def test_another_key_an_added_file_and_a_missing_signature_fail(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    _, other = _keypair(tmp_path / "keys", "other")
    with pytest.raises(PackageError, match="signature check failed"):
        verify_signature(signed, public_key=other)
    (signed / "extra.txt").write_text("added after signing")
    with pytest.raises(PackageError, match=r"signature check failed: .*extra.txt"):
        verify_signature(signed, public_key=keys[1])
    (signed / "extra.txt").unlink()
    (signed / SIGNATURE_FILE).unlink()
    code, lines, errors = _verify(signed, "--require-signature", "--public-key", str(keys[1]))
    assert code == 1 and lines == errors == [
        f"error: {signed / SIGNATURE_FILE}: missing; this package is not signed "
        "(sign it with `toolchain sign`, or drop --require-signature)"
    ]
    code, lines, _errors = _verify(signed, "--require-signature")
    assert code == 1 and "not signed" in lines[0]


def test_a_signature_that_is_a_link_or_garbage_is_refused(
    signed: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    (signed / SIGNATURE_FILE).write_text('{"not": "a bundle"}')
    with pytest.raises(PackageError, match="signature check failed"):
        verify_signature(signed, public_key=keys[1])
    (signed / SIGNATURE_FILE).unlink()
    (signed / SIGNATURE_FILE).symlink_to(keys[1])
    with pytest.raises(PackageError, match="is not a regular file"):
        verify_signature(signed, public_key=keys[1])
    assert any("symbolic link" in str(p) for p in check_integrity(signed))


def test_a_named_pipe_is_refused_before_the_hasher_opens_it(signed: Path, keys: tuple[Path, Path]) -> None:
    os.mkfifo(signed / "pipe")
    with pytest.raises(PackageError, match=r"pkg: pipe: is a named pipe; packages hold regular files only"):
        verify_signature(signed, public_key=keys[1])
    with pytest.raises(PackageError, match=r"pkg: pipe: is a named pipe; packages hold regular files only"):
        sign_package(signed, private_key=keys[0])


def test_signature_survives_pack_and_unpack(signed: Path, keys: tuple[Path, Path], tmp_path: Path) -> None:
    archive = pack(signed, tmp_path / "signed.zip")
    out = unpack(archive, tmp_path / "out")
    assert verify_signature(out, public_key=keys[1]).startswith("signature: valid")
    code, lines, _errors = _verify(archive, "--require-signature", "--public-key", str(keys[1]))
    assert code == 0, lines


def test_certificate_signing_verifies_against_its_chain(tiny_package: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    folder.mkdir()
    now = datetime.datetime.now(datetime.UTC)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test signer")])

    def cert(subject, issuer, key, signer, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=not ca, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                    encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
        )  # fmt: skip
        return builder.sign(signer, hashes.SHA256())

    root = cert(ca_name, ca_name, ca_key, ca_key, ca=True)
    leaf = cert(leaf_name, ca_name, leaf_key, ca_key, ca=False)
    (folder / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.key").write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    with pytest.raises(PackageError, match="needs its issuers"):
        sign_package(package, private_key=folder / "leaf.key", certificate=folder / "leaf.pem")
    sign_package(
        package,
        private_key=folder / "leaf.key",
        certificate=folder / "leaf.pem",
        certificate_chain=[folder / "root.pem"],
    )
    line = verify_signature(package, certificate_chain=[folder / "root.pem"])
    assert line == "signature: valid, by a certificate chaining to root.pem, over manifest.json and every file"
