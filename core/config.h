// Typed configuration from YAML with strict key checking.
//
// A config struct lists its fields once, in a template method that every visitor shares:
//
//   struct TrainConfig {
//     int64_t steps = 100;
//     double lr = 3e-4;
//     template <class V> void fields(V& v) {
//       v.required("steps", steps, "optimizer steps");
//       v.optional("lr", lr, "peak learning rate");
//     }
//   };
//
// The same list drives parsing (unknown keys, wrong types and missing required keys are errors that
// name the key path, the closest valid key and the YAML line:column), writing the resolved config
// back to YAML/JSON, and `--help`-style documentation.
#pragma once

#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.h"

namespace tessera::config {

// ---- helpers --------------------------------------------------------------------------------------
size_t edit_distance(const std::string& a, const std::string& b);
// The candidate closest to `key` when it is plausibly a typo of it, else "".
std::string closest_match(const std::string& key, const std::vector<std::string>& candidates);
std::string join_path(const std::string& parent, const std::string& key);
// " (file.yaml:12:3)" for nodes that came from a file, "" for overrides and defaults.
std::string location(const YAML::Node& node, const std::string& file);

// Loads a YAML file; syntax errors become tessera::Error with file:line:column.
YAML::Node load_yaml_file(const std::string& path);
YAML::Node load_yaml_string(const std::string& text, const std::string& name);

// Applies "a.b.c=value" overrides (value parsed as YAML) onto `root`, creating maps as needed.
void apply_override(YAML::Node& root, const std::string& assignment);
void apply_overrides(YAML::Node& root, const std::vector<std::string>& assignments);

// Shortest decimal text that reads back as the same double ("0.05", not "0.050000000000000003").
std::string format_double(double value);

template <class T, class = void>
struct is_config : std::false_type {};

// ---- choices: string fields restricted to a set of values ------------------------------------------
struct Choice {
  std::string* value;
  std::vector<std::string> allowed;
};

// ---- the parsing visitor ----------------------------------------------------------------------------
class Reader {
 public:
  Reader(YAML::Node node, std::string path, std::string file);

  template <class T>
  void required(const char* key, T& value, const char* /*doc*/ = "") {
    field(key, value, true);
  }
  template <class T>
  void optional(const char* key, T& value, const char* /*doc*/ = "") {
    field(key, value, false);
  }
  void choice(const char* key, std::string& value, std::vector<std::string> allowed, const char* doc = "");
  // Raw sub-tree, parsed later by whoever knows its schema (e.g. model config by architecture).
  void raw(const char* key, YAML::Node& value, bool is_required, const char* doc = "");

  // After all fields were visited: every key present in the node must have been consumed.
  void finish() const;

  const std::string& path() const { return path_; }
  const std::string& file() const { return file_; }

 private:
  template <class T>
  void field(const char* key, T& value, bool is_required);
  // The node under `key`, or nullopt when it is absent (error if required).
  std::optional<YAML::Node> take(const char* key, bool is_required);
  [[noreturn]] void type_error(const char* key, const YAML::Node& node, const char* expected) const;

  void convert(const char* key, const YAML::Node& n, bool& out);
  void convert(const char* key, const YAML::Node& n, int64_t& out);
  void convert(const char* key, const YAML::Node& n, int& out);
  void convert(const char* key, const YAML::Node& n, double& out);
  void convert(const char* key, const YAML::Node& n, std::string& out);
  template <class T>
  void convert(const char* key, const YAML::Node& n, std::vector<T>& out);

  YAML::Node node_;
  std::string path_;
  std::string file_;
  std::vector<std::string> known_;
  std::set<std::string> consumed_;
};

// ---- the writing visitors ---------------------------------------------------------------------------
class YamlWriter {
 public:
  YAML::Node node{YAML::NodeType::Map};
  template <class T>
  void required(const char* key, const T& value, const char* = "") { put(key, value); }
  template <class T>
  void optional(const char* key, const T& value, const char* = "") { put(key, value); }
  void choice(const char* key, const std::string& value, const std::vector<std::string>&, const char* = "") {
    put(key, value);
  }
  void raw(const char* key, const YAML::Node& value, bool, const char* = "") {
    if (value && !value.IsNull()) node[key] = YAML::Clone(value);
  }

 private:
  template <class T>
  void put(const char* key, const T& value);
};

// Lists fields with their docs (for `tessera <verb> --help` and the README).
class DocWriter {
 public:
  std::vector<std::string> lines;
  std::string prefix;
  template <class T>
  void required(const char* key, const T& value, const char* doc = "") { add(key, value, doc, true); }
  template <class T>
  void optional(const char* key, const T& value, const char* doc = "") { add(key, value, doc, false); }
  void choice(const char* key, const std::string& value, const std::vector<std::string>& allowed,
              const char* doc = "");
  void raw(const char* key, const YAML::Node&, bool is_required, const char* doc = "") {
    lines.push_back(prefix + key + (is_required ? " (required)" : "") + ": " + doc);
  }

