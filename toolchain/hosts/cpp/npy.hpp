// A dependency-light .npy reader (versions 1-3, little-endian, C order, no pickles) for the C++ verifier.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

namespace tc {

struct Array {
  std::string dtype;            // numpy's name: float32, int64, bool, ...
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;  // raw little-endian elements
  std::vector<double> values;   // every element as numpy's astype(float64) reads it
};

inline double half_to_double(uint16_t h) {
  double sign = (h & 0x8000) ? -1.0 : 1.0;
  int exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
  if (exp == 0) return sign * frac * std::ldexp(1.0, -24);
  if (exp == 31) return frac ? NAN : sign * INFINITY;
  return sign * (1.0 + frac / 1024.0) * std::ldexp(1.0, exp - 15);
}

inline size_t itemsize(const std::string& dtype) {
  if (dtype == "float64" || dtype == "int64" || dtype == "uint64") return 8;
  if (dtype == "float32" || dtype == "int32" || dtype == "uint32") return 4;
  if (dtype == "float16" || dtype == "int16" || dtype == "uint16") return 2;
  return 1;
}

// Decode `bytes` of `dtype` into doubles (the comparison works in doubles, like numpy's).
inline std::vector<double> to_doubles(const std::string& dtype, const unsigned char* p, size_t count) {
  std::vector<double> out(count);
  for (size_t i = 0; i < count; i++) {
    const unsigned char* q = p + i * itemsize(dtype);
    if (dtype == "float32") { float v; std::memcpy(&v, q, 4); out[i] = v; }
    else if (dtype == "float64") { std::memcpy(&out[i], q, 8); }
    else if (dtype == "float16") { uint16_t v; std::memcpy(&v, q, 2); out[i] = half_to_double(v); }
    else if (dtype == "int64") { int64_t v; std::memcpy(&v, q, 8); out[i] = static_cast<double>(v); }
    else if (dtype == "uint64") { uint64_t v; std::memcpy(&v, q, 8); out[i] = static_cast<double>(v); }
    else if (dtype == "int32") { int32_t v; std::memcpy(&v, q, 4); out[i] = v; }
    else if (dtype == "uint32") { uint32_t v; std::memcpy(&v, q, 4); out[i] = v; }
    else if (dtype == "int16") { int16_t v; std::memcpy(&v, q, 2); out[i] = v; }
    else if (dtype == "uint16") { uint16_t v; std::memcpy(&v, q, 2); out[i] = v; }
    else if (dtype == "int8") { out[i] = static_cast<int8_t>(*q); }
    else out[i] = *q;  // uint8, bool
  }
  return out;
}

inline Array parse_npy(const std::vector<unsigned char>& b, const std::string& name) {
  auto fail = [&](const std::string& why) -> void {
    throw std::runtime_error(name + ": not a readable .npy array: " + why);
  };
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (b.size() < 10 || std::memcmp(b.data(), magic, 6) != 0) fail("bad magic");
  int major = b[6];
  if (major < 1 || major > 3) fail("format version " + std::to_string(major) + " is not supported");
  size_t start = major == 1 ? 10 : 12;
  if (b.size() < start) fail("truncated header");
  size_t header_len = major == 1 ? (b[8] | (b[9] << 8))
                                 : (size_t(b[8]) | (size_t(b[9]) << 8) | (size_t(b[10]) << 16) | (size_t(b[11]) << 24));
  if (start + header_len > b.size()) fail("header runs past the end of the file");
  std::string header(b.begin() + start, b.begin() + start + header_len);
  std::smatch descr, fortran, shape;
  if (!std::regex_search(header, descr, std::regex("'descr'\\s*:\\s*'([^']*)'")) ||
      !std::regex_search(header, fortran, std::regex("'fortran_order'\\s*:\\s*(True|False)")) ||
      !std::regex_search(header, shape, std::regex("'shape'\\s*:\\s*\\(([^)]*)\\)"))) {
    fail("malformed header");
  }
  static const std::vector<std::pair<std::string, std::string>> known = {
      {"<f2", "float16"}, {"<f4", "float32"}, {"<f8", "float64"}, {"|i1", "int8"},  {"<i2", "int16"},
      {"<i4", "int32"},   {"<i8", "int64"},   {"|u1", "uint8"},   {"<u2", "uint16"}, {"<u4", "uint32"},
      {"<u8", "uint64"},  {"|b1", "bool"}};
  Array a;
  for (const auto& [code, dtype] : known) if (descr[1] == code) a.dtype = dtype;
  if (a.dtype.empty()) fail("dtype " + descr[1].str() + " is not supported (object, big-endian and structured arrays are refused)");
  if (fortran[1] == "True") fail("Fortran-order arrays are not supported");
  std::string dims = shape[1];
  std::regex entry("\\s*(\\d+)\\s*,?");
  uint64_t count = 1;
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), entry); it != std::sregex_iterator(); ++it) {
    if ((*it)[1].length() > 15) fail("shape entry too large");
    int64_t d = std::stoll((*it)[1]);
    a.shape.push_back(d);
    count *= static_cast<uint64_t>(d);
    if (count > (uint64_t(1) << 40)) fail("shape claims too many elements");
  }
  size_t offset = start + header_len;
  // NOTE: checked before any allocation, so a header claiming 256 TiB costs nothing.
  if (offset + count * itemsize(a.dtype) != b.size()) {
    fail("header says " + std::to_string(count) + " element(s), the file holds " + std::to_string(b.size() - offset) + " data byte(s)");
  }
  a.bytes.assign(b.begin() + offset, b.end());
  a.values = to_doubles(a.dtype, a.bytes.data(), count);
  return a;
}

}  // namespace tc
