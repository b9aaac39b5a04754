// Browser verifier: the package served by toolchain.hosts.browser, replayed with onnxruntime-web
// (WebAssembly). The page renders a parity table and leaves the JSON result in
// window.__toolchainResult (window.__toolchainDone turns true) for the Python driver.
//
// Served paths: /pkg/<rel> (package files), /pkg-listing.json (the folder's file list as the server
// sees it), /ort/ (onnxruntime-web's dist folder), /feeds/<name>.npy (bench inputs).

import * as ort from "/ort/ort.wasm.min.mjs";
import { parseNpy } from "/js/npy.mjs";
import { g } from "/js/parity.mjs";
import { failureLines, runOrt, toJson, verifyPackage } from "/js/verify-core.mjs";

const params = new URLSearchParams(location.search);
const threads = Number(params.get("threads") || 1);

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

const io = {
  listing: async () => JSON.parse(new TextDecoder().decode(await fetchBytes("/pkg-listing.json"))),
  read: (rel) => fetchBytes(`/pkg/${rel.split("/").map(encodeURIComponent).join("/")}`),
  sha256: async (bytes) => Array.from(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)),
    (b) => b.toString(16).padStart(2, "0")).join(""),
};

function webRuntime() {
  ort.env.wasm.wasmPaths = "/ort/";
  // NOTE: more than one wasm thread needs a cross-origin isolated page (the server sends COOP/COEP).
  ort.env.wasm.numThreads = crossOriginIsolated ? threads : 1;
  const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all", executionMode: "sequential" };
  return {
    host: "browser",
    name: `onnxruntime-web ${ort.env.versions.web} (wasm, ${ort.env.wasm.numThreads} thread(s))`,
    formats: ["onnx"],
    load: async (entry) => {
      const dir = entry.path.includes("/") ? entry.path.slice(0, entry.path.lastIndexOf("/") + 1) : "";
      const externalData = (entry.files || []).filter((f) => f !== entry.path && f.startsWith(dir))
        .map((f) => ({ path: f.slice(dir.length), data: `/pkg/${f}` }));
      return ort.InferenceSession.create(await io.read(entry.path), externalData.length ? { ...options, externalData } : options);
    },
    run: (session, feeds) => runOrt(ort, session, feeds),
    release: (session) => session.release(),
  };
}

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function render(result) {
  const status = document.getElementById("status");
  status.textContent = `${result.passed ? "VERIFIED" : "NOT VERIFIED"} on ${result.runtime}` +
    (result.problems.length ? `: ${result.problems.length} integrity problem(s)` : "");
  status.className = result.passed ? "ok" : "fail";
  const samples = [...new Set(result.artifacts.flatMap((a) => a.samples.map((s) => s.sample)))];
  const table = document.createElement("table");
  const head = table.insertRow();
  for (const text of ["artifact (worst error / allowed)", ...samples]) head.appendChild(cell("th", text));
  for (const artifact of result.artifacts) {
    const row = table.insertRow();
    row.appendChild(cell("th", `${artifact.path} [${artifact.variant}]`));
    for (const name of samples) {
      const s = artifact.samples.find((x) => x.sample === name);
      if (!s) { row.appendChild(cell("td", artifact.error ? "not loaded" : "-", "fail")); continue; }
      const worst = Math.max(0, ...Object.values(s.outputs).map((o) => o.worst_ratio));
      row.appendChild(cell("td", s.error ? "could not run" : `${s.passed ? "ok" : "FAIL"} ${g(worst)}x`, s.passed ? "ok" : "fail"));
    }
  }
  document.getElementById("table").appendChild(table);
  const failures = document.getElementById("failures");
  failures.textContent = failureLines(result).join("\n");
  failures.hidden = failures.textContent.length === 0;
}

async function bench() {
  const runtime = webRuntime();
  const session = await runtime.load({ path: params.get("model") });
  const feeds = {};
  for (const name of params.get("inputs").split(",")) feeds[name] = parseNpy(await fetchBytes(`/feeds/${name}.npy`), name);
  for (let i = 0; i < 3; i++) await runtime.run(session, feeds);
  const runs = Number(params.get("runs") || 20), times = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    await runtime.run(session, feeds);
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  document.getElementById("status").textContent = `bench ${params.get("model")}: median ${times[runs >> 1].toFixed(3)} ms`;
  return JSON.stringify({ host: "browser", runtime: runtime.name, model: params.get("model"), runs, threads: ort.env.wasm.numThreads, median_ms: times[runs >> 1] });
}

async function main() {
  try {
    if (params.get("model")) {
      window.__toolchainResult = await bench();
    } else {
      const result = await verifyPackage(io, webRuntime());
      render(result);
      window.__toolchainResult = toJson(result);
    }
  } catch (e) {
    document.getElementById("status").textContent = `could not run: ${e.message || e}`;
    window.__toolchainError = String(e.message || e);
  }
  window.__toolchainDone = true;
}

main();
