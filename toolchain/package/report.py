"""Render a pipeline report (the ``report.json`` dict) as Markdown for humans."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["render_markdown", "runtime_label"]


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: stages, a path x sample-set table, per-output parity, findings, versions."""
    lines = [f"# {report['name']} {report.get('version', '')} — toolchain report", ""]
    lines += [f"Model source: `{report.get('source', '?')}`", ""]
    batches = report.get("data_batches", 0)
    lines += [
        f"Real data: {batches} batch(es) of the user's data replayed as sample sets data-0.. beside the generated ones."
        if batches
        else "Real data: none given (`@exportable(data=...)`, `toolchain export --data`); generated samples only.",
        "",
        "## Stages",
        "",
    ]
    lines += ["| stage | status | seconds | detail |", "|---|---|---:|---|"]
    lines += [
        f"| {s['name']} | {s['status']} | {s['seconds']:.2f} | {_cell(s.get('detail', ''))} |"
        for s in report.get("stages", [])
    ]
    lines += _paths_table(report)
    lines += _passes(report)
    lines += _drift(report)
    lines += _variants(report)
    lines += _bench(report)
    tol = report.get("tolerance", {})
    lines += ["", "## Parity against eager", ""]
    lines += [
        f"Allowed: atol={tol.get('atol')} rtol={tol.get('rtol')}"
        + (f", per output {tol['per_output']}" if tol.get("per_output") else "")
        + ". Ratio = worst |a - e| / (atol + rtol |e|); <= 1 passes.",
    ]
    sizes = {s["name"]: s["sizes"] for s in report.get("samples", [])}
    for path in [*report.get("paths", []), *report.get("variants", [])]:
        if not path.get("samples"):
            continue
        lines += ["", f"### {path['exporter']} ({path['status']})", ""]
        lines += [
            "| sample set | sizes | output | max abs | max rel | ratio | verdict |",
            "|---|---|---|---:|---:|---:|---|",
        ]
        for sample in path["samples"]:
            where = _where(sizes.get(sample["sample"], {}))
            if sample.get("error"):
                lines.append(f"| {sample['sample']} | {where} | — | — | — | — | FAIL: {_cell(sample['error'])} |")
            for name, o in sample.get("outputs", {}).items():
                verdict = "pass" if o["passed"] else f"FAIL {_cell(o.get('reason', ''))}".strip()
                lines.append(
                    f"| {sample['sample']} | {where} | {name} | {o['max_abs']:.3g} | {o['max_rel']:.3g} "
                    f"| {o['worst_ratio']:.3g} | {verdict} |"
                )
            for c in sample.get("checks", []):
                verdict = "pass" if c["passed"] else f"FAIL {_cell(c.get('reason', ''))}".strip()
                lines.append(
                    f"| {sample['sample']} | {where} | {c['kind']}({c['output']}) | — | — "
                    f"| {c['achieved']:.4g} >= {c['allowed']:g} | {verdict} |"
                )
    lines += ["", "## Findings", ""]
    findings = [("model", f) for f in report.get("findings", [])]
    for path in report.get("paths", []):
        findings += [(path["exporter"], f) for f in (path.get("artifact") or {}).get("findings", [])]
    lines += [
        f"- {who}: **{f['kind']}** {_cell(f['message'])}" + (f" (`{f['source']}`)" if f.get("source") else "")
        for who, f in findings
    ] or ["None."]
    versions = report.get("versions", {})
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def _paths_table(report: Mapping[str, Any]) -> list[str]:
    samples = report.get("samples", [])
    head = " | ".join(f"{s['name']} ({_where(s['sizes'])})" for s in samples)
    lines = ["", "## Export paths", "", "Worst max abs error against eager at each sample set (x = failed).", ""]
    lines += [f"| path | status | export s | findings | {head} |", "|---|---|---:|---:|" + "---:|" * len(samples)]
    for path in report.get("paths", []):
        by_sample = {s["sample"]: s for s in path.get("samples", [])}
        cells = []
        for s in samples:
            got = by_sample.get(s["name"])
            if got is None:
                cells.append("—")
            elif got.get("error"):
                cells.append("x could not run")
            else:
                worst = max((o["max_abs"] for o in got["outputs"].values()), default=0.0)
                cells.append(f"{worst:.2g}" + ("" if got["passed"] else " x"))
        n_findings = len((path.get("artifact") or {}).get("findings", []))
        lines.append(
            f"| {path['exporter']} | {path['status']} | {path['export_seconds']:.2f} | {n_findings} | "
            + " | ".join(cells)
            + " |"
        )
    rejected = [p for p in report.get("paths", []) if p["status"] == "rejected"]
    if rejected:
        lines += ["", "Rejected:", ""]
        lines += [f"- **{p['exporter']}**: {_cell(p['reason'])}" for p in rejected]
    return lines


