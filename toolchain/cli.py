"""The ``toolchain`` command line: a thin typer app over the library; heavy imports live in commands."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from toolchain.core.errors import HostError, TargetError, ToolchainError
from toolchain.core.text import printable

if TYPE_CHECKING:
    from toolchain.core.spec import ModelSpec

__all__ = ["app", "main"]

app = typer.Typer(
    name="toolchain",
    help="Export PyTorch models, verify parity with eager on every declared size, and package them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _echo(line: str) -> None:
    """Print a line that holds strings from a package, control characters escaped."""
    typer.echo(printable(line))


def _one_line_errors(command: F) -> F:
    """Print a `ToolchainError` as one line on stderr and exit 1; other errors keep their traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ToolchainError as e:
            typer.echo(f"error: {printable(str(e))}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_one_line_errors
def export(
    target: Annotated[str, typer.Argument(help="Registered name, package.module:attr, or path/file.py:attr.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Package folder to create.")],
    formats: Annotated[
        str,
        typer.Option(
            "--formats",
            help="Comma-separated paths to try: onnx, onnx_legacy, torchscript, exported_program; 'all' tries "
            "every path that applies to the model and keeps those that match eager; 'auto' keeps the best "
            "ONNX path only.",
        ),
    ] = "all",
    optimize: Annotated[
        bool,
        typer.Option(
            "--optimize/--no-optimize",
            help="Run the optimisation passes over every kept artifact; a pass that changes nothing, adds nodes "
            "or breaks parity is not kept, and each is reported (speed is measured by `toolchain bench`).",
        ),
    ] = True,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="Comma-separated precisions to ship: fp32, fp16, int8 (dynamic and static). Each variant is "
            "built from the best ONNX path, repaired if it fails, and kept only if it passes its own gate.",
        ),
    ] = "fp32",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing package at --out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the generated sample inputs.")] = 0,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            help="Processes the export may use: with 2, eager's reference and the paths that capture on their "
            "own run in a forked worker beside the ONNX path (same results). 0: 2 on a host with two cores "
            "(or $TOOLCHAIN_EXPORT_WORKERS); 1: one process.",
            min=0,
        ),
    ] = 0,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Real input batches: FILE.npz (an array per input name) or a folder of them; replayed as sample "
            "sets data-0, ... beside the generated ones and shipped.",
        ),
    ] = None,
    report_file: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Also write report.md here; when no path passes it is the only report (default then: "
            "<out>.report.md beside --out).",
        ),
    ] = None,
) -> None:
    """Export TARGET through each path, verify against eager at every sample size, package what passes."""
    from rich.console import Console

    from toolchain.build.pipeline import export_package
    from toolchain.build.record import portable

    console = Console(stderr=True)
    spec = _resolve_target(target)
    if data is not None:
        from toolchain.core.data import load_data, with_data

        spec = with_data(spec, load_data(data))
    chosen = () if formats == "all" else tuple(f.strip() for f in formats.split(",") if f.strip())
    with contextlib.ExitStack() as stack:
        if console.is_terminal:
            progress = stack.enter_context(console.status(f"{spec.name}: starting")).update
        else:
            # NOTE: a spinner shows nothing when stderr is not a terminal (CI logs), which read as ~27 s
            # of silence; one line per step instead, flushed as it happens (click's echo flushes).
            progress = functools.partial(_progress_line, console.file)
        result = export_package(
            spec,
            out,
            formats=chosen,
            optimize=optimize,
            precisions=tuple(p.strip() for p in precision.split(",") if p.strip()),
            force=force,
            seed=seed,
            workers=workers,
            progress=progress,
        )
    for stage in result.stages:
        typer.echo(f"  {stage.name:<10} {stage.status:<8} {stage.seconds:6.2f}s")
    for path in [*result.paths, *result.variants]:
        passed = sum(bool(r) for r in path.reports)
        worst = max((o.worst_ratio for r in path.reports for o in r.outputs), default=0.0)
        line = f"  {path.name:<17} {path.status:<8} export {path.export_seconds:5.2f}s"
        if path.reports:
            line += f"  {passed}/{len(path.reports)} sample sets passed, worst {worst:.3g}x of allowed"
        typer.echo(line)
        if path.reason:
            typer.echo(f"      {portable(path.reason)}")
        for step in path.passes:
            typer.echo(f"      pass {step}")
        if path.repair and path.repair.keep:
            typer.echo(f"      kept in fp32: {len(path.repair.keep)} node(s) in {path.repair.kept_modules or '-'}")
    if not result:
        failed = result.failed_stage
        name, detail = (failed.name, failed.detail) if failed else ("?", "")
        typer.echo(f"FAILED at stage '{name}': {portable(detail)}", err=True)
        written = _write_report(result, report_file or out.with_name(f"{out.name}.report.md"))
        typer.echo(f"no package was written to {out}; the reasons are in {written}", err=True)
        raise typer.Exit(1)
    if report_file is not None:
        _write_report(result, report_file)
    typer.echo(f"package written: {result.package} (report: {result.package}/report.md)")


