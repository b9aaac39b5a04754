// C++ verifier for TorchScript artifacts (the PyTorch 1.0 production path): the package's manifest,
// exact file set and sha256 of every file, then every golden sample replayed on torchscript/model.pt
// and torchscript_trace/model.pt with torch::jit::load, under the parity rule of parity.hpp.
//
//   toolchain_verify PACKAGE [--json OUT] [--trust] [--threads N]
//   toolchain_verify PACKAGE --bench FEEDS --model REL [--runs N] [--threads N] [--json OUT]
//
// Loading TorchScript runs code: without --trust (given by the Python driver only for a package this
// machine exported, or on the user's --trust) those artifacts are refused. Exit 0 when verified, 1 on
// any failure, 2 when it cannot run.

#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/version.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <set>

#include "json.hpp"
#include "npy.hpp"
#include "parity.hpp"
#include "sha256.hpp"

namespace fs = std::filesystem;
using tc::Array;
using tc::Json;

namespace {

const std::string kManifest = "manifest.json";

struct Args {
  fs::path package, json, bench;
  std::string model;
  bool trust = false;
  int threads = 1, runs = 20;
};

std::vector<unsigned char> read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error(p.string() + ": cannot be read");
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), {});
}

bool safe_rel(const std::string& rel) {
  if (rel.empty() || rel.find('\\') != std::string::npos || rel[0] == '/') return false;
  size_t start = 0;
  while (true) {
    size_t end = rel.find('/', start);
    std::string part = rel.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (end == std::string::npos) return true;
    start = end + 1;
  }
}

struct Problem { std::string file, message; };

// toolchain.package.format.check_integrity: every listed file present with its size and sha256, nothing else.
std::vector<Problem> check_integrity(const fs::path& root, Json& manifest) {
  std::vector<Problem> problems;
  try {
    std::vector<unsigned char> bytes = read_file(root / kManifest);
    manifest = tc::JsonParser(std::string(bytes.begin(), bytes.end())).parse();
  } catch (const std::exception& e) {
    return {{kManifest, e.what()}};
  }
  const Json* version = manifest.get("schema_version");
  const Json* files = manifest.get("files");
  if (manifest.kind != Json::Object) return {{kManifest, "must hold a JSON object"}};
  if (!version || !version->is_int() || version->number != 1) return {{kManifest, "schema_version is not supported (this verifier reads 1)"}};
  if (!files || files->kind != Json::Array) return {{kManifest, "field 'files' must be a list"}};
  std::map<std::string, const Json*> listed;
  for (size_t i = 0; i < files->items.size(); i++) {
    const Json& entry = files->items[i];
    std::string where = kManifest + " files[" + std::to_string(i) + "]";
    const Json* path = entry.get("path");
    const Json* size = entry.get("size");
    const Json* sha = entry.get("sha256");
    if (entry.kind != Json::Object || !path || path->kind != Json::String) {
      problems.push_back({where, "entry must be an object with path, size and sha256"});
    } else if (!safe_rel(path->text)) {
      problems.push_back({where, "path must be relative, normalised and stay inside the package"});
    } else if (listed.count(path->text) || path->text == kManifest) {
      problems.push_back({path->text, "listed twice (or the manifest lists itself)"});
    } else if (!size || !size->is_int() || !sha || sha->kind != Json::String || sha->text.size() != 64 ||
               sha->text.find_first_not_of("0123456789abcdef") != std::string::npos) {
      problems.push_back({path->text, where + " needs an integer size and a 64-hex sha256"});
    } else {
      listed[path->text] = &entry;
    }
  }
  std::set<std::string> present;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    std::string rel = fs::relative(it->path(), root).generic_string();
    if (it->is_symlink()) problems.push_back({rel, "is a symbolic link; packages hold regular files only"});
    else if (it->is_regular_file()) { if (rel != kManifest) present.insert(rel); }
    else if (!it->is_directory()) problems.push_back({rel, "is not a regular file; packages hold regular files only"});
  }
  for (const auto& rel : present) {
    if (!listed.count(rel)) problems.push_back({rel, "is not listed in the manifest (unexpected file)"});
  }
  for (const auto& [rel, entry] : listed) {
    if (!present.count(rel)) { problems.push_back({rel, "is listed in the manifest but missing"}); continue; }
    std::vector<unsigned char> bytes = read_file(root / rel);
    if (static_cast<double>(bytes.size()) != entry->get("size")->number) {
      problems.push_back({rel, "size " + std::to_string(bytes.size()) + " != recorded " + tc::number(entry->get("size")->number)});
    } else if (tc::sha256_hex(bytes) != entry->get("sha256")->text) {
      problems.push_back({rel, "sha256 does not match the manifest (file changed or corrupted)"});
    }
  }
  return problems;
}

