// Node.js verifier: a package's ONNX artifacts replayed with onnxruntime-node (CPU).
//
//   node verify.mjs PACKAGE --modules DIR [--json OUT] [--threads N]
//   node verify.mjs PACKAGE --modules DIR --bench FEEDS --model REL [--runs N] [--threads N] [--json OUT]
//
// DIR is the node_modules folder holding onnxruntime-node (installed by toolchain.hosts). Prints one
// line per artifact and one "FAIL ..." line per failure; exits 1 on any failure, 2 when it cannot run.

import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";

import { parseNpy } from "../js/npy.mjs";
import { failureLines, runOrt, summaryLines, toJson, verifyPackage } from "../js/verify-core.mjs";

function parseArgs(argv) {
  const args = { package: "", modules: "", json: "", threads: 1, bench: "", model: "", runs: 20 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (!key.startsWith("--")) { args.package = key; continue; }
    const name = key.slice(2);
    if (!(name in args)) throw new Error(`unknown option ${key}`);
    args[name] = typeof args[name] === "number" ? Number(argv[++i]) : argv[++i];
  }
  if (!args.package || !args.modules) throw new Error("usage: verify.mjs PACKAGE --modules DIR [--json OUT] [--threads N]");
  return args;
}

function walk(root) {
  const files = [], links = [], others = [];
  const visit = (dir, prefix) => {
    for (const name of readdirSync(dir).sort()) {
      const full = join(dir, name), rel = prefix ? `${prefix}/${name}` : name;
      const stat = lstatSync(full);
      if (stat.isSymbolicLink()) links.push(rel);
      else if (stat.isDirectory()) visit(full, rel);
      else if (stat.isFile()) files.push(rel);
      else others.push(rel);
    }
  };
  visit(root, "");
  return { files, links, others };
}

function fileIo(root) {
  return {
    listing: async () => walk(root),
    read: async (rel) => new Uint8Array(readFileSync(join(root, rel))),
    sha256: async (bytes) => createHash("sha256").update(bytes).digest("hex"),
  };
}

function onnxRuntime(ort, root, threads) {
  const options = { intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: "sequential", graphOptimizationLevel: "all" };
  return {
    host: "node",
    name: `onnxruntime-node ${ort.env.versions.node}`,
    formats: ["onnx"],
    load: (entry) => ort.InferenceSession.create(join(root, entry.path), options),
    run: (session, feeds) => runOrt(ort, session, feeds),
    release: (session) => session.release(),
  };
}

async function bench(ort, args) {
  // NOTE: the feeds are .npy files the Python bench wrote (one per input); timing covers session.run only.
  const runtime = onnxRuntime(ort, args.package, args.threads);
  const session = await runtime.load({ path: args.model });
  const feeds = {};
  for (const name of readdirSync(args.bench).filter((n) => n.endsWith(".npy"))) {
    feeds[name.slice(0, -4)] = parseNpy(new Uint8Array(readFileSync(join(args.bench, name))), name);
  }
  for (let i = 0; i < 3; i++) await runtime.run(session, feeds);
  const times = [];
  for (let i = 0; i < args.runs; i++) {
    const start = process.hrtime.bigint();
    await runtime.run(session, feeds);
    times.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  times.sort((a, b) => a - b);
  return { host: "node", runtime: runtime.name, model: args.model, runs: args.runs, threads: args.threads, median_ms: times[Math.floor(times.length / 2)] };
}

async function main() {
  let args, ort;
  try {
    args = parseArgs(process.argv.slice(2));
    ort = createRequire(join(args.modules, "noop.js"))("onnxruntime-node");
  } catch (e) {
    console.error(`error: ${e.message}`);
    return 2;
  }
  if (args.bench) {
    const result = await bench(ort, args);
    if (args.json) writeFileSync(args.json, JSON.stringify(result));
    console.log(`${args.model}: median ${result.median_ms.toFixed(3)} ms over ${args.runs} runs`);
    return 0;
  }
  const result = await verifyPackage(fileIo(args.package), onnxRuntime(ort, args.package, args.threads), {
    progress: (line) => console.error(line),
  });
  if (args.json) writeFileSync(args.json, toJson(result));
  for (const line of summaryLines(result)) console.log(line);
  for (const path of result.skipped) console.log(`${path}: skipped, not an ONNX artifact`);
  for (const line of failureLines(result)) console.error(`FAIL ${line}`);
  console.log(result.passed ? `verified on ${result.runtime}: ${args.package}` : `not verified on ${result.runtime}: ${args.package}`);
  return result.passed ? 0 : 1;
}

process.exitCode = await main();