def _progress_line(stream: Any, line: str) -> None:
    typer.echo(f"  ... {line}", file=stream)


def _write_report(result: Any, where: Path) -> Path:
    """Write `result`'s report.md at `where` (its folder created); `PackageError` when it cannot."""
    from toolchain.build.record import build_report
    from toolchain.core.errors import PackageError
    from toolchain.package.report import render_markdown

    try:
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(render_markdown(build_report(result)), encoding="utf-8")
    except OSError as e:
        raise PackageError(f"{where}: could not write the report ({e}); pass --report FILE elsewhere") from e
    return where


@app.command()
@_one_line_errors
def verify(
    package: Annotated[Path, typer.Argument(help="Package folder, or a packed one (.zip, .tar, .tar.gz), to check.")],
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Also load TorchScript and .pt2 artifacts of a package exported elsewhere (loading them runs "
            "code). Packages exported on this machine are trusted without it.",
        ),
    ] = False,
    provider: Annotated[
        str,
        typer.Option(
            "--provider",
            help="ONNX Runtime providers to replay on, comma-separated: cpu, cuda, tensorrt, ... auto: every "
            "accelerated one available here, then cpu (one that cannot start is reported, not failed).",
        ),
    ] = "auto",
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 unless every artifact was verified (none refused or skipped)."),
    ] = False,
    max_memory: Annotated[
        str,
        typer.Option(
            "--max-memory",
            envvar="TOOLCHAIN_MAX_MEMORY",
            help="Memory (address space) for loading and replaying a package not exported on this machine, "
            "in a child process.",
        ),
    ] = "4GiB",
    max_time: Annotated[
        int,
        typer.Option(
            "--max-time",
            envvar="TOOLCHAIN_MAX_TIME",
            help="CPU and wall-clock seconds for loading and replaying a package not exported on this machine.",
        ),
    ] = 300,
    require_signature: Annotated[
        bool,
        typer.Option(
            "--require-signature",
            help="Fail unless the package's signature (model.sig, `toolchain sign`) verifies, before anything "
            "else is read.",
        ),
    ] = False,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Check the signature with this EC public key (PEM).")
    ] = None,
    certificate_chain: Annotated[
        list[Path] | None,
        typer.Option("--certificate-chain", help="Check a certificate signature against these certificates (PEM)."),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Where to verify: python (here), node (onnxruntime-node), browser (onnxruntime-web in headless "
            "Chromium), cpp (TorchScript in libtorch), or all (a host x artifact table). Installs or builds what a "
            "host needs on first use.",
        ),
    ] = "python",
) -> None:
    """Check every file's hash, then replay the golden samples; exit 1 on any failure."""
    from toolchain.package.sandbox import Limits, parse_size
    from toolchain.package.signing import manifest_digest, verify_signature
    from toolchain.package.verify import verify_package

    if host != "python" and provider != "auto":
        raise HostError(
            f"--provider {provider}: chooses ONNX Runtime providers for --host python only; {host} replays on its "
            "own CPU runtime (drop --provider)"
        )
    limits = Limits(memory_bytes=parse_size(max_memory), seconds=max_time)
    with _package_folder(package) as folder:
        if require_signature or public_key is not None or certificate_chain:
            typer.echo(verify_signature(folder, public_key=public_key, certificate_chain=certificate_chain or ()))
        if host != "python":
            _verify_on_hosts(folder, shown=package, host=host, trust=trust, strict=strict)
            return
        if (folder / "manifest.json").is_file():
            typer.echo(f"manifest sha256: {manifest_digest(folder)}")
        report = verify_package(folder, trust=trust, providers=_providers(provider), limits=limits)
    for line in report.summary_lines():
        typer.echo(printable(line))
    if not report:
        for line in report.failure_lines():
            typer.echo(f"FAIL {printable(line)}", err=True)
        typer.echo(report.summary())
        raise typer.Exit(1)
    typer.echo(report.summary())
    if report.complete:
        typer.echo(f"verified: {package}")
        return
    if strict:
        typer.echo(f"--strict: not every artifact of {package} was verified here (see above)", err=True)
        raise typer.Exit(1)
    typer.echo(f"partly verified: {package}: every artifact replayed here passed; the others were not checked")


@contextlib.contextmanager
def _package_folder(path: Path) -> Any:
    """`path` itself, or a temporary folder `path` (an archive) was unpacked into with every protection."""
    from toolchain.package.archive import is_archive, unpacked

    if path.is_dir() or not is_archive(path):
        yield path
        return
    with unpacked(path) as folder:
        yield folder