const std::string& listed_file(const Json& manifest, const std::string& rel) {
  for (const Json& e : manifest.get("files")->items) if (e.get("path") && e.get("path")->text == rel) return rel;
  throw std::runtime_error(kManifest + ": refers to '" + rel + "', which its file list does not hold");
}

struct Sample {
  std::string name;
  std::map<std::string, Array> inputs;
  std::vector<std::pair<std::string, Array>> expected;
};

torch::ScalarType scalar_type(const std::string& dtype) {
  static const std::map<std::string, torch::ScalarType> types = {
      {"float32", torch::kFloat}, {"float64", torch::kDouble}, {"float16", torch::kHalf}, {"int64", torch::kLong},
      {"int32", torch::kInt},     {"int16", torch::kShort},    {"int8", torch::kChar},    {"uint8", torch::kByte},
      {"bool", torch::kBool}};
  auto it = types.find(dtype);
  if (it == types.end()) throw std::runtime_error("dtype " + dtype + " has no torch tensor type here");
  return it->second;
}

std::string dtype_name(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return "float32";
    case torch::kDouble: return "float64";
    case torch::kHalf: return "float16";
    case torch::kLong: return "int64";
    case torch::kInt: return "int32";
    case torch::kShort: return "int16";
    case torch::kChar: return "int8";
    case torch::kByte: return "uint8";
    case torch::kBool: return "bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

torch::Tensor to_tensor(const Array& a) {
  std::vector<unsigned char> bytes = a.bytes;
  return torch::from_blob(bytes.data(), a.shape, torch::TensorOptions().dtype(scalar_type(a.dtype))).clone();
}

Array from_tensor(const torch::Tensor& tensor) {
  torch::Tensor t = tensor.detach().to(torch::kCPU).contiguous();
  Array a;
  a.dtype = dtype_name(t.scalar_type());
  a.shape.assign(t.sizes().begin(), t.sizes().end());
  torch::Tensor d = t.to(torch::kDouble).contiguous();
  a.values.assign(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
  return a;
}

// Run positionally in signature order; outputs by the signature's names (runtimes.eager.flatten_outputs).
std::map<std::string, Array> run(torch::jit::Module& module, const Json& signature, const std::map<std::string, Array>& feeds) {
  std::vector<torch::jit::IValue> args;
  for (const Json& input : signature.get("inputs")->items) {
    const std::string& name = input.get("name")->text;
    if (!feeds.count(name)) throw std::runtime_error("sample has no input '" + name + "'");
    args.emplace_back(to_tensor(feeds.at(name)));
  }
  torch::NoGradGuard no_grad;
  torch::jit::IValue result = module.forward(args);
  std::vector<torch::jit::IValue> values;
  if (result.isTuple()) for (const auto& v : result.toTupleRef().elements()) values.push_back(v);
  else if (result.isList()) for (const auto& v : result.toListRef()) values.push_back(v);
  else if (result.isGenericDict()) for (const auto& kv : result.toGenericDict()) values.push_back(kv.value());
  else values.push_back(result);
  const auto& names = signature.get("outputs")->items;
  if (values.size() != names.size()) {
    throw std::runtime_error("model returns " + std::to_string(values.size()) + " output(s), the signature declares " + std::to_string(names.size()));
  }
  std::map<std::string, Array> out;
  for (size_t i = 0; i < values.size(); i++) {
    if (!values[i].isTensor()) throw std::runtime_error("output '" + names[i].get("name")->text + "' is not a tensor");
    out[names[i].get("name")->text] = from_tensor(values[i].toTensor());
  }
  return out;
}

std::string output_json(const tc::OutputParity& o) {
  return "{\"name\":" + tc::quote(o.name) + ",\"passed\":" + (o.passed ? "true" : "false") + ",\"atol\":" + tc::number(o.atol) +
         ",\"rtol\":" + tc::number(o.rtol) + ",\"max_abs\":" + tc::number(o.max_abs) + ",\"max_rel\":" + tc::number(o.max_rel) +
         ",\"mismatch_fraction\":" + tc::number(o.mismatch_fraction) + ",\"worst_ratio\":" + tc::number(o.worst_ratio) +
         ",\"nonfinite_mismatches\":" + std::to_string(o.nonfinite) + ",\"ignored\":" + std::to_string(o.ignored) +
         ",\"reason\":" + tc::quote(o.reason) + "}";
}

std::string check_json(const tc::CheckResult& c) {
  return "{\"kind\":" + tc::quote(c.kind) + ",\"output\":" + tc::quote(c.output) + ",\"achieved\":" + tc::number(c.achieved) +
         ",\"allowed\":" + tc::number(c.allowed) + ",\"passed\":" + (c.passed ? "true" : "false") + ",\"reason\":" + tc::quote(c.reason) + "}";
}

std::string list_json(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); i++) out += (i ? "," : "") + tc::quote(items[i]);
  return out + "]";
}