 private:
  template <class T>
  void add(const char* key, const T& value, const char* doc, bool is_required);
};

// ---- entry points -----------------------------------------------------------------------------------
template <class T>
T parse(const YAML::Node& node, const std::string& path = "", const std::string& file = "") {
  T value{};
  Reader reader(node, path, file);
  value.fields(reader);
  reader.finish();
  return value;
}

template <class T>
YAML::Node to_yaml(const T& value) {
  YamlWriter writer;
  const_cast<T&>(value).fields(writer);
  return writer.node;
}

nlohmann::json yaml_to_json(const YAML::Node& node);
YAML::Node json_to_yaml(const nlohmann::json& j);
std::string dump_yaml(const YAML::Node& node);

template <class T>
nlohmann::json to_json(const T& value) {
  return yaml_to_json(to_yaml(value));
}

template <class T>
std::vector<std::string> document(const std::string& prefix = "") {
  T value{};
  DocWriter writer;
  writer.prefix = prefix;
  value.fields(writer);
  return writer.lines;
}

// ================================ implementation details ==========================================

template <class T>
struct is_config<T, std::void_t<decltype(std::declval<T&>().fields(std::declval<Reader&>()))>>
    : std::true_type {};

template <class T>
struct is_config_list : std::false_type {};
template <class T>
struct is_config_list<std::vector<T>> : is_config<T> {};

template <class T>
void Reader::field(const char* key, T& value, bool is_required) {
  known_.push_back(key);
  const std::optional<YAML::Node> found = take(key, is_required);
  if (!found) return;
  const YAML::Node& n = *found;
  if constexpr (is_config<T>::value) {
    if (!n.IsMap()) type_error(key, n, "a mapping of keys");
    Reader sub(n, join_path(path_, key), file_);
    value.fields(sub);
    sub.finish();
  } else {
    convert(key, n, value);
  }
}

template <class T>
void Reader::convert(const char* key, const YAML::Node& n, std::vector<T>& out) {
  if (!n.IsSequence()) type_error(key, n, "a list");
  out.clear();
  for (size_t i = 0; i < n.size(); ++i) {
    T item{};
    const std::string item_key = std::string(key) + "[" + std::to_string(i) + "]";
    if constexpr (is_config<T>::value) {
      // A list of config structs (e.g. a recipe's variants): each item is checked like a section.
      if (!n[i].IsMap()) type_error(item_key.c_str(), n[i], "a mapping of keys");
      Reader sub(n[i], join_path(path_, item_key), file_);
      item.fields(sub);
      sub.finish();
    } else {
      convert(item_key.c_str(), n[i], item);
    }
    out.push_back(std::move(item));
  }
}

template <class T>
void YamlWriter::put(const char* key, const T& value) {
  if constexpr (is_config<T>::value) {
    YamlWriter sub;
    const_cast<T&>(value).fields(sub);
    node[key] = sub.node;
  } else if constexpr (is_config_list<T>::value) {
    YAML::Node seq(YAML::NodeType::Sequence);
    for (const auto& item : value) {
      YamlWriter sub;
      const_cast<typename T::value_type&>(item).fields(sub);
      seq.push_back(sub.node);
    }
    node[key] = seq;
  } else if constexpr (std::is_same_v<T, std::vector<std::string>> || std::is_same_v<T, std::vector<int64_t>> ||
                       std::is_same_v<T, std::vector<double>>) {
    YAML::Node seq(YAML::NodeType::Sequence);
    for (const auto& item : value) seq.push_back(item);
    node[key] = seq;
  } else if constexpr (std::is_floating_point_v<T>) {
    node[key] = format_double(value);
  } else {
    node[key] = value;
  }
}

template <class T>
std::string doc_value(const T& value) {
  if constexpr (std::is_same_v<T, bool>) {
    return value ? "true" : "false";
  } else if constexpr (std::is_arithmetic_v<T>) {
    std::ostringstream out;
    out << value;
    return out.str();
  } else if constexpr (std::is_same_v<T, std::string>) {
    return value.empty() ? "\"\"" : value;
  } else {
    return "[...]";
  }
}

template <class T>
void DocWriter::add(const char* key, const T& value, const char* doc, bool is_required) {
  if constexpr (is_config<T>::value) {
    DocWriter sub;
    sub.prefix = prefix + key + ".";
    const_cast<T&>(value).fields(sub);
    lines.insert(lines.end(), sub.lines.begin(), sub.lines.end());
  } else {
    std::string line = prefix + key;
    line += is_required ? " (required)" : " = " + doc_value(value);
    if (doc && *doc) line += std::string(": ") + doc;
    lines.push_back(line);
  }
}

}  // namespace tessera::config