@app.command()
@_one_line_errors
def sign(
    package: Annotated[Path, typer.Argument(help="Package folder to sign (its integrity is checked first).")],
    key: Annotated[Path, typer.Option("--key", help="Elliptic-curve private key (PEM).")],
    password_env: Annotated[
        str, typer.Option("--password-env", help="Name of an environment variable holding the key's password.")
    ] = "",
    certificate: Annotated[
        Path | None, typer.Option("--certificate", help="Sign with this signing certificate for --key.")
    ] = None,
    certificate_chain: Annotated[
        list[Path] | None, typer.Option("--certificate-chain", help="Certificates from --certificate to a root.")
    ] = None,
) -> None:
    """Sign a package's manifest and every file (OpenSSF model signing); writes PACKAGE/model.sig."""
    from toolchain.package.signing import manifest_digest, sign_package

    password = os.environ.get(password_env, "") if password_env else ""
    written = sign_package(
        package, private_key=key, password=password, certificate=certificate, certificate_chain=certificate_chain or ()
    )
    typer.echo(f"manifest sha256: {manifest_digest(package)}")
    typer.echo(f"signed: {written}")


@app.command()
@_one_line_errors
def pack(
    package: Annotated[Path, typer.Argument(help="Package folder to pack (its integrity is checked first).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Archive to write: FILE.zip, FILE.tar or FILE.tar.gz.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing archive at --out.")] = False,
) -> None:
    """Write a package as one file (zip or tar) that `toolchain unpack` and `toolchain verify` read."""
    from toolchain.package.archive import pack as pack_package

    typer.echo(f"packed: {pack_package(package, out, force=force)}")


@app.command()
@_one_line_errors
def unpack(
    archive: Annotated[Path, typer.Argument(help="Packed package: FILE.zip, FILE.tar or FILE.tar.gz.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Package folder to create.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing package at --out.")] = False,
    max_size: Annotated[
        str, typer.Option("--max-size", help="Largest total unpacked size, e.g. 16GiB (refused while streaming).")
    ] = "16GiB",
    max_members: Annotated[int, typer.Option("--max-members", help="Most members an archive may hold.")] = 10_000,
) -> None:
    """Unpack an archive as untrusted input: no path escapes, links, duplicates or bombs; atomic."""
    from toolchain.package.archive import ArchiveLimits
    from toolchain.package.archive import unpack as unpack_archive

    limits = ArchiveLimits(members=max_members, total_bytes=_parse_bytes(max_size, "--max-size"))
    typer.echo(f"unpacked: {unpack_archive(archive, out, force=force, limits=limits)}")


def _parse_bytes(text: str, option: str) -> int:
    """``"4GiB"`` -> 4294967296 (B, KiB, MiB, GiB, TiB; KB... are the same powers of 1024); `TargetError`."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise TargetError(f"{option} takes a size like 512MiB or 4GiB, got {text!r}")
    power = " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * 1024**power)


def _verify_on_hosts(folder: Path, *, shown: Path, host: str, trust: bool, strict: bool) -> None:
    """``verify --host``: one host's lines, or with ``all`` every host and a host x artifact table.

    With `strict`, every artifact must have been verified on at least one of the hosts asked for.
    """
    from toolchain.hosts import HOSTS, host_table, verify_on

    results = [verify_on(name, folder, trust=trust) for name in (HOSTS if host == "all" else (host,))]
    for result in results:
        for line in result.summary:
            typer.echo(f"[{result.host}] {line}")
        for line in result.failures:
            typer.echo(f"FAIL [{result.host}] {line}", err=True)
    if host == "all":
        for line in host_table(results):
            typer.echo(line)
    failed = [r.host for r in results if not r]
    if failed:
        typer.echo(f"not verified on {', '.join(failed)}: {shown}")
        raise typer.Exit(1)
    verified = {a.path for r in results for a in r.artifacts if a.passed}
    unverified = sorted({p for r in results for p in (*r.skipped, *r.refused)} - verified)
    if strict and unverified:
        typer.echo(f"--strict: not verified on {', '.join(r.host for r in results)}: {', '.join(unverified)}", err=True)
        raise typer.Exit(1)
    where = ", ".join(r.host for r in results)
    if unverified:
        typer.echo(f"partly verified on {where}: {shown}: not checked there: {', '.join(unverified)}")
        return
    typer.echo(f"verified on {where}: {shown}")


@app.command()
@_one_line_errors
def diagnose(
    target: Annotated[str, typer.Argument(help="Registered name, package.module:attr, or path/file.py:attr.")],
    fmt: Annotated[str, typer.Option("--format", help="ONNX path to diagnose: onnx or onnx_legacy.")] = "onnx",
    sample: Annotated[str, typer.Option("--sample", help="Sample set to localise on (default: first failing).")] = "",
) -> None:
    """Export TARGET, compare with eager, and name the first module (and source line) that diverges."""
    from toolchain.diagnose.diagnosis import diagnose as run_diagnosis

    result = run_diagnosis(_resolve_target(target), exporter=fmt, sample=sample)
    for report in result.reports:
        typer.echo(f"  {report}".replace("\n", "\n  "))
    if result.localization is not None:
        typer.echo(str(result.localization))
    elif not result:
        typer.echo("no single module could be blamed: the graph carries no usable scope for the failing values")
    if not result:
        raise typer.Exit(1)
    typer.echo(f"{fmt}: matches eager on every sample set")


@app.command()
@_one_line_errors
def inspect(
    package: Annotated[Path, typer.Argument(help="Package folder (or .zip, .tar, .tar.gz) to describe.")],
) -> None:
    """Print a package's signature, artifacts and recorded parity (after checking its hashes)."""
    with _package_folder(package) as folder:
        _inspect(folder)