int verify(const Args& args) {
  Json manifest;
  std::vector<Problem> problems = check_integrity(args.package, manifest);
  std::vector<std::string> failures, skipped, refused, artifacts_json, summary;
  size_t replayed = 0;
  if (problems.empty()) {
    try {
      const Json* tolerance = manifest.get("tolerance");
      const Json* artifacts = manifest.get("artifacts");
      const Json* samples_json = manifest.get("samples");
      const Json* signature = manifest.get("signature");
      if (!tolerance || tolerance->kind != Json::Object) throw std::runtime_error(kManifest + ": field 'tolerance' must be a dict");
      if (!artifacts || artifacts->kind != Json::Array) throw std::runtime_error(kManifest + ": field 'artifacts' must be a list");
      if (!samples_json || samples_json->kind != Json::Array) throw std::runtime_error(kManifest + ": field 'samples' must be a list");
      if (!signature || !signature->get("inputs") || !signature->get("outputs")) throw std::runtime_error(kManifest + ": field 'signature' needs inputs and outputs");
      std::vector<Sample> samples;
      for (const Json& s : samples_json->items) {
        Sample sample{s.get("name")->text, {}, {}};
        for (const auto& [key, rel] : s.get("inputs")->fields) sample.inputs[key] = tc::parse_npy(read_file(args.package / listed_file(manifest, rel.text)), rel.text);
        for (const auto& [key, rel] : s.get("expected")->fields) sample.expected.emplace_back(key, tc::parse_npy(read_file(args.package / listed_file(manifest, rel.text)), rel.text));
        samples.push_back(std::move(sample));
      }
      for (const Json& entry : artifacts->items) {
        const std::string& path = listed_file(manifest, entry.get("path")->text);
        if (!entry.get("format") || entry.get("format")->text != "torchscript") { skipped.push_back(path); continue; }
        if (!args.trust) { refused.push_back(path); continue; }
        const Json& tol = entry.get("tolerance") ? *entry.get("tolerance") : *tolerance;
        std::string item = "{\"path\":" + tc::quote(path) + ",\"format\":\"torchscript\",\"samples\":[";
        torch::jit::Module module;
        try {
          module = torch::jit::load((args.package / path).string(), torch::kCPU);
          module.eval();
        } catch (const std::exception& e) {
          std::string why = std::string(e.what()).substr(0, std::string(e.what()).find('\n'));
          failures.push_back(path + ": could not load: " + why);
          artifacts_json.push_back(item + "],\"error\":" + tc::quote("could not load: " + why) + "}");
          continue;
        }
        replayed++;
        size_t passed_sets = 0;
        double worst = 0;
        for (size_t k = 0; k < samples.size(); k++) {
          const Sample& sample = samples[k];
          std::string sj = "{\"sample\":" + tc::quote(sample.name);
          std::map<std::string, Array> actual;
          try {
            actual = run(module, *signature, sample.inputs);
          } catch (const std::exception& e) {
            std::string why = std::string(e.what()).substr(0, std::string(e.what()).find('\n'));
            failures.push_back(path + ": sample '" + sample.name + "': could not run: " + why);
            item += (k ? "," : "") + sj + ",\"passed\":false,\"error\":" + tc::quote(why) + ",\"outputs\":{},\"checks\":[]}";
            continue;
          }
          auto outputs = tc::compare(sample.expected, actual, tol, sample.inputs);
          std::vector<tc::CheckResult> checks;
          if (const Json* cs = entry.get("checks")) for (const Json& c : cs->items) checks.push_back(tc::evaluate_check(c, sample.expected, actual));
          bool ok = true;
          std::string oj;
          for (const auto& o : outputs) {
            ok = ok && o.passed;
            worst = std::max(worst, o.worst_ratio);
            oj += (oj.empty() ? "" : ",") + tc::quote(o.name) + ":" + output_json(o);
            if (!o.passed) failures.push_back(path + ": output '" + o.name + "' on sample '" + sample.name + "': " + tc::describe(o));
          }
          std::string cj;
          for (const auto& c : checks) {
            ok = ok && c.passed;
            cj += (cj.empty() ? "" : ",") + check_json(c);
            if (!c.passed) failures.push_back(path + ": check on sample '" + sample.name + "': " + c.kind + "(" + c.output + "): FAIL " + tc::fmt("%.4g", c.achieved) + (c.reason.empty() ? "" : "; " + c.reason));
          }
          passed_sets += ok;
          item += (k ? "," : "") + sj + ",\"passed\":" + (ok ? "true" : "false") + ",\"error\":\"\",\"outputs\":{" + oj + "},\"checks\":[" + cj + "]}";
        }
        artifacts_json.push_back(item + "]}");
        summary.push_back(path + " on libtorch " + TORCH_VERSION + ": " + std::to_string(passed_sets) + "/" + std::to_string(samples.size()) +
                          " sample sets passed (worst error at " + tc::fmt("%.3g", worst) + "x of the allowed)");
      }
    } catch (const std::exception& e) {
      problems.push_back({kManifest, e.what()});
    }
  }
  std::vector<std::string> problem_json;
  for (const auto& p : problems) {
    failures.insert(failures.begin(), p.file + ": " + p.message);
    problem_json.push_back("{\"file\":" + tc::quote(p.file) + ",\"message\":" + tc::quote(p.message) + "}");
  }
  if (problems.empty() && replayed == 0 && artifacts_json.empty()) {
    failures.push_back("no TorchScript artifact was replayed (skipped: " + std::to_string(skipped.size()) + ", refused: " + std::to_string(refused.size()) + ")");
  }
  bool passed = failures.empty();
  if (!args.json.empty()) {
    std::ofstream out(args.json);
    out << "{\"host\":\"cpp\",\"runtime\":" << tc::quote(std::string("libtorch ") + TORCH_VERSION) << ",\"passed\":" << (passed ? "true" : "false")
        << ",\"problems\":[";
    for (size_t i = 0; i < problem_json.size(); i++) out << (i ? "," : "") << problem_json[i];
    out << "],\"artifacts\":[";
    for (size_t i = 0; i < artifacts_json.size(); i++) out << (i ? "," : "") << artifacts_json[i];
    out << "],\"skipped\":" << list_json(skipped) << ",\"refused\":" << list_json(refused) << ",\"failures\":" << list_json(failures) << "}\n";
  }
  for (const auto& line : summary) std::cout << line << "\n";
  for (const auto& p : skipped) std::cout << p << ": skipped, not a TorchScript artifact\n";
  for (const auto& p : refused) std::cout << p << ": refused: loading it runs code; pass --trust if you trust where it came from\n";
  for (const auto& line : failures) std::cerr << "FAIL " << line << "\n";
  std::cout << (passed ? "verified on libtorch: " : "not verified on libtorch: ") << args.package.string() << std::endl;
  return passed ? 0 : 1;
}

