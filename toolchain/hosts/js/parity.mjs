// The parity rule of toolchain.core.parity and the task checks of toolchain.core.checks, in plain JS.
// An element passes when |a - e| <= atol + rtol*|e|; NaN/Inf positions must match exactly; shapes and
// dtypes must match; integer and boolean outputs match exactly. Every number is computed in doubles
// with the same operations as numpy, so the worst error ratio agrees with Python's bit for bit on the
// same outputs.

import { numberAt } from "./npy.mjs";

const INTEGER = new Set(["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]);
const MAX_RANKED = 2048;

/** Python's tuple spelling of a shape: (), (3,), (2, 3). */
export function shapeText(shape) {
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(", ")})`;
}

function sameShape(a, b) {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** The (atol, rtol) that applies to output `name` under a manifest tolerance object. */
export function toleranceFor(tolerance, name) {
  const own = (tolerance.per_output || {})[name] || tolerance;
  return [Number(own.atol), Number(own.rtol)];
}

/** True at padded positions of an output (mask value == pad), or a string saying why the mask does not fit. */
function paddedPositions(rule, mask, outShape) {
  if (!sameShape(mask.shape, outShape.slice(0, mask.shape.length))) {
    return `padding mask '${rule.input}' of shape ${shapeText(mask.shape)} does not lead the output's shape ${shapeText(outShape)}`;
  }
  const inner = outShape.slice(mask.shape.length).reduce((a, b) => a * b, 1);
  const count = outShape.reduce((a, b) => a * b, 1);
  const skip = new Uint8Array(count);
  for (let i = 0; i < count; i++) skip[i] = numberAt(mask, Math.floor(i / inner)) === Number(rule.pad) ? 1 : 0;
  return skip;
}

/** Compare one output; returns the fields of Python's OutputParity. */
export function compareOne(name, exp, act, atol, rtol, skip) {
  const base = { name, passed: false, atol, rtol, max_abs: 0, max_rel: 0, mismatch_fraction: 0, worst_ratio: 0,
    nonfinite_mismatches: 0, reason: "", ignored: 0 };
  if (!sameShape(exp.shape, act.shape)) {
    return { ...base, reason: `shape ${shapeText(act.shape)} != expected ${shapeText(exp.shape)}` };
  }
  if (exp.dtype !== act.dtype) return { ...base, reason: `dtype ${act.dtype} != expected ${exp.dtype}` };
  const size = exp.data.length;
  if (size === 0) return { ...base, passed: true };
  if (INTEGER.has(exp.dtype)) { atol = 0; rtol = 0; }
  let maxAbs = 0, maxRel = 0, worst = 0, anyBoth = false, fails = 0, nonfinite = 0, ignored = 0;
  for (let i = 0; i < size; i++) {
    const e = numberAt(exp, i);
    let a = numberAt(act, i);
    // NOTE: padded positions take the reference's own value, so they pass exactly and count nowhere.
    if (skip && skip[i]) { a = e; ignored++; }
    const ef = Number.isFinite(e), af = Number.isFinite(a);
    const both = ef && af;
    const badNonfinite = ef !== af || (!ef && !af && !((Number.isNaN(e) && Number.isNaN(a)) || e === a));
    if (badNonfinite) { nonfinite++; fails++; }
    if (!both) continue;
    anyBoth = true;
    const diff = Math.abs(a - e);
    const absE = Math.abs(e);
    const allowed = atol + rtol * absE;
    if (diff > allowed) fails++;
    if (diff > maxAbs) maxAbs = diff;
    if (absE > 0 && diff / absE > maxRel) maxRel = diff / absE;
    const ratio = allowed > 0 ? diff / allowed : (diff > 0 ? Infinity : 0);
    if (ratio > worst) worst = ratio;
  }
  return {
    ...base, passed: fails === 0, atol, rtol, max_abs: maxAbs, max_rel: maxRel, mismatch_fraction: fails / size,
    worst_ratio: anyBoth ? worst : 0, nonfinite_mismatches: nonfinite,
    reason: nonfinite ? `${nonfinite} NaN/Inf position(s) differ from expected` : "", ignored,
  };
}

/** Compare every expected output with the candidate's (toolchain.core.parity.compare). */
export function compare(expected, actual, tolerance, feeds) {
  const outputs = {};
  const padded = tolerance.ignore_padded || {};
  for (const [name, exp] of Object.entries(expected)) {
    const [atol, rtol] = toleranceFor(tolerance, name);
    const act = actual[name];
    if (act === undefined) {
      outputs[name] = { ...compareOne(name, exp, exp, atol, rtol), passed: false, max_abs: 0,
        reason: "missing from candidate outputs" };
      continue;
    }
    const rule = padded[name];
    let skip = null;
    if (rule && feeds && feeds[rule.input] && sameShape(exp.shape, act.shape)) {
      const found = paddedPositions(rule, feeds[rule.input], exp.shape);
      if (typeof found === "string") {
        outputs[name] = { ...compareOne(name, exp, exp, atol, rtol), passed: false, reason: found };
        continue;
      }
      skip = found;
    }
    outputs[name] = compareOne(name, exp, act, atol, rtol, skip);
  }
  return outputs;
}

