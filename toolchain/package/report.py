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
    lines += ["| stage | status | detail |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {_cell(s.get('detail', ''))} |" for s in report.get("stages", [])]
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
    lines += _findings(report)
    versions = report.get("versions", {})
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def _paths_table(report: Mapping[str, Any]) -> list[str]:
    samples = report.get("samples", [])
    head = " | ".join(f"{s['name']} ({_where(s['sizes'])})" for s in samples)
    lines = ["", "## Export paths", "", "Worst max abs error against eager at each sample set (x = failed).", ""]
    lines += [f"| path | status | findings | {head} |", "|---|---|---:|" + "---:|" * len(samples)]
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
        lines.append(f"| {path['exporter']} | {path['status']} | {n_findings} | " + " | ".join(cells) + " |")
    if any(p["status"] == "rejected" for p in report.get("paths", [])):
        lines += ["", "Why each rejected path was rejected: see [Findings](#findings)."]
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
            # NOTE: a pass that failed left no graph to count.
            after = "-" if step["status"] == "failed" else step["nodes_after"]
            lines.append(
                f"| {path['exporter']} | {step['name']} | {step['status']} | {step['nodes_before']} -> {after} | "
                f"{_cell(why)} |"
            )
    return lines


def _drift(report: Mapping[str, Any]) -> list[str]:
    paths = [p for p in report.get("paths", []) if p.get("drift")]
    if not paths:
        return []
    tol = report.get("tolerance", {})
    lines = ["", "## Stage drift against eager", ""]
    lines += [
        "Each stage against eager over every output and sample set: the worst absolute error, that error as a "
        f"multiple of the spec's fp32 tolerance (atol={tol.get('atol')} rtol={tol.get('rtol')}) and of the "
        "stage's own allowed tolerance (<= 1 passes its gate). Latency: see `toolchain bench`, which races the "
        "shipped files side by side.",
        "",
        "| path | stage | max abs | x fp32 tol | own allowed | x own | passed | nodes | size KiB |",
        "|---|---|---:|---:|---|---:|---|---:|---:|",
    ]
    for path in paths:
        for d in path["drift"]:
            outs = [o for outs in d["worst"].values() for o in outs.values()]
            spec = [o["spec_ratio"] for o in outs if "spec_ratio" in o]
            allowed = sorted({(o["atol"], o["rtol"]) for o in outs if "atol" in o})
            lines.append(
                f"| {path['exporter']} | {d['stage']} | {max((o['max_abs'] for o in outs), default=0.0):.3g} | "
                + (f"{max(spec):.3g}" if spec else "—")
                + " | "
                + ("; ".join(f"atol={a:g} rtol={r:g}" for a, r in allowed) or "—")
                + f" | {max((o['worst_ratio'] for o in outs), default=0.0):.3g} | {'yes' if d['passed'] else 'no'} | "
                f"{d['nodes']} | {d['bytes'] / 1024:.0f} |"
            )
    return lines


def _findings(report: Mapping[str, Any]) -> list[str]:
    """Findings ranked: why paths were rejected, then the others, then a brief training-mode note.

    Library notices (``noise``) are collapsed; a finding raised by several paths is listed once.
    """
    groups: dict[tuple[str, str, str], tuple[Mapping[str, Any], list[str]]] = {}
    for who, f in _all_findings(report):
        key = (f["kind"], f["message"], f.get("source", ""))
        groups.setdefault(key, (f, []))[1].append(who)
    rejected = [p for p in [*report.get("paths", []), *report.get("variants", [])] if p["status"] == "rejected"]
    explaining = {p["exporter"] for p in rejected}
    lines = ["", "## Findings", ""]
    for p in rejected:
        lines.append(f"- **{p['exporter']} rejected**: {_cell(p['reason'])}")
        lines += [
            f"  - {_finding(f)}"
            for f, whos in groups.values()
            if p["exporter"] in whos and not _noise(f) and f["kind"] != "training-mode"
        ]
    # NOTE: a finding already listed under a rejection is listed again only for the kept paths that raised it.
    others = [
        (f, [w for w in whos if w not in explaining])
        for f, whos in groups.values()
        if not _noise(f) and f["kind"] != "training-mode"
    ]
    others = [(f, whos) for f, whos in others if whos]
    lines += [f"- {', '.join(whos)}: {_finding(f)}" for f, whos in others]
    training = [f for f, _ in groups.values() if f["kind"] == "training-mode"]
    if training:
        lines.append("- The model was built in training mode; every path exported it in eval mode.")
    if len(lines) == 3:
        lines.append("None.")
    noise = [(f, whos) for f, whos in groups.values() if _noise(f)]
    if noise:
        lines += ["", f"<details><summary>Library notices ({len(noise)}): deprecations, warnings and logs "]
        lines[-1] += "raised inside torch and the exporters, not about this model</summary>"
        lines += ["", *(f"- {', '.join(whos)}: {_finding(f)}" for f, whos in noise), "", "</details>"]
    return lines


def _all_findings(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    found = [("model", f) for f in report.get("findings", [])]
    for path in [*report.get("paths", []), *report.get("variants", [])]:
        found += [(path["exporter"], f) for f in (path.get("artifact") or {}).get("findings", [])]
    return found


def _noise(f: Mapping[str, Any]) -> bool:
    # NOTE: reports written before findings were marked: their deprecation notices are noise too.
    return bool(f.get("noise", f["kind"] == "deprecation"))


def _finding(f: Mapping[str, Any]) -> str:
    return f"**{f['kind']}** {_cell(f['message'])}" + (f" (`{f['source']}`)" if f.get("source") else "")


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
