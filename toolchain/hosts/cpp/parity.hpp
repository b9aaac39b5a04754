// The parity rule of toolchain.core.parity and the task checks of toolchain.core.checks in C++:
// |a - e| <= atol + rtol*|e| per element, NaN/Inf positions exact, shapes and dtypes exact, integer
// outputs exact. Doubles and the same operations as numpy, so ratios agree with Python's.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "json.hpp"
#include "npy.hpp"

namespace tc {

struct OutputParity {
  std::string name;
  bool passed = false;
  double atol = 0, rtol = 0, max_abs = 0, max_rel = 0, mismatch_fraction = 0, worst_ratio = 0;
  int64_t nonfinite = 0, ignored = 0;
  std::string reason;
};

struct CheckResult {
  std::string kind, output, reason;
  double achieved = 0, allowed = 0;
  bool passed = false;
};

inline std::string shape_text(const std::vector<int64_t>& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + (s.size() == 1 ? ",)" : ")");
}

inline bool is_integer(const std::string& dtype) { return dtype.rfind("int", 0) == 0 || dtype.rfind("uint", 0) == 0 || dtype == "bool"; }

inline OutputParity compare_one(const std::string& name, const Array& exp, const Array& act, double atol, double rtol,
                                const std::vector<bool>* skip) {
  OutputParity o;
  o.name = name; o.atol = atol; o.rtol = rtol;
  if (exp.shape != act.shape) { o.reason = "shape " + shape_text(act.shape) + " != expected " + shape_text(exp.shape); return o; }
  if (exp.dtype != act.dtype) { o.reason = "dtype " + act.dtype + " != expected " + exp.dtype; return o; }
  size_t n = exp.values.size();
  if (n == 0) { o.passed = true; return o; }
  if (is_integer(exp.dtype)) { atol = rtol = 0; o.atol = o.rtol = 0; }
  int64_t fails = 0;
  bool any_both = false;
  for (size_t i = 0; i < n; i++) {
    double e = exp.values[i], a = act.values[i];
    // NOTE: padded positions take the reference's own value, so they pass exactly and count nowhere.
    if (skip && (*skip)[i]) { a = e; o.ignored++; }
    bool ef = std::isfinite(e), af = std::isfinite(a), both = ef && af;
    bool bad = ef != af || (!ef && !af && !((std::isnan(e) && std::isnan(a)) || e == a));
    if (bad) { o.nonfinite++; fails++; }
    if (!both) continue;
    any_both = true;
    double diff = std::fabs(a - e), abs_e = std::fabs(e), allowed = atol + rtol * abs_e;
    if (diff > allowed) fails++;
    o.max_abs = std::max(o.max_abs, diff);
    if (abs_e > 0) o.max_rel = std::max(o.max_rel, diff / abs_e);
    double ratio = allowed > 0 ? diff / allowed : (diff > 0 ? INFINITY : 0.0);
    o.worst_ratio = std::max(o.worst_ratio, ratio);
  }
  if (!any_both) o.worst_ratio = 0;
  o.passed = fails == 0;
  o.mismatch_fraction = static_cast<double>(fails) / static_cast<double>(n);
  if (o.nonfinite) o.reason = std::to_string(o.nonfinite) + " NaN/Inf position(s) differ from expected";
  return o;
}

inline std::pair<double, double> tolerance_for(const Json& tol, const std::string& name) {
  const Json* per = tol.get("per_output");
  const Json* own = per ? per->get(name) : nullptr;
  const Json& t = own ? *own : tol;
  const Json* a = t.get("atol");
  const Json* r = t.get("rtol");
  if (!a || !r || a->kind != Json::Number || r->kind != Json::Number) throw std::runtime_error("tolerance needs numeric atol and rtol");
  return {a->number, r->number};
}

// Compare every expected output (in manifest order) with the candidate's, honouring ignore_padded.
inline std::vector<OutputParity> compare(const std::vector<std::pair<std::string, Array>>& expected,
                                         const std::map<std::string, Array>& actual, const Json& tol,
                                         const std::map<std::string, Array>& feeds) {
  std::vector<OutputParity> out;
  const Json* padded = tol.get("ignore_padded");
  for (const auto& [name, exp] : expected) {
    auto [atol, rtol] = tolerance_for(tol, name);
    auto found = actual.find(name);
    if (found == actual.end()) {
      OutputParity o; o.name = name; o.atol = atol; o.rtol = rtol; o.reason = "missing from candidate outputs";
      out.push_back(o);
      continue;
    }
    const Array& act = found->second;
    const Json* rule = padded ? padded->get(name) : nullptr;
    std::vector<bool> skip;
    bool use_skip = false;
    if (rule && rule->get("input") && feeds.count(rule->get("input")->text) && exp.shape == act.shape) {
      const Array& mask = feeds.at(rule->get("input")->text);
      double pad = rule->get("pad") ? rule->get("pad")->number : 1;
      bool leads = mask.shape.size() <= exp.shape.size() && std::equal(mask.shape.begin(), mask.shape.end(), exp.shape.begin());
      if (!leads) {
        OutputParity o; o.name = name; o.atol = atol; o.rtol = rtol;
        o.reason = "padding mask '" + rule->get("input")->text + "' of shape " + shape_text(mask.shape) +
                   " does not lead the output's shape " + shape_text(exp.shape);
        out.push_back(o);
        continue;
      }
      size_t inner = mask.values.empty() ? 1 : exp.values.size() / std::max<size_t>(1, mask.values.size());
      skip.resize(exp.values.size());
      for (size_t i = 0; i < skip.size(); i++) skip[i] = mask.values[i / inner] == pad;
      use_skip = true;
    }
    out.push_back(compare_one(name, exp, act, atol, rtol, use_skip ? &skip : nullptr));
  }
  return out;
}

inline std::vector<std::vector<double>> rows(const Array& a) {
  size_t last = a.shape.empty() ? 1 : static_cast<size_t>(a.shape.back());
  std::vector<std::vector<double>> out;
  for (size_t r = 0; last > 0 && r < a.values.size() / last; r++) out.emplace_back(a.values.begin() + r * last, a.values.begin() + (r + 1) * last);
  return out;
}

inline CheckResult evaluate_check(const Json& check, const std::vector<std::pair<std::string, Array>>& expected,
                                  const std::map<std::string, Array>& actual) {
  CheckResult c;
  c.kind = check.get("kind") ? check.get("kind")->text : "";
  c.output = check.get("output") ? check.get("output")->text : "";
  c.allowed = check.get("threshold") ? check.get("threshold")->number : 1;
  const Array* exp = nullptr;
  for (const auto& [name, a] : expected) if (name == c.output) exp = &a;
  auto act_it = actual.find(c.output);
  if (!exp || act_it == actual.end()) { c.reason = "output missing"; return c; }
  const Array& act = act_it->second;
  if (exp->shape != act.shape) { c.reason = "shape " + shape_text(act.shape) + " != " + shape_text(exp->shape); return c; }
  for (double v : act.values) if (!std::isfinite(v)) { c.reason = "non-finite values"; return c; }
  if (c.kind == "top1") {
    auto e = rows(*exp), a = rows(act);
    size_t agree = 0;
    for (size_t r = 0; r < e.size(); r++) {
      agree += std::max_element(e[r].begin(), e[r].end()) - e[r].begin() == std::max_element(a[r].begin(), a[r].end()) - a[r].begin();
    }
    c.achieved = e.empty() ? 1.0 : static_cast<double>(agree) / static_cast<double>(e.size());
  } else if (c.kind == "cosine") {
    auto e = rows(*exp), a = rows(act);
    double lowest = e.empty() ? 1.0 : INFINITY;
    for (size_t r = 0; r < e.size(); r++) {
      double dot = 0, ne = 0, na = 0;
      for (size_t i = 0; i < e[r].size(); i++) { dot += e[r][i] * a[r][i]; ne += e[r][i] * e[r][i]; na += a[r][i] * a[r][i]; }
      double norms = std::sqrt(ne) * std::sqrt(na);
      double sim = norms > 0 ? dot / norms : (dot == 0 ? 1.0 : 0.0);
      if (ne == 0 && na == 0) sim = 1.0;
      lowest = std::min(lowest, sim);
    }
    c.achieved = lowest;
  } else if (c.kind == "ranking") {
    std::vector<double> e = exp->values, a = act.values;
    const size_t most = 2048;
    if (e.size() > most) {
      // NOTE: numpy's linspace(0, n - 1, 2048).astype(int64): an even spread keeps the pair count bounded.
      std::vector<double> ke, ka;
      double step = static_cast<double>(e.size() - 1) / static_cast<double>(most - 1);
      for (size_t i = 0; i < most; i++) {
        size_t k = i == most - 1 ? e.size() - 1 : static_cast<size_t>(static_cast<double>(i) * step);
        ke.push_back(e[k]); ka.push_back(a[k]);
      }
      e.swap(ke); a.swap(ka);
    }
    auto sign = [](double x) { return std::isnan(x) ? NAN : (x > 0) - (x < 0); };
    size_t ordered = 0, kept = 0;
    for (size_t i = 0; i < e.size(); i++) {
      for (size_t j = 0; j < e.size(); j++) {
        double de = sign(e[i] - e[j]);
        if (de == 0) continue;
        ordered++;
        kept += de == sign(a[i] - a[j]);
      }
    }
    c.achieved = e.size() < 2 || ordered == 0 ? 1.0 : static_cast<double>(kept) / static_cast<double>(ordered);
  } else {
    c.reason = "unknown check kind " + c.kind;
    return c;
  }
  c.passed = c.achieved >= c.allowed;
  return c;
}

inline std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

inline std::string describe(const OutputParity& o) {
  std::string text = o.name + ": " + (o.passed ? "ok" : "FAIL") + " max_abs=" + fmt("%.3g", o.max_abs) +
                     " max_rel=" + fmt("%.3g", o.max_rel) + " mismatch=" + fmt("%.2f", o.mismatch_fraction * 100) +
                     "% (allowed atol=" + fmt("%g", o.atol) + " rtol=" + fmt("%g", o.rtol) + ")";
  if (o.ignored) text += " [" + std::to_string(o.ignored) + " padded element(s) not compared, as declared]";
  return o.reason.empty() ? text : text + "; " + o.reason;
}

}  // namespace tc
