// A small JSON reader and writer for the C++ verifier: objects keep their key order (as Python's
// json does), depth and size are bounded, and any malformed input throws std::runtime_error.
#pragma once

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace tc {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0;
  std::string text;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> fields;

  const Json* get(const std::string& key) const {
    for (const auto& [k, v] : fields) if (k == key) return &v;
    return nullptr;
  }
  bool is_int() const { return kind == Number && std::floor(number) == number && std::isfinite(number); }
};

class JsonParser {
 public:
  explicit JsonParser(const std::string& s) : s_(s) {}
  Json parse() {
    Json value = parse_value(0);
    skip();
    if (pos_ != s_.size()) fail("trailing characters");
    return value;
  }

 private:
  const std::string& s_;
  size_t pos_ = 0;
  [[noreturn]] void fail(const std::string& why) {
    throw std::runtime_error("not valid JSON: " + why + " at offset " + std::to_string(pos_));
  }
  void skip() { while (pos_ < s_.size() && std::string(" \t\r\n").find(s_[pos_]) != std::string::npos) pos_++; }
  bool eat(const char* word) {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(pos_, n, word) != 0) return false;
    pos_ += n;
    return true;
  }
  Json parse_value(int depth) {
    if (depth > 64) fail("nested deeper than 64 levels");
    skip();
    if (pos_ >= s_.size()) fail("unexpected end");
    Json v;
    char c = s_[pos_];
    if (c == '{') {
      v.kind = Json::Object;
      pos_++;
      skip();
      if (pos_ < s_.size() && s_[pos_] == '}') { pos_++; return v; }
      while (true) {
        skip();
        if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a key");
        std::string key = parse_string();
        for (const auto& f : v.fields) if (f.first == key) fail("duplicate key '" + key + "'");
        skip();
        if (pos_ >= s_.size() || s_[pos_++] != ':') fail("expected ':'");
        v.fields.emplace_back(key, parse_value(depth + 1));
        skip();
        if (pos_ < s_.size() && s_[pos_] == ',') { pos_++; continue; }
        if (pos_ < s_.size() && s_[pos_] == '}') { pos_++; return v; }
        fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Json::Array;
      pos_++;
      skip();
      if (pos_ < s_.size() && s_[pos_] == ']') { pos_++; return v; }
      while (true) {
        v.items.push_back(parse_value(depth + 1));
        skip();
        if (pos_ < s_.size() && s_[pos_] == ',') { pos_++; continue; }
        if (pos_ < s_.size() && s_[pos_] == ']') { pos_++; return v; }
        fail("expected ',' or ']'");
      }
    }
    if (c == '"') { v.kind = Json::String; v.text = parse_string(); return v; }
    if (eat("true")) { v.kind = Json::Bool; v.boolean = true; return v; }
    if (eat("false")) { v.kind = Json::Bool; return v; }
    if (eat("null")) return v;
    size_t start = pos_;
    while (pos_ < s_.size() && std::string("+-0123456789.eE").find(s_[pos_]) != std::string::npos) pos_++;
    if (start == pos_ || pos_ - start > 64) fail("bad value");
    v.kind = Json::Number;
    v.number = std::strtod(s_.substr(start, pos_ - start).c_str(), nullptr);
    return v;
  }
  std::string parse_string() {
    pos_++;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') { out += c; continue; }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          if (pos_ + 4 > s_.size()) fail("short \\u escape");
          unsigned code = std::stoul(s_.substr(pos_, 4), nullptr, 16);
          pos_ += 4;
          if (code >= 0xD800 && code <= 0xDBFF && s_.compare(pos_, 2, "\\u") == 0) {
            unsigned low = std::stoul(s_.substr(pos_ + 2, 4), nullptr, 16);
            pos_ += 6;
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          }
          if (code < 0x80) out += static_cast<char>(code);
          else if (code < 0x800) { out += static_cast<char>(0xC0 | (code >> 6)); out += static_cast<char>(0x80 | (code & 0x3F)); }
          else if (code < 0x10000) {
            out += static_cast<char>(0xE0 | (code >> 12));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
          } else {
            out += static_cast<char>(0xF0 | (code >> 18));
            out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (code & 0x3F));
          }
          break;
        }
        default: fail("bad escape");
      }
    }
  }
};

inline std::string quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') { out += '\\'; out += static_cast<char>(c); }
    else if (c < 0x20) { char buf[8]; std::snprintf(buf, sizeof buf, "\\u%04x", c); out += buf; }
    else out += static_cast<char>(c);
  }
  return out + "\"";
}

// NOTE: JSON has no Infinity or NaN; they are written as the strings the Python driver parses.
inline std::string number(double v) {
  if (std::isnan(v)) return "\"nan\"";
  if (std::isinf(v)) return v > 0 ? "\"inf\"" : "\"-inf\"";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace tc