function rows(array) {
  const shape = array.shape;
  const last = shape.length ? shape[shape.length - 1] : 1;
  const values = Array.from({ length: array.data.length }, (_, i) => numberAt(array, i));
  const out = [];
  for (let r = 0; last > 0 && r < values.length / last; r++) out.push(values.slice(r * last, (r + 1) * last));
  return out;
}

function argmax(row) {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function top1(exp, act) {
  if (exp.data.length === 0) return 1;
  const e = rows(exp), a = rows(act);
  return e.filter((row, i) => argmax(row) === argmax(a[i])).length / e.length;
}

function cosine(exp, act) {
  if (exp.data.length === 0) return 1;
  const e = rows(exp), a = rows(act);
  let lowest = Infinity;
  for (let r = 0; r < e.length; r++) {
    let dot = 0, ne = 0, na = 0;
    for (let i = 0; i < e[r].length; i++) { dot += e[r][i] * a[r][i]; ne += e[r][i] ** 2; na += a[r][i] ** 2; }
    const norms = Math.sqrt(ne) * Math.sqrt(na);
    // NOTE: two all-zero rows point "the same way"; one zero row against a non-zero one does not.
    let sim = norms > 0 ? dot / norms : (dot === 0 ? 1 : 0);
    if (ne === 0 && na === 0) sim = 1;
    lowest = Math.min(lowest, sim);
  }
  return lowest;
}

function ranking(exp, act) {
  let e = Array.from({ length: exp.data.length }, (_, i) => numberAt(exp, i));
  let a = Array.from({ length: act.data.length }, (_, i) => numberAt(act, i));
  if (e.length > MAX_RANKED) {
    // NOTE: numpy's linspace(0, n - 1, 2048).astype(int64): an even spread keeps the pair count bounded.
    const step = (e.length - 1) / (MAX_RANKED - 1);
    const keep = Array.from({ length: MAX_RANKED }, (_, i) => (i === MAX_RANKED - 1 ? e.length - 1 : Math.trunc(i * step)));
    e = keep.map((k) => e[k]);
    a = keep.map((k) => a[k]);
  }
  if (e.length < 2) return 1;
  let ordered = 0, kept = 0;
  for (let i = 0; i < e.length; i++) {
    for (let j = 0; j < e.length; j++) {
      const de = Math.sign(e[i] - e[j]);
      if (de === 0) continue; // NOTE: as numpy, a NaN pair counts as ordered and never kept.
      ordered++;
      if (de === Math.sign(a[i] - a[j])) kept++;
    }
  }
  return ordered ? kept / ordered : 1;
}

/** Evaluate one manifest task check ({kind, output, threshold}); fields of Python's CheckResult. */
export function evaluateCheck(check, expected, actual) {
  const result = { kind: check.kind, output: check.output, achieved: 0, allowed: Number(check.threshold), reason: "" };
  const exp = expected[check.output], act = actual[check.output];
  if (!exp || !act) return { ...result, passed: false, reason: "output missing" };
  if (!sameShape(exp.shape, act.shape)) {
    return { ...result, passed: false, reason: `shape ${shapeText(act.shape)} != ${shapeText(exp.shape)}` };
  }
  for (let i = 0; i < act.data.length; i++) {
    if (!Number.isFinite(numberAt(act, i))) return { ...result, passed: false, reason: "non-finite values" };
  }
  const fn = { top1, cosine, ranking }[check.kind];
  if (!fn) return { ...result, passed: false, reason: `unknown check kind ${check.kind}` };
  const achieved = fn(exp, act);
  return { ...result, achieved, passed: achieved >= result.allowed };
}

/** Python's `:.{digits}g` spelling for messages (1.23e-05, 0.0137, 1e+03). */
export function g(value, digits = 3) {
  if (!Number.isFinite(value)) return String(value).toLowerCase().replace("infinity", "inf");
  if (value === 0) return "0";
  const exp = Number(value.toExponential(digits - 1).split("e")[1]);
  if (exp < -4 || exp >= digits) {
    const [mantissa, power] = value.toExponential(digits - 1).split("e");
    const m = mantissa.includes(".") ? mantissa.replace(/\.?0+$/, "") : mantissa;
    const sign = power.startsWith("-") ? "-" : "+";
    return `${m}e${sign}${power.replace(/^[+-]/, "").padStart(2, "0")}`;
  }
  return String(Number(value.toPrecision(digits)));
}

/** One line for an output, like OutputParity.describe(). */
export function describe(o) {
  let text = `${o.name}: ${o.passed ? "ok" : "FAIL"} max_abs=${g(o.max_abs)} max_rel=${g(o.max_rel)} ` +
    `mismatch=${(o.mismatch_fraction * 100).toFixed(2)}% (allowed atol=${g(o.atol, 6)} rtol=${g(o.rtol, 6)})`;
  if (o.ignored) text += ` [${o.ignored} padded element(s) not compared, as declared]`;
  return o.reason ? `${text}; ${o.reason}` : text;
}
