#include "core/config.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace tessera::config {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t substitution = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, substitution});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string closest_match(const std::string& key, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::string::npos;
  for (const auto& c : candidates) {
    const size_t d = edit_distance(key, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  // A typo changes a few characters; beyond that a suggestion misleads more than it helps.
  const size_t limit = std::max<size_t>(2, key.size() / 3);
  return best_distance <= limit ? best : std::string();
}

std::string format_double(double value) {
  char buf[40];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

std::string join_path(const std::string& parent, const std::string& key) {
  return parent.empty() ? key : parent + "." + key;
}

std::string location(const YAML::Node& node, const std::string& file) {
  if (file.empty() || !node) return "";
  const YAML::Mark mark = node.Mark();
  if (mark.is_null()) return "";
  return str(" (", file, ":", mark.line + 1, ":", mark.column + 1, ")");
}

YAML::Node load_yaml_string(const std::string& text, const std::string& name) {
  try {
    return YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    fail(name, ":", e.mark.line + 1, ":", e.mark.column + 1, ": YAML syntax error: ", e.msg);
  }
}

YAML::Node load_yaml_file(const std::string& path) {
  std::ifstream in(path);
  check(static_cast<bool>(in), "cannot open config file '", path, "': no such file or not readable");
  std::stringstream buffer;
  buffer << in.rdbuf();
  YAML::Node node = load_yaml_string(buffer.str(), path);
  check(node.IsMap() || node.IsNull(), path, ": a recipe must be a mapping of keys at the top level");
  if (node.IsNull()) node = YAML::Node(YAML::NodeType::Map);
  return node;
}

void apply_override(YAML::Node& root, const std::string& assignment) {
  const auto eq = assignment.find('=');
  check(eq != std::string::npos && eq > 0, "override '", assignment,
        "' must look like key.sub=value (e.g. train.lr=1e-3)");
  const std::string key = assignment.substr(0, eq);
  const std::string text = assignment.substr(eq + 1);
  YAML::Node value = load_yaml_string(text.empty() ? "\"\"" : text, "override '" + assignment + "'");

  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) {
    check(!part.empty(), "override '", assignment, "': empty key component in '", key, "'");
    parts.push_back(part);
  }
  // yaml-cpp nodes have reference semantics: walking with copies of handles edits `root` in place.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    check(next.IsMap(), "override '", assignment, "': '", parts[i], "' is not a section of keys");
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
}

void apply_overrides(YAML::Node& root, const std::vector<std::string>& assignments) {
  for (const auto& a : assignments) apply_override(root, a);
}

// ---- Reader -----------------------------------------------------------------------------------------

Reader::Reader(YAML::Node node, std::string path, std::string file)
    : node_(std::move(node)), path_(std::move(path)), file_(std::move(file)) {
  if (!node_ || node_.IsNull()) node_ = YAML::Node(YAML::NodeType::Map);
  if (!node_.IsMap()) fail("config '", path_.empty() ? "<root>" : path_, "' must be a mapping of keys",
                           location(node_, file_));
}

std::optional<YAML::Node> Reader::take(const char* key, bool is_required) {
  consumed_.insert(key);
  const YAML::Node n = node_[key];
  if (!n.IsDefined() || n.IsNull()) {
    check(!is_required, "missing required key '", join_path(path_, key), "'", location(node_, file_));
    return std::nullopt;
  }
  return n;
}

void Reader::choice(const char* key, std::string& value, std::vector<std::string> allowed, const char*) {
  known_.push_back(key);
  const std::optional<YAML::Node> found = take(key, false);
  if (!found) return;
  const YAML::Node& n = *found;
  convert(key, n, value);
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    const std::string hint = closest_match(value, allowed);
    fail("invalid value '", value, "' for '", join_path(path_, key), "'", location(n, file_),
         ": expected one of ", list, hint.empty() ? "" : " (did you mean '" + hint + "'?)");
  }
}

void Reader::raw(const char* key, YAML::Node& value, bool is_required, const char*) {
  known_.push_back(key);
  const std::optional<YAML::Node> found = take(key, is_required);
  if (found) value = *found;
}

void Reader::finish() const {
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    const std::string key = it->first.as<std::string>();
    if (consumed_.count(key)) continue;
    const std::string hint = closest_match(key, known_);
    std::string valid;
    for (const auto& k : known_) valid += (valid.empty() ? "" : ", ") + k;
    fail("unknown key '", join_path(path_, key), "'", location(it->first, file_),
         hint.empty() ? "" : "; did you mean '" + join_path(path_, hint) + "'?",
         " (valid keys here: ", valid, ")");
  }
}

