// The package verifier of toolchain.package.verify, host-neutral: integrity (exact file set, sizes,
// sha256) first, then every golden sample replayed on every artifact this host runs, each under its
// own tolerance and task checks. The Node.js and browser drivers supply file access and a runtime.
//
//   io:      { listing() -> {files: [rel], links: [rel], others: [rel]}, read(rel) -> Uint8Array, sha256(bytes) -> hex }
//   runtime: { name, formats: ["onnx"], load(entry) -> session, run(session, feeds) -> {name: array} }
//
// The result is the JSON the Python driver (toolchain.hosts) parses.

import { parseNpy } from "./npy.mjs";
import { compare, describe, evaluateCheck, g } from "./parity.mjs";

export const MANIFEST = "manifest.json";
const SHA256 = /^[0-9a-f]{64}$/;

function safeRel(rel) {
  return typeof rel === "string" && rel.length > 0 && !rel.includes("\\") && !rel.startsWith("/") &&
    !rel.split("/").some((part) => part === ".." || part === "." || part === "");
}

function readManifest(bytes) {
  let data;
  try {
    data = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new Error(`${MANIFEST}: not valid JSON: ${e.message}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) throw new Error(`${MANIFEST}: must hold a JSON object`);
  if (data.schema_version !== 1) {
    throw new Error(`${MANIFEST}: schema_version ${JSON.stringify(data.schema_version)} is not supported (this verifier reads 1)`);
  }
  if (!Array.isArray(data.files)) throw new Error(`${MANIFEST}: field 'files' must be a list`);
  return data;
}

/** Every problem with the package's files, as {file, message} (toolchain.package.format.check_integrity). */
export async function checkIntegrity(io) {
  let manifest;
  try {
    manifest = readManifest(await io.read(MANIFEST));
  } catch (e) {
    return { manifest: null, problems: [{ file: MANIFEST, message: e.message }] };
  }
  const problems = [];
  const listed = new Map();
  manifest.files.forEach((entry, index) => {
    const where = `${MANIFEST} files[${index}]`;
    if (entry === null || typeof entry !== "object" || typeof entry.path !== "string") {
      problems.push({ file: where, message: "entry must be an object with path, size and sha256" });
    } else if (!safeRel(entry.path)) {
      problems.push({ file: where, message: `path ${JSON.stringify(entry.path)} must be relative, normalised and stay inside the package` });
    } else if (listed.has(entry.path) || entry.path === MANIFEST) {
      problems.push({ file: entry.path, message: "listed twice (or the manifest lists itself)" });
    } else if (!Number.isInteger(entry.size) || !SHA256.test(String(entry.sha256 ?? ""))) {
      problems.push({ file: entry.path, message: `${where} needs an integer size and a 64-hex sha256` });
    } else {
      listed.set(entry.path, entry);
    }
  });
  const { files, links, others = [] } = await io.listing();
  for (const rel of links) problems.push({ file: rel, message: "is a symbolic link; packages hold regular files only" });
  for (const rel of others) problems.push({ file: rel, message: "is not a regular file; packages hold regular files only" });
  const present = new Set(files.filter((rel) => rel !== MANIFEST));
  for (const rel of [...present].sort()) {
    if (!listed.has(rel)) problems.push({ file: rel, message: "is not listed in the manifest (unexpected file)" });
  }
  for (const [rel, entry] of listed) {
    if (!present.has(rel)) {
      problems.push({ file: rel, message: "is listed in the manifest but missing" });
      continue;
    }
    const bytes = await io.read(rel);
    if (bytes.length !== entry.size) {
      problems.push({ file: rel, message: `size ${bytes.length} != recorded ${entry.size}` });
    } else if ((await io.sha256(bytes)) !== entry.sha256) {
      problems.push({ file: rel, message: "sha256 does not match the manifest (file changed or corrupted)" });
    }
  }
  return { manifest, problems };
}

function listedFile(manifest, rel) {
  if (!manifest.files.some((e) => e.path === rel)) {
    throw new Error(`${MANIFEST}: refers to ${JSON.stringify(rel)}, which its file list does not hold`);
  }
  return rel;
}

async function loadSamples(io, manifest) {
  if (!Array.isArray(manifest.samples)) throw new Error(`${MANIFEST}: field 'samples' must be a list`);
  const samples = [];
  for (const sample of manifest.samples) {
    const arrays = async (entries) => {
      const out = {};
      for (const [key, rel] of Object.entries(entries)) out[key] = parseNpy(await io.read(listedFile(manifest, rel)), rel);
      return out;
    };
    samples.push({ name: String(sample.name), inputs: await arrays(sample.inputs), expected: await arrays(sample.expected) });
  }
  return samples;
}

/** Verify the package behind `io` on `runtime`; returns the result object (see the file header). */
export async function verifyPackage(io, runtime, { progress = () => {} } = {}) {
  const result = { host: runtime.host, runtime: runtime.name, problems: [], artifacts: [], skipped: [], failures: [], passed: false };
  const { manifest, problems } = await checkIntegrity(io);
  result.problems = problems;
  if (problems.length === 0) {
    try {
      if (typeof manifest.tolerance !== "object" || manifest.tolerance === null) throw new Error(`${MANIFEST}: field 'tolerance' must be a dict`);
      if (!Array.isArray(manifest.artifacts)) throw new Error(`${MANIFEST}: field 'artifacts' must be a list`);
      const samples = await loadSamples(io, manifest);
      for (const entry of manifest.artifacts) {
        const path = listedFile(manifest, String(entry.path));
        if (!runtime.formats.includes(entry.format)) {
          result.skipped.push(path);
          continue;
        }
        progress(`${path}: replaying ${samples.length} sample set(s) on ${runtime.name}`);
        result.artifacts.push(await replay(runtime, entry, path, samples, entry.tolerance || manifest.tolerance));
      }
    } catch (e) {
      result.problems.push({ file: MANIFEST, message: e.message });
    }
  }
  result.failures = failureLines(result);
  result.passed = result.problems.length === 0 && result.artifacts.length > 0 && result.failures.length === 0;
  return result;
}

async function replay(runtime, entry, path, samples, tolerance) {
  const artifact = { path, format: entry.format, variant: entry.variant || "fp32", samples: [] };
  let session;
  try {
    session = await runtime.load(entry);
  } catch (e) {
    artifact.error = `could not load: ${e.message || e}`;
    return artifact;
  }
  for (const sample of samples) {
    let actual;
    try {
      actual = await runtime.run(session, sample.inputs);
    } catch (e) {
      artifact.samples.push({ sample: sample.name, passed: false, error: String(e.message || e).split("\n")[0], outputs: {}, checks: [] });
      continue;
    }
    const outputs = compare(sample.expected, actual, tolerance, sample.inputs);
    const checks = (entry.checks || []).map((c) => evaluateCheck(c, sample.expected, actual));
    const passed = Object.values(outputs).every((o) => o.passed) && checks.every((c) => c.passed);
    artifact.samples.push({ sample: sample.name, passed, error: "", outputs, checks });
  }
  if (runtime.release) await runtime.release(session);
  return artifact;
}

/** One line per failure, naming the file, output and sample (VerificationReport.failure_lines). */
export function failureLines(result) {
  const lines = result.problems.map((p) => `${p.file}: ${p.message}`);
  for (const artifact of result.artifacts) {
    if (artifact.error) lines.push(`${artifact.path}: ${artifact.error}`);
    for (const s of artifact.samples) {
      if (s.error) lines.push(`${artifact.path}: sample '${s.sample}': could not run: ${s.error}`);
      for (const o of Object.values(s.outputs)) {
        if (!o.passed) lines.push(`${artifact.path}: output '${o.name}' on sample '${s.sample}': ${describe(o)}`);
      }
      for (const c of s.checks) {
        if (!c.passed) {
          const text = `${c.kind}(${c.output}): FAIL ${g(c.achieved, 4)} (allowed >= ${g(c.allowed, 6)})`;
          lines.push(`${artifact.path}: check on sample '${s.sample}': ${c.reason ? `${text}; ${c.reason}` : text}`);
        }
      }
    }
  }
  if (result.problems.length === 0 && result.artifacts.length === 0) {
    lines.push(`no artifact of a format this host runs (skipped: ${JSON.stringify(result.skipped)})`);
  }
  return lines;
}

/** One line per artifact: samples passed and the worst error ratio. */
export function summaryLines(result) {
  return result.artifacts.map((a) => {
    const passed = a.samples.filter((s) => s.passed).length;
    const worst = Math.max(0, ...a.samples.flatMap((s) => Object.values(s.outputs).map((o) => o.worst_ratio)));
    return `${a.path} on ${result.runtime}: ${passed}/${a.samples.length} sample sets passed (worst error at ${g(worst)}x of the allowed)`;
  });
}

/** JSON text with non-finite numbers spelled "inf"/"-inf"/"nan" (JSON has none). */
export function toJson(result) {
  return JSON.stringify(result, (key, value) => (typeof value === "number" && !Number.isFinite(value) ? String(value).toLowerCase().replace("infinity", "inf") : value), 1);
}

/** Run an onnxruntime (node or web) session on feeds of {dtype, shape, data}; outputs in the same form. */
export async function runOrt(ort, session, feeds) {
  const tensors = {};
  for (const [name, a] of Object.entries(feeds)) tensors[name] = new ort.Tensor(a.dtype, a.data, a.shape);
  const out = await session.run(tensors);
  const arrays = {};
  for (const [name, t] of Object.entries(out)) arrays[name] = { dtype: t.type, shape: Array.from(t.dims), data: t.data };
  return arrays;
}
