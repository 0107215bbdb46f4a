#include "modalities/image/captions.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <map>

#include "core/error.h"

namespace tessera::image {
namespace fs = std::filesystem;

namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string read_text(const fs::path& file) {
  std::error_code ec;
  check(fs::is_regular_file(file, ec), "captions file '", file.string(), "' not found (or not a regular file)");
  std::ifstream in(file, std::ios::binary);
  check(in.good(), "cannot open captions file '", file.string(), "'");
  std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  check(!in.bad(), "error reading captions file '", file.string(), "'");
  if (text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // UTF-8 byte-order mark
  return text;
}

// Calls fn(line_number, line) for every line, without the line break (\n or \r\n).
template <class F>
void for_each_line(const std::string& text, F&& fn) {
  size_t start = 0;
  int64_t number = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    fn(++number, line);
    start = end + 1;
  }
}

std::string resolve(const std::string& image, const fs::path& image_dir) {
  const fs::path p(image);
  return (p.is_absolute() ? p : image_dir / p).lexically_normal().string();
}

std::string json_type(const nlohmann::json& j) { return j.type_name(); }

// "line L, column C" of byte offset `byte` (1-based, as nlohmann reports it) in `text`.
std::string line_column(const std::string& text, size_t byte) {
  byte = std::min(byte, text.size());
  int64_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i + 1 < byte; ++i)
    if (text[i] == '\n') ++line, line_start = i + 1;
  return str("line ", line, ", column ", byte - line_start);
}

// The image id as a map key: COCO uses integers, some exports strings.
std::string id_key(const nlohmann::json& id) {
  return id.is_string() ? "s:" + id.get<std::string>() : "n:" + id.dump();
}

}  // namespace

std::string captions_format(const fs::path& file, const std::string& format) {
  if (format != "auto") {
    check(format == "coco" || format == "jsonl" || format == "tsv",
          "captions format must be auto, coco, jsonl or tsv, got '", format, "'");
    return format;
  }
  const std::string ext = lower(file.extension().string());
  if (ext == ".json") return "coco";
  if (ext == ".jsonl") return "jsonl";
  if (ext == ".tsv" || ext == ".txt") return "tsv";
  fail("cannot tell the format of captions file '", file.string(), "' from its extension '", ext,
       "': name it .json (COCO captions), .jsonl or .tsv, or set format: coco, jsonl or tsv");
}

std::vector<CaptionedImage> read_coco_captions(const fs::path& file, const fs::path& image_dir) {
  const std::string name = file.string();
  const std::string text = read_text(file);
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("captions file '", name, "' is not valid JSON at ", line_column(text, e.byte), ": ", e.what());
  }
  check(root.is_object(), "COCO captions file '", name,
        "' must hold a JSON object with \"images\" and \"annotations\", "
        "found a JSON ",
        json_type(root));
  for (const char* key : {"images", "annotations"})
    check(root.contains(key) && root[key].is_array(), "COCO captions file '", name, "' has no \"", key,
          "\" list (a COCO captions file has \"images\": [{\"id\", \"file_name\"}] and \"annotations\": "
          "[{\"image_id\", \"caption\"}])");

  std::map<std::string, std::string> files;  // image id -> file name
  const auto& images = root["images"];
  for (size_t i = 0; i < images.size(); ++i) {
    const auto& im = images[i];
    const std::string where = str("COCO captions file '", name, "', images[", i, "]");
    check(im.is_object(), where, " is a JSON ", json_type(im), ", expected an object with \"id\" and \"file_name\"");
    check(im.contains("id") && (im["id"].is_number_integer() || im["id"].is_string()), where,
          " has no integer or string \"id\"");
    check(im.contains("file_name") && im["file_name"].is_string() && !trim(im["file_name"].get<std::string>()).empty(),
          where, " (id ", im["id"].dump(), ") has no \"file_name\" string");
    check(files.emplace(id_key(im["id"]), im["file_name"].get<std::string>()).second, where, ": image id ",
          im["id"].dump(), " appears twice in \"images\"");
  }

  std::vector<CaptionedImage> out;
  const auto& annotations = root["annotations"];
  out.reserve(annotations.size());
  for (size_t i = 0; i < annotations.size(); ++i) {
    const auto& a = annotations[i];
    const std::string where = str("COCO captions file '", name, "', annotations[", i, "]");
    check(a.is_object(), where, " is a JSON ", json_type(a), ", expected an object with \"image_id\" and \"caption\"");
    check(a.contains("image_id") && (a["image_id"].is_number_integer() || a["image_id"].is_string()), where,
          " has no integer or string \"image_id\"");
    const auto found = files.find(id_key(a["image_id"]));
    check(found != files.end(), where, ": image_id ", a["image_id"].dump(), " is not in \"images\"");
    check(a.contains("caption") && a["caption"].is_string(), where, " has no \"caption\" string");
    const std::string caption = trim(a["caption"].get<std::string>());
    check(!caption.empty(), where, " has an empty caption");
    out.push_back({resolve(found->second, image_dir), caption, str(name, " annotations[", i, "]")});
  }
  return out;
}