void Reader::type_error(const char* key, const YAML::Node& node, const char* expected) const {
  std::string got;
  if (node.IsScalar()) got = "'" + node.Scalar() + "'";
  else if (node.IsSequence()) got = "a list";
  else if (node.IsMap()) got = "a mapping";
  else got = "nothing";
  fail("'", join_path(path_, key), "' must be ", expected, ", got ", got, location(node, file_));
}

void Reader::convert(const char* key, const YAML::Node& n, bool& out) {
  if (!n.IsScalar()) type_error(key, n, "true or false");
  const std::string s = n.Scalar();
  if (s == "true" || s == "True" || s == "yes" || s == "on") out = true;
  else if (s == "false" || s == "False" || s == "no" || s == "off") out = false;
  else type_error(key, n, "true or false");
}

void Reader::convert(const char* key, const YAML::Node& n, int64_t& out) {
  if (!n.IsScalar()) type_error(key, n, "an integer");
  const std::string s = n.Scalar();
  try {
    size_t used = 0;
    const long long v = std::stoll(s, &used, 0);
    if (used == s.size()) {
      out = v;
      return;
    }
    // Accept integral floats such as 1e6 or 2.0, which YAML users write for large counts.
    const double d = std::stod(s, &used);
    if (used == s.size() && std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.0e18) {
      out = static_cast<int64_t>(d);
      return;
    }
  } catch (const std::exception&) {
  }
  type_error(key, n, "an integer");
}

void Reader::convert(const char* key, const YAML::Node& n, int& out) {
  int64_t v = 0;
  convert(key, n, v);
  out = static_cast<int>(v);
}

void Reader::convert(const char* key, const YAML::Node& n, double& out) {
  if (!n.IsScalar()) type_error(key, n, "a number");
  const std::string s = n.Scalar();
  try {
    size_t used = 0;
    const double v = std::stod(s, &used);
    if (used == s.size()) {
      out = v;
      return;
    }
  } catch (const std::exception&) {
  }
  type_error(key, n, "a number");
}

void Reader::convert(const char* key, const YAML::Node& n, std::string& out) {
  if (!n.IsScalar()) type_error(key, n, "a string");
  out = n.Scalar();
}

// ---- DocWriter --------------------------------------------------------------------------------------

void DocWriter::choice(const char* key, const std::string& value, const std::vector<std::string>& allowed,
                       const char* doc) {
  std::string list;
  for (const auto& a : allowed) list += (list.empty() ? "" : "|") + a;
  std::string line = prefix + key + " = " + value + " {" + list + "}";
  if (doc && *doc) line += std::string(": ") + doc;
  lines.push_back(line);
}

// ---- YAML <-> JSON ----------------------------------------------------------------------------------

namespace {
nlohmann::json scalar_to_json(const std::string& s, const YAML::Node& node) {
  // Quoted scalars in a parsed file have tag "!"; keep them strings.
  if (node.Tag() == "!") return s;
  if (s == "true" || s == "false") return s == "true";
  try {
    size_t used = 0;
    const long long v = std::stoll(s, &used, 10);
    if (used == s.size()) return v;
  } catch (const std::exception&) {
  }
  try {
    size_t used = 0;
    const double d = std::stod(s, &used);
    if (used == s.size()) return d;
  } catch (const std::exception&) {
  }
  return s;
}
}  // namespace

nlohmann::json yaml_to_json(const YAML::Node& node) {
  if (!node || node.IsNull()) return nullptr;
  if (node.IsScalar()) return scalar_to_json(node.Scalar(), node);
  if (node.IsSequence()) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& item : node) out.push_back(yaml_to_json(item));
    return out;
  }
  nlohmann::json out = nlohmann::json::object();
  for (auto it = node.begin(); it != node.end(); ++it) out[it->first.as<std::string>()] = yaml_to_json(it->second);
  return out;
}

YAML::Node json_to_yaml(const nlohmann::json& j) {
  if (j.is_null()) return YAML::Node();
  if (j.is_object()) {
    YAML::Node out(YAML::NodeType::Map);
    for (auto it = j.begin(); it != j.end(); ++it) out[it.key()] = json_to_yaml(it.value());
    return out;
  }
  if (j.is_array()) {
    YAML::Node out(YAML::NodeType::Sequence);
    for (const auto& item : j) out.push_back(json_to_yaml(item));
    return out;
  }
  if (j.is_boolean()) return YAML::Node(j.get<bool>());
  if (j.is_number_integer()) return YAML::Node(j.get<int64_t>());
  if (j.is_number_float()) return YAML::Node(j.get<double>());
  return YAML::Node(j.get<std::string>());
}

std::string dump_yaml(const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  return std::string(out.c_str()) + "\n";
}

}  // namespace tessera::config
