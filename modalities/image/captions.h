// Image-caption pairs from a user's folder: the path a researcher with real data takes. Three
// formats of captions file:
//   * COCO captions JSON: {"images": [{"id": 1, "file_name": "a.jpg"}, ...],
//                          "annotations": [{"image_id": 1, "caption": "..."}, ...]}
//     (one pair per annotation, so an image with five captions gives five pairs);
//   * JSON lines: one object per line with the image path and its caption (or a list of captions):
//     {"path": "img/a.png", "caption": "a red bus"};
//   * TSV: one "path<TAB>caption" per line; a first line "path<TAB>caption" (or image/file_name and
//     caption/text, any case) is a header and skipped.
// Blank lines are skipped; captions are trimmed of surrounding whitespace. Relative image paths are
// resolved against `image_dir` (default: the captions file's folder). The images themselves are not
// opened here: reading them (and skipping unreadable ones) is `prepare`'s job. Malformed input is a
// tessera::Error naming the file and line (for COCO JSON: the line of a syntax error, else the
// element, e.g. annotations[17]).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace tessera::image {

struct CaptionedImage {
  std::string path;  // the image file, resolved
  std::string caption;
  std::string source;  // where the pair came from ("captions.tsv:12", "coco.json annotations[3]")
};

struct CaptionsConfig {
  std::string file;                       // the captions file
  std::string format = "auto";            // auto: by extension (.json coco, .jsonl, .tsv/.txt)
  std::string image_dir;                  // relative image paths are under this ("": the file's folder)
  std::string path_field = "path";        // JSON lines: the field with the image path
  std::string caption_field = "caption";  // JSON lines: the field with the caption (string or list)

  template <class V>
  void fields(V& v) {
    v.required("file", file, "captions file: COCO captions .json, .jsonl or .tsv");
    v.choice("format", format, {"auto", "coco", "jsonl", "tsv"}, "captions file format (auto: by extension)");
    v.optional("image_dir", image_dir, "folder that relative image paths are under (default: the file's folder)");
    v.optional("path_field", path_field, "JSON lines: the field holding the image path");
    v.optional("caption_field", caption_field, "JSON lines: the field holding the caption or list of captions");
  }
};

// The pairs `config` names, in file order; `recipe_dir` resolves a relative `file` (and `image_dir`)
// not found from the working directory.
std::vector<CaptionedImage> read_captions(const CaptionsConfig& config, const std::string& recipe_dir = "");

// The format read_captions uses for `file` under `format` ("auto" decides by extension).
std::string captions_format(const std::filesystem::path& file, const std::string& format = "auto");

std::vector<CaptionedImage> read_coco_captions(const std::filesystem::path& file,
                                               const std::filesystem::path& image_dir);
std::vector<CaptionedImage> read_jsonl_captions(const std::filesystem::path& file,
                                                const std::filesystem::path& image_dir,
                                                const std::string& path_field = "path",
                                                const std::string& caption_field = "caption");
std::vector<CaptionedImage> read_tsv_captions(const std::filesystem::path& file,
                                              const std::filesystem::path& image_dir);

}  // namespace tessera::image