std::vector<CaptionedImage> read_jsonl_captions(const fs::path& file, const fs::path& image_dir,
                                                const std::string& path_field, const std::string& caption_field) {
  const std::string name = file.string();
  const std::string text = read_text(file);
  std::vector<CaptionedImage> out;
  for_each_line(text, [&](int64_t number, const std::string& line) {
    if (trim(line).empty()) return;
    const std::string where = str(name, ":", number);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      fail(where, ": not valid JSON at column ", e.byte, ": ", e.what());
    }
    check(j.is_object(), where, ": expected a JSON object with \"", path_field, "\" and \"", caption_field,
          "\", found a JSON ", json_type(j));
    auto missing = [&](const std::string& field) {
      std::string keys;
      for (auto it = j.begin(); it != j.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
      return str(where, ": no \"", field, "\" field (the line has: ", keys.empty() ? "nothing" : keys,
                 "); set path_field/caption_field to the names your file uses");
    };
    check(j.contains(path_field), missing(path_field));
    check(j.contains(caption_field), missing(caption_field));
    const auto& p = j[path_field];
    check(p.is_string() && !trim(p.get<std::string>()).empty(), where, ": \"", path_field,
          "\" must be a non-empty string, got ", p.dump());
    const std::string path = resolve(trim(p.get<std::string>()), image_dir);
    const auto& c = j[caption_field];
    std::vector<std::string> captions;
    if (c.is_string()) {
      captions.push_back(c.get<std::string>());
    } else {
      check(c.is_array() && !c.empty(), where, ": \"", caption_field,
            "\" must be a string or a non-empty list of strings, got ", json_type(c));
      for (size_t k = 0; k < c.size(); ++k) {
        check(c[k].is_string(), where, ": \"", caption_field, "\"[", k, "] is a JSON ", json_type(c[k]),
              ", not a string");
        captions.push_back(c[k].get<std::string>());
      }
    }
    for (const std::string& raw : captions) {
      const std::string caption = trim(raw);
      check(!caption.empty(), where, ": empty caption");
      out.push_back({path, caption, where});
    }
  });
  return out;
}

std::vector<CaptionedImage> read_tsv_captions(const fs::path& file, const fs::path& image_dir) {
  const std::string name = file.string();
  const std::string text = read_text(file);
  std::vector<CaptionedImage> out;
  bool first = true;
  for_each_line(text, [&](int64_t number, const std::string& line) {
    if (trim(line).empty()) return;
    const std::string where = str(name, ":", number);
    const size_t tabs = static_cast<size_t>(std::count(line.begin(), line.end(), '\t'));
    check(tabs == 1, where, ": expected 2 tab-separated fields (path, caption), found ", tabs + 1,
          tabs == 0 ? " (no tab; are the fields separated by spaces?)" : " (a caption may not contain tabs)");
    const size_t tab = line.find('\t');
    const std::string path = trim(line.substr(0, tab)), caption = trim(line.substr(tab + 1));
    if (first) {
      first = false;
      const std::string p = lower(path), c = lower(caption);
      if ((p == "path" || p == "image" || p == "file_name" || p == "filename" || p == "file") &&
          (c == "caption" || c == "text"))
        return;  // header
    }
    check(!path.empty(), where, ": empty image path");
    check(!caption.empty(), where, ": empty caption for '", path, "'");
    out.push_back({resolve(path, image_dir), caption, where});
  });
  return out;
}

std::vector<CaptionedImage> read_captions(const CaptionsConfig& config, const std::string& recipe_dir) {
  check(!config.file.empty(), "captions: no file given (set file: to a COCO captions .json, .jsonl or .tsv)");
  auto locate = [&](const std::string& given) {
    const fs::path p(given);
    std::error_code ec;
    if (p.is_absolute() || recipe_dir.empty() || fs::exists(p, ec)) return p;
    const fs::path beside = fs::path(recipe_dir) / p;
    return fs::exists(beside, ec) ? beside : p;
  };
  const fs::path file = locate(config.file);
  const fs::path image_dir = config.image_dir.empty() ? file.parent_path() : locate(config.image_dir);
  const std::string format = captions_format(file, config.format);
  if (format == "coco") return read_coco_captions(file, image_dir);
  if (format == "jsonl") return read_jsonl_captions(file, image_dir, config.path_field, config.caption_field);
  return read_tsv_captions(file, image_dir);
}

}  // namespace tessera::image