def _inspect(package: Path) -> None:
    from toolchain.package.format import open_package
    from toolchain.package.report import runtime_label

    pkg = open_package(package)
    sig = pkg.signature
    _echo(f"{pkg.name} {pkg.manifest.get('version', '')}  ({pkg.manifest.get('source', '')})")
    for t in sig.inputs:
        _echo(f"  input  {t.name}: {t.describe()}")
    for t in sig.outputs:
        _echo(f"  output {t.name}: {t.describe()}")
    for sym, sizes in sig.verified_sizes.items():
        _echo(f"  dim    {sym}: verified at {list(sizes)}")
    for art in pkg.artifacts:
        parity = pkg.manifest.get("parity", {}).get(art["path"], {})
        _echo(
            f"  artifact {art['path']} [{art['format']}, {art['variant']}, opset {art['opset']}] "
            f"parity {'passed' if parity.get('passed') else 'FAILED'} on {parity.get('sample_sets', [])}"
            + (f" ({parity['gated_on']})" if parity.get("gated_on") else "")
        )
        if art.get("passes"):
            _echo(f"           passes: {', '.join(art['passes'])}")
        if art.get("keep"):
            _echo(f"           kept in fp32: {len(art['keep'])} node(s)")
    for batch, rec in pkg.manifest.get("recommended", {}).items():
        runtime = runtime_label(rec["runtime"], rec.get("fixed_dims"), rec.get("provider", ""))
        _echo(
            f"  recommended at batch {batch}: {rec['artifact']} on {runtime} "
            f"({rec['p50_ms']:.3f} ms, {rec['ratio_vs_eager']:.2f}x eager)"
        )


@app.command()
@_one_line_errors
def zoo(
    inputs: Annotated[bool, typer.Option("--inputs", help="Also print each model's input signature.")] = False,
) -> None:
    """List the registered models: parameters, FLOPs at the export size, tags and export paths."""
    import zoo as _zoo  # noqa: F401 - registers the zoo's models
    from toolchain.core.spec import SPECS
    from toolchain.perf.stats import human, model_stats

    typer.echo(f"{'model':<28} {'params':>8} {'FLOPs':>8}  {'tags':<24} paths")
    for name in SPECS:
        spec = SPECS.get(name)
        stats = model_stats(spec)
        tags = ",".join(spec.tags)
        typer.echo(f"{name:<28} {human(stats.params):>8} {human(stats.flops):>8}  {tags:<24} {','.join(spec.formats)}")
        if inputs:
            signature = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in spec.inputs.items())
            typer.echo(f"    {signature} -> {', '.join(spec.outputs)}")


@app.command()
@_one_line_errors
def bench(
    target: Annotated[str, typer.Argument(help="A package folder, or a TARGET to export into a temporary package.")],
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,16",
    runtime: Annotated[
        str, typer.Option("--runtime", help="Comma-separated runtimes to time: ort, torchscript, exported_program.")
    ] = "",
    provider: Annotated[
        str,
        typer.Option(
            "--provider",
            help="ONNX Runtime providers to time, comma-separated: cpu, cuda, tensorrt, ... auto: every "
            "accelerated one available here, then cpu; the recommendation is the fastest that matched eager.",
        ),
    ] = "auto",
    threads: Annotated[int, typer.Option("--threads", help="Threads per op for ONNX Runtime (0: its default).")] = 0,
    size: Annotated[
        str, typer.Option("--size", help="Sizes of the other dims to time at, e.g. seq=128 (default: the examples).")
    ] = "",
    plan: Annotated[
        str,
        typer.Option(
            "--plan", help="Plan ONNX Runtime sessions for each batch size (batch) or the whole shape timed (shape)."
        ),
    ] = "batch",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
    trust: Annotated[
        bool, typer.Option("--trust", help="Also time TorchScript/.pt2 of a package from elsewhere.")
    ] = False,
    record: Annotated[
        bool, typer.Option("--record/--no-record", help="Write the results and recommendations into the package.")
    ] = True,
) -> None:
    """Time every artifact on every runtime here beside eager PyTorch, and recommend the fastest correct one."""
    import json
    import tempfile

    from runtimes.ort import OrtOptions
    from toolchain.perf.bench import bench_package, record_bench

    try:
        batches = tuple(int(b) for b in batch.split(",") if b.strip())
    except ValueError:
        raise TargetError(f"--batch must be comma-separated integers like 1,8,32, got {batch!r}") from None
    sizes = _parse_sizes(size)
    options = OrtOptions(intra_op_threads=threads)
    runtimes = tuple(r.strip() for r in runtime.split(",") if r.strip())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(target)
        if path.is_dir():
            spec = _spec_of_package(path)
        else:
            from toolchain.build.pipeline import export_package

            spec = _resolve_target(target)
            path = Path(tmp) / "pkg"
            typer.echo(f"exporting {spec.name} into a temporary package ...", err=True)
            if not export_package(spec, path, precisions=("fp32", "fp16", "int8")):
                raise TargetError(f"{spec.name}: export failed; run `toolchain export` to see why")
            record = False
        report = bench_package(
            path, spec=spec, batches=batches, runtimes=runtimes, options=options, providers=_providers(provider),
            sizes=sizes, plan=plan, trust=trust, progress=lambda line: typer.echo(f"  {line}", err=True),
        )  # fmt: skip
        typer.echo(report.table())
        if json_out is not None:
            json_out.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if record and report.rows:
            record_bench(report)
            typer.echo(f"recorded in {path}/report.md and the manifest's 'recommended'")


