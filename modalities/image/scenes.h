// Compositional captioned scenes: the embedded default data for text-image work. A deterministic
// generator (from a seed and an index) of small RGB images with 1–4 flat-coloured shapes on a plain
// background, each image with several paraphrased captions that describe every object
// ("a small red circle to the left of a large blue square") and the structured ground truth (objects
// with shape, colour, size, position; counts; pairwise spatial relations) that a GenEval-style
// evaluator checks generated images against.
//
// Drawn without OpenCV (4×4 supersampled coverage per pixel), so it works on every machine. Pixels
// wholly inside an object have exactly its palette colour; edge pixels blend with the background;
// objects never touch (their bounding circles keep a gap of at least 2 px).
//
//   SceneConfig config;                      // 64 px, 1–4 objects, seed 0
//   Scene s = generate_scene(config, 17);    // the same pixels and captions on every machine
//   s.image;                                 // uint8 3×64×64
//   s.captions[0];                           // "a large blue square above a small red circle"
//   scene_ground_truth(s, config);           // JSON for the evaluator
#pragma once

#include <ATen/Tensor.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace tessera::image {

struct SceneConfig {
  int64_t size = 64;        // image side in pixels, 32..128
  int64_t min_objects = 1;  // objects per image: uniform in [min_objects, max_objects], within 1..4
  int64_t max_objects = 4;
  int64_t captions_per_image = 4;  // distinct paraphrases per image (fewer only where a scene has fewer)
  std::vector<std::string> shapes = {"circle", "square", "triangle", "diamond"};
  std::vector<std::string> colors = {"red", "green", "blue", "yellow", "purple", "orange"};
  std::string background = "gray";
  int64_t seed = 0;

  template <class V>
  void fields(V& v) {
    v.optional("size", size, "image side in pixels (32..128)");
    v.optional("min_objects", min_objects, "fewest objects per image (1..4)");
    v.optional("max_objects", max_objects, "most objects per image (1..4)");
    v.optional("captions_per_image", captions_per_image, "paraphrased captions per image (1..16)");
    v.optional("shapes", shapes, "shapes drawn: circle, square, triangle, diamond");
    v.optional("colors", colors, "object colours: red, green, blue, yellow, purple, orange, white, black");
    v.choice("background", background, {"gray", "white", "black"}, "background colour");
    v.optional("seed", seed, "generator seed: (seed, index) fixes an image and its captions");
  }
};

// Errors name the field, the bad value and what is allowed (with the closest known name for typos).
void validate(const SceneConfig& config);

// The shapes, colours (with their RGB values) and backgrounds the generator knows.
const std::vector<std::string>& scene_shape_names();
const std::vector<std::string>& scene_color_names();
std::array<uint8_t, 3> scene_color_rgb(const std::string& name);  // also the backgrounds; error if unknown

// The relation names, each saying where the subject is relative to the object, in image terms
// (up = smaller row).
inline constexpr const char* kLeftOf = "left of";
inline constexpr const char* kRightOf = "right of";
inline constexpr const char* kAbove = "above";
inline constexpr const char* kBelow = "below";
// A relation holds when the centres differ along its axis by more than this fraction of the image side.
inline constexpr double kRelationMargin = 0.05;

// Positions are in pixel units with the image spanning [0, size) on both axes: pixel (col, row)
// covers [col, col + 1) × [row, row + 1), so its centre is (col + 0.5, row + 0.5).
struct SceneObject {
  std::string shape, color, size;  // size: "small" or "large"
  std::array<uint8_t, 3> rgb{};
  double x = 0, y = 0;           // centre (for a triangle, its centroid)
  double radius = 0;             // the shape's scale: circle radius, triangle circumradius, diamond
                                 // half-diagonal, square half-side / 0.8
  std::array<int64_t, 4> box{};  // pixels touched: cols [box[0], box[2]), rows [box[1], box[3])
  std::string phrase() const;    // "small red circle"
};

struct SceneRelation {
  int64_t subject = 0;  // object indices
  std::string relation;
  int64_t object = 0;
};

struct Scene {
  int64_t index = 0;
  at::Tensor image;  // uint8 3×size×size, RGB
  std::vector<SceneObject> objects;
  std::vector<SceneRelation> relations;  // every relation that holds, for every ordered pair
  std::vector<std::string> captions;     // distinct paraphrases, each naming every object
};

// Image `index` of the dataset `config` describes; validates `config`. Deterministic: the same
// (config, index) gives identical pixels, objects and captions on every machine (no std::
// distributions, whose output is implementation-defined).
Scene generate_scene(const SceneConfig& config, int64_t index);

// The relations that hold between objects at these centres (subject's centre minus object's beyond
// kRelationMargin · image_size along the axis), for every ordered pair: shared with evaluators that
// locate objects in generated images.
std::vector<SceneRelation> spatial_relations(const std::vector<std::array<double, 2>>& centres, double image_size);

// The structured ground truth:
//   {"index", "seed", "size", "background",
//    "objects": [{"shape", "color", "size", "rgb": [r,g,b], "center": [x, y], "radius", "box": [x0,y0,x1,y1]}],
//    "counts": {"red circle": 2, ...},        // by colour and shape
//    "relations": [{"subject": 0, "relation": "left of", "object": 1}, ...],
//    "captions": [...]}
nlohmann::json scene_ground_truth(const Scene& scene, const SceneConfig& config);

}  // namespace tessera::image