def _passes(report: Mapping[str, Any]) -> list[str]:
    paths = [p for p in report.get("paths", []) if p.get("passes")]
    if not paths:
        return []
    lines = ["", "## Optimisation passes", "", "Each pass is kept only if it changes the graph without adding nodes "]
    lines[-1] += "and every sample set still matches eager; speed is not judged here (see `toolchain bench`)."
    lines += ["", "| path | pass | status | nodes | detail |", "|---|---|---|---|---|"]
    for path in paths:
        for step in path["passes"]:
            why = step.get("reason") or step.get("detail", "")
            lines.append(
                f"| {path['exporter']} | {step['name']} | {step['status']} | {step['nodes_before']} -> "
                f"{step['nodes_after']} | {_cell(why)} |"
            )
    return lines


def _drift(report: Mapping[str, Any]) -> list[str]:
    paths = [p for p in report.get("paths", []) if p.get("drift")]
    if not paths:
        return []
    lines = ["", "## Stage drift against eager", ""]
    lines += ["Worst error ratio over every output and sample set (<= 1 passes its stage's gate); latency: see"]
    lines[-1] += " `toolchain bench`, which races the shipped files side by side."
    lines += ["", "| path | stage | passed | worst ratio | nodes | size KiB |", "|---|---|---|---:|---:|---:|"]
    for path in paths:
        for d in path["drift"]:
            ratios = [o["worst_ratio"] for outs in d["worst"].values() for o in outs.values()]
            lines.append(
                f"| {path['exporter']} | {d['stage']} | {'yes' if d['passed'] else 'no'} | "
                f"{max(ratios, default=0.0):.3g} | {d['nodes']} | {d['bytes'] / 1024:.0f} |"
            )
    return lines


def _variants(report: Mapping[str, Any]) -> list[str]:
    variants = report.get("variants", [])
    if not variants:
        return []
    lines = ["", "## Precision variants", "", "| variant | status | kept in fp32 | why |", "|---|---|---|---|"]
    for v in variants:
        repair = v.get("repair") or {}
        kept = ", ".join(f"`{m}`" for m in repair.get("modules", [])) or (
            f"{len(repair.get('keep', []))} node(s)" if repair.get("keep") else "nothing"
        )
        lines.append(f"| {v['exporter']} | {v['status']} | {kept} | {_cell(v.get('reason', ''))} |")
        lines += [f"|  | round {i + 1} |  | {_cell(r['reason'])} |" for i, r in enumerate(repair.get("rounds", []))]
    return lines


def _bench(report: Mapping[str, Any]) -> list[str]:
    bench = report.get("bench")
    if not bench:
        return []
    host = bench.get("host", {})
    lines = ["", "## Benchmark", "", f"Host: {host.get('machine')} {host.get('processor')}, {host.get('cpus')} CPUs."]
    lines += ["Median of runs until the median settled; x eager = eager median / this median.", ""]
    lines += ["| batch | artifact | runtime | p50 ms | p90 ms | spread | x eager | RSS MB | parity |"]
    lines += ["|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(bench.get("rows", []), key=lambda r: (r["batch"], r["p50_ms"])):
        parity = {None: "—", True: "ok", False: "FAIL"}[r.get("parity")]
        runtime = runtime_label(r["runtime"], r.get("fixed_dims"), r.get("provider", ""))
        lines.append(
            f"| {r['batch']} | {r['artifact']} | {runtime} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
            f"{r['spread']:.0%} | {r['ratio_vs_eager']:.2f} | {r['rss_mb']:.0f} | {parity} |"
        )
    for batch, rec in sorted(bench.get("recommended", {}).items(), key=lambda kv: int(kv[0])):
        portable = rec.get("portable") or {}
        runtime = runtime_label(rec["runtime"], rec.get("fixed_dims"), rec.get("provider", ""))
        lines.append(
            f"\nRecommended at batch {batch}: `{rec['artifact']}` on {runtime} ({rec['p50_ms']:.3f} ms, "
            f"{rec['ratio_vs_eager']:.2f}x eager, timed at {_where(rec.get('sizes', {}))}); "
            f"portable: `{portable.get('artifact', '—')}`."
        )
    return lines


def runtime_label(runtime: str, fixed_dims: Mapping[str, int] | None, provider: str = "") -> str:
    """``ort``, ``ort-cuda`` on a provider other than cpu, ``ort[batch=16]`` for a session planned for that size."""
    name = f"{runtime}-{provider}" if provider and provider != "cpu" else runtime
    fixed = ",".join(f"{k}={v}" for k, v in (fixed_dims or {}).items())
    return f"{name}[{fixed}]" if fixed else name


def _where(sizes: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items()) or "static"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