def _providers(text: str) -> tuple[str, ...]:
    """``"cuda,cpu"`` -> ``("cuda", "cpu")``; `TargetError` when empty."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise TargetError("--provider needs a provider name (cpu, cuda, tensorrt, ...) or auto")
    return names


def _parse_sizes(text: str) -> dict[str, int]:
    """``"seq=128,height=64"`` -> ``{"seq": 128, "height": 64}``; `TargetError` naming the bad item."""
    sizes: dict[str, int] = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit():
            raise TargetError(f"--size items must look like seq=128, got {item!r}")
        sizes[name.strip()] = int(value)
    return sizes


def _spec_of_package(path: Path) -> Any:
    """The registered spec a package was exported from (zoo models are importable), if any."""
    from toolchain.core.spec import SPECS
    from toolchain.package.format import open_package

    name = open_package(path).name
    if name not in SPECS.names():
        import zoo  # noqa: F401 - registers the zoo's specs

    if name in SPECS.names():
        return SPECS.get(name)
    typer.echo(f"note: {name} is not registered here; inputs are tiled from the golden sample, no eager", err=True)
    return None


_JOBS = min(8, os.cpu_count() or 1)
_GATE_HELP = (
    "Export and verify every selected model in worker processes, and compare with a baseline.\n\n"
    "TARGETs are registered names, modules or path/file.py files to import (every model they register), or "
    "module:attr / file.py:attr; --all adds every registered model, the zoo's included. A model whose content key "
    "(its module source, spec, weights, library versions) is unchanged reuses its cached result from "
    "$TOOLCHAIN_HOME/gate-cache unless --no-cache.\n\n"
    "Exit codes: 0 every case passed (or --update-baseline rewrote the baseline); 1 a parity failure or a "
    "regression against the baseline; 2 a usage or environment error (unknown target, missing baseline file, "
    "ray not installed)."
)


@app.command(help=_GATE_HELP)
def gate(
    targets: Annotated[
        list[str] | None, typer.Argument(help="Registered names, modules, path/file.py, or module:attr.")
    ] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Check every registered model (the zoo too).")] = False,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Worker processes; 0 runs in this process.")] = _JOBS,
    formats: Annotated[
        str, typer.Option("--formats", help="Export paths: all (each model's own), auto, or a comma list.")
    ] = "all",
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="Regression baseline (JSON) to compare with.")
    ] = None,
    update_baseline: Annotated[
        bool, typer.Option("--update-baseline", help="Rewrite --baseline from this run (sorted, stable floats).")
    ] = False,
    allow_new: Annotated[bool, typer.Option("--allow-new", help="Models missing from the baseline pass.")] = False,
    growth: Annotated[
        float, typer.Option("--growth", help="Allowed growth factor of a kept artifact's error over the baseline.")
    ] = 2.0,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write JUnit XML here.")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Write a pull-request comment here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full results as JSON here.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Keep each model's package in OUT/<name>.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Check every model again.")] = False,
    bench: Annotated[
        bool, typer.Option("--bench", help="Also time each kept artifact beside eager; the ratio goes in the baseline.")
    ] = False,
    executor: Annotated[str, typer.Option("--executor", help="local (process pool) or ray.")] = "local",
    address: Annotated[str, typer.Option("--address", help="Ray cluster address (default: start a local one).")] = "",
    seed: Annotated[int, typer.Option(help="Seed for the generated sample inputs.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Run the parity gate (the help text is `_GATE_HELP`); exit 0 pass, 1 failure, 2 usage error."""
    import time

    from toolchain.gate.baseline import BaselinePolicy, load_baseline, write_baseline
    from toolchain.gate.executors import make_executor
    from toolchain.gate.report import live_progress, write_reports
    from toolchain.gate.runner import judge, parse_formats, run_gate, select_specs

    start = time.perf_counter()
    try:
        policy = BaselinePolicy(growth=growth, allow_new=allow_new or update_baseline)
        chosen = parse_formats(formats)
        if update_baseline and baseline is None:
            raise TargetError("--update-baseline needs --baseline FILE")
        entries = {}
        if baseline is not None and (baseline.exists() or not update_baseline):
            entries = load_baseline(baseline)
        pool = make_executor(executor, jobs=jobs, address=address)
        selected = select_specs(targets or [], all_registered=all_models)
        with live_progress(len(selected), enabled=not quiet) as progress:
            results = run_gate(
                selected,
                formats=chosen,
                seed=seed,
                executor=pool,
                cache=not no_cache,
                out=out,
                bench=bench,
                progress=progress,
            )
        outcome = judge(
            results,
            baseline=entries if baseline is not None else None,
            policy=policy,
            seconds=time.perf_counter() - start,
        )
        write_reports(outcome, junit=junit, markdown=markdown, json_path=json_out)
        if update_baseline and baseline is not None:
            write_baseline(baseline, results, previous=entries, prune=all_models)
    except ToolchainError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    for case in outcome.failed:
        typer.echo(f"FAIL {case.model} / {case.artifact}: {case.message}", err=True)
    typer.echo(outcome.summary())
    if update_baseline:
        typer.echo(f"baseline written: {baseline} ({len(results)} models recorded)")
    elif not outcome:
        raise typer.Exit(1)