int bench(const Args& args) {
  if (!args.trust) throw std::runtime_error("--bench loads TorchScript, which runs code: pass --trust for a package you exported");
  Json manifest;
  std::vector<Problem> problems = check_integrity(args.package, manifest);
  if (!problems.empty()) throw std::runtime_error(problems[0].file + ": " + problems[0].message);
  torch::jit::Module module = torch::jit::load((args.package / listed_file(manifest, args.model)).string(), torch::kCPU);
  module.eval();
  std::map<std::string, Array> feeds;
  for (const auto& entry : fs::directory_iterator(args.bench)) {
    if (entry.path().extension() == ".npy") feeds[entry.path().stem().string()] = tc::parse_npy(read_file(entry.path()), entry.path().filename().string());
  }
  const Json& signature = *manifest.get("signature");
  for (int i = 0; i < 3; i++) run(module, signature, feeds);
  std::vector<double> times;
  for (int i = 0; i < args.runs; i++) {
    auto start = std::chrono::steady_clock::now();
    run(module, signature, feeds);
    times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  double median = times[times.size() / 2];
  if (!args.json.empty()) {
    std::ofstream(args.json) << "{\"host\":\"cpp\",\"runtime\":" << tc::quote(std::string("libtorch ") + TORCH_VERSION) << ",\"model\":" << tc::quote(args.model)
                             << ",\"runs\":" << args.runs << ",\"threads\":" << args.threads << ",\"median_ms\":" << tc::number(median) << "}\n";
  }
  std::cout << args.model << ": median " << median << " ms over " << args.runs << " runs" << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    for (int i = 1; i < argc; i++) {
      std::string key = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error("option " + key + " needs a value");
        return argv[++i];
      };
      if (key == "--json") args.json = value();
      else if (key == "--trust") args.trust = true;
      else if (key == "--threads") args.threads = std::stoi(value());
      else if (key == "--bench") args.bench = value();
      else if (key == "--model") args.model = value();
      else if (key == "--runs") args.runs = std::max(1, std::stoi(value()));
      else if (key.rfind("--", 0) == 0) throw std::runtime_error("unknown option " + key);
      else args.package = key;
    }
    if (args.package.empty()) throw std::runtime_error("usage: toolchain_verify PACKAGE [--json OUT] [--trust] [--threads N]");
    at::set_num_threads(std::max(1, args.threads));
    return args.bench.empty() ? verify(args) : bench(args);
  } catch (const std::exception& e) {
    std::cerr << "error: " << std::string(e.what()).substr(0, std::string(e.what()).find('\n')) << std::endl;
    return 2;
  }
}
