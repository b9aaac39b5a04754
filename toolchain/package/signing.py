"""Signed packages with OpenSSF model signing (the ``model-signing`` package, extra ``toolchain[sign]``).

`sign_package` signs the manifest and every file of an intact package (SHA-256 per file, symbolic
links refused) and writes the signature as `SIGNATURE_FILE` at the package root: a Sigstore bundle
whose DSSE payload lists every file's digest. That one file is the only one the integrity check lets
through unlisted (the manifest cannot list the signature that covers it). `verify_signature` checks
it with a public key (``--public-key``) or a certificate chain (``--certificate-chain``) before
anything else reads the package, so a manifest edited and re-hashed fails here, before a model byte
is parsed.

Keys are elliptic-curve keys in PEM (P-256, P-384, P-521), e.g. ``openssl ecparam -name prime256v1
-genkey -noout -out key.pem && openssl ec -in key.pem -pubout -out key.pub``. Keyless Sigstore
signing and verification (an OIDC identity, the public transparency log) are what ``model-signing``
offers through its own CLI (``model_signing sign sigstore`` / ``verify sigstore``); they need network
access, so this module leaves them to that tool: a signature it writes to ``model.sig`` in the package
verifies the same way with its CLI.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolchain.core.errors import PackageError
from toolchain.core.text import printable
from toolchain.package.contain import entry_kind
from toolchain.package.format import MANIFEST, SIGNATURE_FILE, open_package

__all__ = ["SIGNATURE_FILE", "manifest_digest", "sign_package", "verify_signature"]


def manifest_digest(package: Path) -> str:
    """SHA-256 of the package's ``manifest.json``: compare it out of band with the one its producer published."""
    with (Path(package) / MANIFEST).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sign_package(
    package: Path,
    *,
    private_key: Path,
    password: str = "",
    certificate: Path | None = None,
    certificate_chain: Sequence[Path] = (),
) -> Path:
    """Sign the intact `package` in place; returns the signature file written (replacing an older one).

    Args:
        package: the package folder (its integrity is checked first).
        private_key: an elliptic-curve private key in PEM.
        password: the key's password, if it is encrypted.
        certificate: sign with this signing certificate (for the key) instead of a bare key.
        certificate_chain: certificates that lead from `certificate` to a root the verifier trusts.

    Raises:
        PackageError: the package is not intact, holds something that is not a regular file, or the
            key cannot sign.
    """
    package = Path(package)
    open_package(package)
    _only_regular_files(package)
    signing, _, _ = _model_signing()
    config = signing.Config().set_hashing_config(_hashing())
    if certificate is not None and not certificate_chain:
        # NOTE: model-signing 1.1 fails on an empty chain with a PEM framing error; say what is needed.
        raise PackageError(f"{certificate}: signing with a certificate needs its issuers (--certificate-chain PEM)")
    try:
        if certificate is not None:
            config.use_certificate_signer(
                private_key=private_key, signing_certificate=certificate, certificate_chain=list(certificate_chain)
            )
        else:
            config.use_elliptic_key_signer(private_key=private_key, password=password or None)
    except (OSError, ValueError, TypeError) as e:
        raise PackageError(f"{private_key}: cannot sign with this key (or certificate): {_one_line(e)}") from e
    target = package / SIGNATURE_FILE
    fd, tmp = tempfile.mkstemp(prefix=".model.sig-", dir=package.parent)
    os.close(fd)
    try:
        config.sign(package, tmp)
        os.replace(tmp, target)
    except (OSError, ValueError) as e:
        raise PackageError(f"{package}: signing failed: {_one_line(e)}") from e
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return target


def verify_signature(package: Path, *, public_key: Path | None = None, certificate_chain: Sequence[Path] = ()) -> str:
    """Check the package's signature over its manifest and every file; returns a line saying by what.

    Raises:
        PackageError: no signature, no key or chain to check it with, a file that is not a regular
            file, or a signature that does not match (a file added, missing or changed, another key).
    """
    package = Path(package)
    target = package / SIGNATURE_FILE
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        raise PackageError(
            f"{target}: missing; this package is not signed (sign it with `toolchain sign`, or drop "
            "--require-signature)"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise PackageError(f"{target}: is not a regular file; refusing the signature")
    if public_key is None and not certificate_chain:
        raise PackageError(f"{package}: checking the signature needs --public-key PEM or --certificate-chain PEM")
    _only_regular_files(package)
    _, verifying, _ = _model_signing()
    config = verifying.Config().set_hashing_config(_hashing())
    if public_key is not None:
        config.use_elliptic_key_verifier(public_key=public_key)
        by = f"the key {public_key.name}"
    else:
        config.use_certificate_verifier(certificate_chain=list(certificate_chain))
        by = f"a certificate chaining to {', '.join(p.name for p in certificate_chain)}"
    try:
        config.verify(package, target)
    except Exception as e:
        # NOTE: model-signing raises ValueError for a mismatch, and whatever its parsers raise
        # (JSON, protobuf, cryptography) for a malformed or forged signature file: all mean "not signed by you".
        raise PackageError(f"{target}: signature check failed: {_one_line(e)}") from e
    return f"signature: valid, by {by}, over {MANIFEST} and every file"


def _hashing() -> Any:
    _, _, hashing = _model_signing()
    # NOTE: our own hashing configuration, not the one the signature names: SHA-256 per file, no
    # symbolic links, only the signature itself left out, and git files signed like any other.
    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    )


def _model_signing() -> tuple[Any, Any, Any]:
    try:
        from model_signing import hashing, signing, verifying
    except ImportError as e:
        raise PackageError("signing needs the model-signing package: pip install 'toolchain[sign]'") from e
    return signing, verifying, hashing


def _only_regular_files(package: Path) -> None:
    """Refuse links, pipes and devices before a hasher opens them (a named pipe would block it).

    The message is the one the integrity check (`toolchain.package.contain`) gives for the same entry.
    """
    for parent, dirs, files in os.walk(package):
        for name in [*dirs, *files]:
            kind = entry_kind(os.lstat(os.path.join(parent, name)).st_mode)
            if kind:
                rel = printable(Path(parent, name).relative_to(package).as_posix())
                raise PackageError(f"{package}: {rel}: {kind}; packages hold regular files only (refusing to hash it)")


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:500]