@app.command()
@_one_line_errors
def serve(
    packages: Annotated[list[Path] | None, typer.Argument(help="Package folders to serve.")] = None,
    repository: Annotated[
        Path | None, typer.Option("--repository", help="Serve every DIR/<model>/<version>/ package folder.")
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; loopback unless you choose.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    watch: Annotated[
        float, typer.Option("--watch", help="Poll the repository every N seconds for new versions (0: off).")
    ] = 0.0,
    trust: Annotated[
        bool, typer.Option("--trust", help="Allow a recommended TorchScript/.pt2 artifact (loading it runs code).")
    ] = False,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", help="Require 'Authorization: Bearer <token>' (also $TOOLCHAIN_SERVE_TOKEN) off health."
        ),
    ] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Dynamic batching up to N rows (1: off).")] = 64,
    max_delay_ms: Annotated[float, typer.Option("--max-delay-ms", help="Wait for more requests to batch.")] = 0.0,
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", help="Largest request body.")] = 64.0,
    max_elements: Annotated[int, typer.Option("--max-elements", help="Most tensor elements per request.")] = 1 << 24,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting per version; more get 503.")] = 256,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request; past it, 504.")] = 30.0,
    provider: Annotated[str, typer.Option("--provider", help="ONNX Runtime providers: auto, cpu, cuda, ...")] = "auto",
    ray: Annotated[bool, typer.Option("--ray", help="Deploy as a Ray Serve application instead.")] = False,
    replicas: Annotated[int, typer.Option("--replicas", help="Ray Serve: replicas (or the autoscaling minimum).")] = 1,
    max_replicas: Annotated[int, typer.Option("--max-replicas", help="Ray Serve: autoscale up to N replicas.")] = 0,
    registry: Annotated[
        str, typer.Option("--registry", help="Serve what --alias names in this model registry (MLflow URI).")
    ] = "",
    alias: Annotated[str, typer.Option("--alias", help="With --registry: the alias that serves.")] = "production",
    model: Annotated[
        list[str] | None, typer.Option("--model", help="With --registry: follow only this model (repeatable).")
    ] = None,
    poll: Annotated[float, typer.Option("--poll", help="With --registry: seconds between alias checks.")] = 5.0,
    shadow: Annotated[
        str,
        typer.Option(
            "--shadow", help="With --registry: NAME@VERSION or an alias (candidate) that gets a copy of live requests."
        ),
    ] = "",
    share: Annotated[
        float, typer.Option("--share", help="With --shadow: answer this fraction of requests by it instead (0.1).")
    ] = 0.0,
) -> None:
    """Serve verified packages over the Open Inference Protocol v2 (KServe v2 / Triton HTTP)."""
    from toolchain.serve.limits import Limits
    from toolchain.serve.repository import ServeOptions

    follow = _registry_follow(registry, alias=alias, models=model or [], poll=poll, shadow=shadow, share=share)
    if not packages and repository is None and not registry:
        raise TargetError("give PACKAGE folders, --repository DIR or --registry URI to serve")
    token = os.environ.get("TOOLCHAIN_SERVE_TOKEN", "")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise TargetError(f"--token-file {token_file}: cannot read it ({e})") from None
    limits = Limits(
        max_body_bytes=int(max_body_mb * (1 << 20)), max_elements=max_elements, max_queue=max_queue, timeout_s=timeout
    )
    options = ServeOptions(
        limits=limits, trust=trust, max_batch=max_batch, max_delay_s=max_delay_ms / 1000, providers=_providers(provider)
    )
    if ray:
        if follow is not None:
            raise TargetError("--registry is not supported with --ray yet: serve the packages or a --repository")
        from toolchain.serve.ray_app import deploy

        deploy(list(packages or []), root=repository, options=options, host=host, port=port, token=token,
               replicas=replicas, max_replicas=max_replicas)  # fmt: skip
        return
    from toolchain.serve.server import serve as run_server

    run_server(list(packages or []), root=repository, options=options, host=host, port=port, token=token,
               watch_s=watch, follow=follow)  # fmt: skip


def _registry_follow(uri: str, *, alias: str, models: list[str], poll: float, shadow: str, share: float) -> Any:
    """The `serve(follow=...)` hook for --registry (None without it); options checked before anything loads."""
    if not uri:
        if shadow or share or models:
            raise TargetError("--shadow, --share and --model need --registry URI")
        return None
    if not 0 < poll <= 3600:
        raise TargetError(f"--poll {poll}: expected seconds between registry checks, above 0 and at most 3600")
    if share and not shadow:
        raise TargetError("--share needs --shadow NAME@VERSION or an alias: which version takes the share")
    if not 0 <= share <= 1:
        raise TargetError(f"--share {share}: expected a fraction of requests from 0 to 1 (e.g. 0.1)")

    def follow(repository: Any) -> Any:
        from toolchain.serve.follow import follow_registry

        return follow_registry(
            repository, uri, alias=alias, models=models, candidate=shadow, share=share, poll_s=poll
        )  # fmt: skip

    return follow


@app.command()
@_one_line_errors
def triton(
    package: Annotated[Path, typer.Argument(help="Package folder to publish.")],
    repository: Annotated[Path, typer.Option("--repository", help="Triton model repository to write into.")],
    max_batch: Annotated[int, typer.Option("--max-batch", help="max_batch_size (capped at the verified range).")] = 64,
    max_delay_us: Annotated[int, typer.Option("--max-delay-us", help="Dynamic batching queue delay.")] = 100,
    instances: Annotated[int, typer.Option("--instances", help="Model instances (CPU).")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Replace this version if it exists.")] = False,
) -> None:
    """Verify a package, then write it as a Triton model (config.pbtxt + the ONNX artifact)."""
    from toolchain.serve.triton import write_triton_model

    where = write_triton_model(
        package, repository, max_batch=max_batch, max_delay_us=max_delay_us, instances=instances, force=force
    )
    typer.echo(f"wrote {where}")


registry_app = typer.Typer(
    name="registry",
    help="Versions of packages with their evidence on MLflow's Model Registry: add, compare, promote, retire, log.",
    no_args_is_help=True,
)
app.add_typer(registry_app)
_registry_uri: dict[str, str] = {"uri": ""}


@registry_app.callback()
def _registry_options(
    uri: Annotated[
        str,
        typer.Option(
            "--registry",
            help="MLflow tracking/registry URI (also $TOOLCHAIN_REGISTRY_URI); default "
            "sqlite:///$TOOLCHAIN_HOME/registry.db, packages stored under $TOOLCHAIN_HOME/registry-artifacts.",
        ),
    ] = "",
) -> None:
    """Versions of packages with their evidence on MLflow's Model Registry."""
    _registry_uri["uri"] = uri


def _registry() -> Any:
    from toolchain.registry.store import ModelRegistry

    return ModelRegistry(_registry_uri["uri"])


def _name_version(target: str) -> tuple[str, str]:
    name, _, version = target.partition("@")
    return name, version


@registry_app.command("add")
@_one_line_errors
def registry_add(
    package: Annotated[Path, typer.Argument(help="Package folder; it must verify on this host.")],
    name: Annotated[str, typer.Option("--name", help="Register under this name instead of the manifest's.")] = "",
) -> None:
    """Verify a package here, then register it as the next version of its model."""
    version = _registry().add(package, name=name)
    typer.echo(f"registered {version.name} version {version.version}")


@registry_app.command("list")
@_one_line_errors
def registry_list() -> None:
    """Every registered model: versions, production and latest."""
    registry = _registry()
    for name in registry.names():
        versions = registry.versions(name)
        production = next((v.version for v in versions if v.status == "production"), "—")
        typer.echo(f"{name}: {len(versions)} version(s), production {production}, latest {versions[-1].version}")


@registry_app.command("show")
@_one_line_errors
def registry_show(
    target: Annotated[str, typer.Argument(help="NAME or NAME@VERSION (default: production, else the latest).")],
) -> None:
    """Every fact recorded for one version."""
    from toolchain.registry.table import describe_version

    typer.echo(describe_version(_registry().get(*_name_version(target))))


@registry_app.command("compare")
@_one_line_errors
def registry_compare(name: Annotated[str, typer.Argument(help="Registered model name.")]) -> None:
    """Versions side by side: drift, latency at batch 1/16 where recorded, size, ops, signature."""
    from toolchain.registry.explored import exploration_table
    from toolchain.registry.table import compare_table

    versions = _registry().versions(name)
    typer.echo(compare_table(versions))
    explored = exploration_table(versions)
    if explored:
        typer.echo(explored)


@registry_app.command("promote")
@_one_line_errors
def registry_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to promote.")],
    to: Annotated[str, typer.Option("--to", help="Alias to point at it.")] = "production",
    force: Annotated[bool, typer.Option("--force", help="Promote despite failed rules (needs --reason).")] = False,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the log.")] = "",
) -> None:
    """Promote a version that verifies here, keeps the signature and stays within the declared budgets."""
    check = _registry().promote(name, version, to=to, force=force, reason=reason)
    for note in check.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"promoted {name} version {version} to {to}{' (forced: ' + check.describe() + ')' if not check else ''}")


@registry_app.command("budget")
@_one_line_errors
def registry_budget(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    latency: Annotated[
        float | None, typer.Option("--latency", help="Allowed p50 regression against production (0.1: 10%).")
    ] = None,
    size: Annotated[
        float | None, typer.Option("--size", help="Allowed artifact size growth against production.")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the log.")] = "",
    min_shadowed: Annotated[
        int | None,
        typer.Option("--min-shadowed", help="Requests a candidate must answer beside production (serve --shadow)."),
    ] = None,
) -> None:
    """Show, or declare, how much worse than production a version may be before promotion is refused."""
    from dataclasses import replace

    registry = _registry()
    budgets = registry.budgets(name)
    given = (("latency", latency), ("size", size), ("min_shadowed", min_shadowed))
    if any(v is not None for _, v in given):
        budgets = replace(budgets, **{k: v for k, v in given if v is not None})
        registry.declare_budgets(name, budgets, reason=reason)
    shadowed = f", at least {budgets.min_shadowed} shadowed requests" if budgets.min_shadowed else ""
    typer.echo(f"{name}: latency +{budgets.latency:.0%}, size +{budgets.size:.0%} against production{shadowed}")


@registry_app.command("retire")
@_one_line_errors
def registry_retire(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Version to retire.")],
    reason: Annotated[str, typer.Option("--reason", help="Why; recorded in the log.")] = "",
    force: Annotated[bool, typer.Option("--force", help="Retire even the production version.")] = False,
) -> None:
    """Retire a version, with the reason recorded."""
    _registry().retire(name, version, reason=reason, force=force)
    typer.echo(f"retired {name} version {version}")


@registry_app.command("log")
@_one_line_errors
def registry_log(name: Annotated[str, typer.Argument(help="Registered model name.")]) -> None:
    """Every transition of a model: who, when, what, why."""
    for entry in _registry().log(name):
        typer.echo(entry.describe())


@registry_app.command("tag")
@_one_line_errors
def registry_tag(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    family: Annotated[str, typer.Option("--family", help="The family (task) this model belongs to, for `peers`.")],
    margin: Annotated[
        float | None,
        typer.Option("--margin", help="Declare the family's margin: how far behind the best metric a peer may be."),
    ] = None,
) -> None:
    """Declare a model's family (its peers), and optionally the family's margin."""
    _registry().set_family(name, family, margin=margin)
    typer.echo(f"{name}: family {family}" + (f", margin {margin:g}" if margin is not None else ""))


@registry_app.command("peers")
@_one_line_errors
def registry_peers(
    family: Annotated[str, typer.Argument(help="A declared family, or a signature hash (8+ hex digits).")],
    margin: Annotated[
        float | None, typer.Option("--margin", help="Use this margin instead of the family's declared one.")
    ] = None,
) -> None:
    """Rank a family's models on their evaluation metric, then cost; flag those behind the best."""
    from toolchain.registry.peers import rank_peers
    from toolchain.registry.table import peers_table

    typer.echo(peers_table(rank_peers(_registry(), family, margin=margin)))


@app.command("evaluate")
@_one_line_errors
def evaluate(
    package: Annotated[Path, typer.Argument(help="Package folder.")],
    data: Annotated[Path, typer.Option("--data", help=".npz with one array per input, or .npy for one input.")],
    labels: Annotated[str, typer.Option("--labels", help="A .npy/.npz file, or the name of an array in --data.")],
    metric: Annotated[
        str, typer.Option("--metric", help="Override the spec's metric: accuracy, top5, auc, ndcg@10, cosine[:OUTPUT].")
    ] = "",
    groups: Annotated[str, typer.Option("--groups", help="Query ids for ndcg@K: a file or an array in --data.")] = "",
    trust: Annotated[bool, typer.Option("--trust", help="Allow a recommended TorchScript/.pt2 artifact.")] = False,
    registry: Annotated[
        str, typer.Option("--registry", help="Registry URI to record into (default $TOOLCHAIN_REGISTRY_URI).")
    ] = "",
    name: Annotated[str, typer.Option("--name", help="Record into this registered model.")] = "",
    version: Annotated[str, typer.Option("--version", help="Its version (default production, else latest).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Compute the spec's task metric on labelled data with the recommended artifact; record it in the registry."""
    import json

    from toolchain.evaluate import evaluate_package

    result = evaluate_package(package, data, labels, metric=metric, groups=groups, trust=trust)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.describe())
    if name or registry:
        from toolchain.package.format import open_package
        from toolchain.registry.store import ModelRegistry

        keys = ("metric", "value", "examples", "data_sha256", "artifact")
        recorded = ModelRegistry(registry).record_evaluation(
            name or open_package(package).name, version, package, {k: str(getattr(result, k)) for k in keys}
        )
        typer.echo(f"recorded in {recorded.name} version {recorded.version}", err=as_json)


def _resolve_target(target: str) -> ModelSpec:
    """The spec TARGET names; for a bare name the zoo is imported first so that its names resolve."""
    from toolchain.core.target import resolve_target

    if ":" not in target:
        import zoo  # noqa: F401 - registers the zoo's models

    return resolve_target(target)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
