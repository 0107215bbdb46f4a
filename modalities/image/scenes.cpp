#include "modalities/image/scenes.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "core/config.h"
#include "core/error.h"

namespace tessera::image {

namespace {

struct NamedColor {
  const char* name;
  std::array<uint8_t, 3> rgb;
};

// Object colours, far apart in RGB so that an evaluator can classify a pixel by its nearest entry.
const NamedColor kObjectColors[] = {
    {"red", {220, 30, 30}},     {"green", {30, 160, 50}},   {"blue", {30, 70, 220}},    {"yellow", {245, 215, 30}},
    {"purple", {140, 50, 180}}, {"orange", {250, 130, 20}}, {"white", {245, 245, 245}}, {"black", {20, 20, 20}},
};
const NamedColor kBackgrounds[] = {{"gray", {128, 128, 128}}, {"white", {255, 255, 255}}, {"black", {0, 0, 0}}};

constexpr double kSquareHalfSide = 0.8;  // a square's half-side as a fraction of its radius
constexpr int kSupersample = 4;          // coverage samples per pixel along each axis

// splitmix64: a fixed, portable generator (std:: distributions differ between standard libraries).
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * static_cast<double>(next() >> 11) * 0x1.0p-53; }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
  template <class T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }
};

// The radius of the circle around the centre that holds the whole shape.
double bounding_radius(const std::string& shape, double r) {
  return shape == "square" ? kSquareHalfSide * std::sqrt(2.0) * r : r;
}

// Whether the point (px, py) lies inside the shape centred at (x, y) with scale r.
bool inside(const SceneObject& o, double px, double py) {
  const double dx = px - o.x, dy = py - o.y, r = o.radius;
  if (o.shape == "circle") return dx * dx + dy * dy <= r * r;
  if (o.shape == "square") return std::abs(dx) <= kSquareHalfSide * r && std::abs(dy) <= kSquareHalfSide * r;
  if (o.shape == "diamond") return std::abs(dx) + std::abs(dy) <= r;
  // Triangle pointing up, centroid at the centre, circumradius r: apex (0, -r), base at dy = r/2
  // with corners (±r·√3/2, r/2). Inside: below both slanted sides and above the base.
  const double half_width_at = (dy + r) / std::sqrt(3.0);  // the half-width of the triangle at height dy
  return dy <= r / 2 && dy >= -r && std::abs(dx) <= half_width_at;
}

// [x0, x1) × [y0, y1) in continuous coordinates: the shape's extent.
std::array<double, 4> extent(const SceneObject& o) {
  const double r = o.radius;
  if (o.shape == "square") {
    const double h = kSquareHalfSide * r;
    return {o.x - h, o.y - h, o.x + h, o.y + h};
  }
  if (o.shape == "triangle") {
    const double h = r * std::sqrt(3.0) / 2;
    return {o.x - h, o.y - r, o.x + h, o.y + r / 2};
  }
  return {o.x - r, o.y - r, o.x + r, o.y + r};
}

void draw(at::Tensor& image, SceneObject& o) {
  const int64_t size = image.size(1);
  const auto e = extent(o);
  const int64_t x0 = std::max<int64_t>(0, static_cast<int64_t>(std::floor(e[0])));
  const int64_t y0 = std::max<int64_t>(0, static_cast<int64_t>(std::floor(e[1])));
  const int64_t x1 = std::min<int64_t>(size, static_cast<int64_t>(std::ceil(e[2])));
  const int64_t y1 = std::min<int64_t>(size, static_cast<int64_t>(std::ceil(e[3])));
  auto px = image.accessor<uint8_t, 3>();
  int64_t bx0 = size, by0 = size, bx1 = 0, by1 = 0;
  for (int64_t row = y0; row < y1; ++row)
    for (int64_t col = x0; col < x1; ++col) {
      int hits = 0;
      for (int sy = 0; sy < kSupersample; ++sy)
        for (int sx = 0; sx < kSupersample; ++sx)
          hits += inside(o, col + (sx + 0.5) / kSupersample, row + (sy + 0.5) / kSupersample);
      if (hits == 0) continue;
      const double cover = static_cast<double>(hits) / (kSupersample * kSupersample);
      for (int c = 0; c < 3; ++c) {
        const double blended = px[c][row][col] * (1 - cover) + o.rgb[c] * cover;
        px[c][row][col] = static_cast<uint8_t>(std::lround(blended));
      }
      bx0 = std::min(bx0, col), by0 = std::min(by0, row);
      bx1 = std::max(bx1, col + 1), by1 = std::max(by1, row + 1);
    }
  o.box = {bx0, by0, bx1, by1};
}

std::string plural(const std::string& noun) {
  const bool sibilant = !noun.empty() && (noun.back() == 's' || noun.back() == 'x' ||
                                          (noun.size() > 1 && noun.compare(noun.size() - 2, 2, "ch") == 0));
  return noun + (sibilant ? "es" : "s");
}

std::string with_article(const std::string& phrase) {
  const bool vowel = !phrase.empty() && std::string("aeiou").find(phrase[0]) != std::string::npos;
  return (vowel ? "an " : "a ") + phrase;
}

const char* const kNumbers[] = {"no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"};

// Objects with the same description, counted: "two small red circles", "a large blue square".
struct Group {
  const SceneObject* first;
  int64_t count;
  std::string text() const {
    if (count == 1) return with_article(first->phrase());
    const std::string& shape = first->shape;
    return str(kNumbers[std::min<int64_t>(count, 9)], " ", first->size, " ", first->color, " ", plural(shape));
  }
};

std::vector<Group> groups_of(const std::vector<const SceneObject*>& objects) {
  std::vector<Group> groups;
  for (const SceneObject* o : objects) {
    auto it =
        std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.first->phrase() == o->phrase(); });
    if (it == groups.end())
      groups.push_back({o, 1});
    else
      ++it->count;
  }
  return groups;
}

std::string join_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += (i + 1 == items.size()) ? " and " : ", ";
    out += items[i];
  }
  return out;
}

// Every object, grouped by description, in a random order.
std::string listing(const std::vector<const SceneObject*>& objects, Rng& rng, int64_t* first_count = nullptr) {
  std::vector<Group> groups = groups_of(objects);
  rng.shuffle(groups);
  std::vector<std::string> parts;
  for (const Group& g : groups) parts.push_back(g.text());
  if (first_count) *first_count = groups.empty() ? 0 : groups[0].count;
  return join_list(parts);
}

std::string list_caption(const Scene& scene, const std::string& background, Rng& rng) {
  std::vector<const SceneObject*> all;
  for (const auto& o : scene.objects) all.push_back(&o);
  int64_t first_count = 0;
  const std::string list = listing(all, rng, &first_count);
  const size_t n = scene.objects.size();
  switch (rng.below(n > 1 ? 6 : 5)) {
    case 0:
      return list;
    case 1:
      return "an image of " + list;
    case 2:
      return "a picture of " + list;
    case 3:
      return (first_count == 1 ? "there is " : "there are ") + list;
    case 4:
      return list + " on a " + background + " background";
    default:
      return str(kNumbers[n], " objects: ", list);
  }
}

const char* relation_phrase(const std::string& relation) {
  if (relation == kLeftOf) return "to the left of";
  if (relation == kRightOf) return "to the right of";
  return relation == kAbove ? "above" : "below";
}

// A caption built on one spatial relation between two objects that their descriptions pick out
// uniquely, along the axis on which they are furthest apart; "" when the scene has no such pair.
std::string relation_caption(const Scene& scene, Rng& rng) {
  std::map<std::string, int> uses;
  for (const auto& o : scene.objects) ++uses[o.phrase()];
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t a = 0; a < static_cast<int64_t>(scene.objects.size()); ++a)
    for (int64_t b = 0; b < static_cast<int64_t>(scene.objects.size()); ++b)
      if (a != b && uses[scene.objects[a].phrase()] == 1 && uses[scene.objects[b].phrase()] == 1)
        pairs.emplace_back(a, b);
  if (pairs.empty()) return "";
  const auto [a, b] = rng.pick(pairs);
  const SceneObject &A = scene.objects[a], &B = scene.objects[b];
  const double dx = A.x - B.x, dy = A.y - B.y;
  const std::string relation =
      std::abs(dx) >= std::abs(dy) ? (dx < 0 ? kLeftOf : kRightOf) : (dy < 0 ? kAbove : kBelow);
  const bool holds = std::any_of(scene.relations.begin(), scene.relations.end(), [&](const SceneRelation& r) {
    return r.subject == a && r.object == b && r.relation == relation;
  });
  if (!holds) return "";  // too close to call along either axis (placement keeps this from happening)
  const std::string core = with_article(A.phrase()) + " " + relation_phrase(relation) + " " + with_article(B.phrase());
  std::string caption;
  switch (rng.below(4)) {
    case 0:
      caption = core;
      break;
    case 1:
      caption = with_article(A.phrase()) + " is " + relation_phrase(relation) + " " + with_article(B.phrase());
      break;
    case 2:
      caption = "there is " + core;
      break;
    default:
      caption = "an image of " + core;
      break;
  }
  std::vector<const SceneObject*> rest;
  for (int64_t i = 0; i < static_cast<int64_t>(scene.objects.size()); ++i)
    if (i != a && i != b) rest.push_back(&scene.objects[i]);
  if (!rest.empty()) caption += ", plus " + listing(rest, rng);
  return caption;
}

uint64_t mix(uint64_t seed, uint64_t index) {
  Rng r{seed ^ (index * 0xd1b54a32d192ed03ull)};
  r.next();
  return r.next() ^ index;
}

// Places the objects without overlap; false when random placement keeps failing (the caller redraws).
bool place(std::vector<SceneObject>& objects, double size, Rng& rng) {
  const double gap = std::max(2.0, 0.03 * size);
  for (size_t i = 0; i < objects.size(); ++i) {
    SceneObject& o = objects[i];
    const double b = bounding_radius(o.shape, o.radius);
    bool placed = false;
    for (int attempt = 0; attempt < 100 && !placed; ++attempt) {
      o.x = rng.uniform(b + 1, size - 1 - b);
      o.y = rng.uniform(b + 1, size - 1 - b);
      placed = true;
      for (size_t j = 0; j < i && placed; ++j) {
        const double d = std::hypot(o.x - objects[j].x, o.y - objects[j].y);
        placed = d >= b + bounding_radius(objects[j].shape, objects[j].radius) + gap;
      }
    }
    if (!placed) return false;
  }
  return true;
}

}  // namespace

const std::vector<std::string>& scene_shape_names() {
  static const std::vector<std::string> names = {"circle", "square", "triangle", "diamond"};
  return names;
}

const std::vector<std::string>& scene_color_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& c : kObjectColors) out.push_back(c.name);
    return out;
  }();
  return names;
}

std::array<uint8_t, 3> scene_color_rgb(const std::string& name) {
  for (const auto& c : kObjectColors)
    if (name == c.name) return c.rgb;
  for (const auto& c : kBackgrounds)
    if (name == c.name) return c.rgb;
  const std::string hint = config::closest_match(name, scene_color_names());
  fail("unknown scene colour '", name, "'", hint.empty() ? "" : " (did you mean '" + hint + "'?)",
       "; known: red, green, blue, yellow, purple, orange, white, black, and the backgrounds gray, white, black");
}

std::string SceneObject::phrase() const { return size + " " + color + " " + shape; }

void validate(const SceneConfig& c) {
  check(c.size >= 32 && c.size <= 128, "scenes: size must be 32..128 pixels, got ", c.size);
  check(c.min_objects >= 1 && c.max_objects <= 4 && c.min_objects <= c.max_objects,
        "scenes: need 1 <= min_objects <= max_objects <= 4, got min_objects ", c.min_objects, ", max_objects ",
        c.max_objects);
  check(c.captions_per_image >= 1 && c.captions_per_image <= 16, "scenes: captions_per_image must be 1..16, got ",
        c.captions_per_image);
  check(!c.shapes.empty(), "scenes: shapes is empty; list some of: circle, square, triangle, diamond");
  check(!c.colors.empty(),
        "scenes: colors is empty; list some of: red, green, blue, yellow, purple, orange, white, black");
  auto check_names = [](const std::vector<std::string>& names, const std::vector<std::string>& known, const char* key) {
    std::set<std::string> seen;
    for (const auto& n : names) {
      if (std::find(known.begin(), known.end(), n) == known.end()) {
        const std::string hint = config::closest_match(n, known);
        std::string all;
        for (const auto& k : known) all += (all.empty() ? "" : ", ") + k;
        fail("scenes: unknown ", key, " entry '", n, "'", hint.empty() ? "" : " (did you mean '" + hint + "'?)",
             "; known: ", all);
      }
      check(seen.insert(n).second, "scenes: ", key, " lists '", n, "' twice");
    }
  };
  check_names(c.shapes, scene_shape_names(), "shapes");
  check_names(c.colors, scene_color_names(), "colors");
  const std::vector<std::string> backgrounds = {"gray", "white", "black"};
  check(std::find(backgrounds.begin(), backgrounds.end(), c.background) != backgrounds.end(),
        "scenes: background must be gray, white or black, got '", c.background, "'");
  check(std::find(c.colors.begin(), c.colors.end(), c.background) == c.colors.end(), "scenes: colour '", c.background,
        "' is also the background, so objects of that colour would be invisible; remove it from colors or change "
        "background");
}

std::vector<SceneRelation> spatial_relations(const std::vector<std::array<double, 2>>& centres, double image_size) {
  const double margin = kRelationMargin * image_size;
  std::vector<SceneRelation> out;
  for (int64_t a = 0; a < static_cast<int64_t>(centres.size()); ++a)
    for (int64_t b = 0; b < static_cast<int64_t>(centres.size()); ++b) {
      if (a == b) continue;
      const double dx = centres[a][0] - centres[b][0], dy = centres[a][1] - centres[b][1];
      if (dx < -margin) out.push_back({a, kLeftOf, b});
      if (dx > margin) out.push_back({a, kRightOf, b});
      if (dy < -margin) out.push_back({a, kAbove, b});
      if (dy > margin) out.push_back({a, kBelow, b});
    }
  return out;
}

Scene generate_scene(const SceneConfig& config, int64_t index) {
  validate(config);
  check(index >= 0, "scenes: image index must be >= 0, got ", index);
  Rng rng{mix(static_cast<uint64_t>(config.seed), static_cast<uint64_t>(index))};
  const double size = static_cast<double>(config.size);

  Scene scene;
  scene.index = index;
  // Draw attributes and positions; a layout that does not fit (several large objects in a small image)
  // is redrawn whole, so the outcome stays a function of (seed, index).
  bool placed = false;
  for (int attempt = 0; attempt < 1000 && !placed; ++attempt) {
    const int64_t count =
        config.min_objects + static_cast<int64_t>(rng.below(config.max_objects - config.min_objects + 1));
    scene.objects.assign(count, SceneObject{});
    for (SceneObject& o : scene.objects) {
      o.shape = rng.pick(config.shapes);
      o.color = rng.pick(config.colors);
      o.rgb = scene_color_rgb(o.color);
      const bool large = rng.below(2) == 1;
      o.size = large ? "large" : "small";
      o.radius = size * (large ? rng.uniform(0.15, 0.18) : rng.uniform(0.08, 0.10));
    }
    placed = place(scene.objects, size, rng);
  }
  check(placed, "scenes: could not place the objects of image ", index, " without overlap");

  const auto bg = scene_color_rgb(config.background);
  scene.image = at::empty({3, config.size, config.size}, at::kByte);
  for (int c = 0; c < 3; ++c) scene.image[c].fill_(static_cast<int64_t>(bg[c]));
  for (SceneObject& o : scene.objects) draw(scene.image, o);

  std::vector<std::array<double, 2>> centres;
  for (const auto& o : scene.objects) centres.push_back({o.x, o.y});
  scene.relations = spatial_relations(centres, size);

  // Paraphrases: alternate relation-based and listing captions (relations first), keep distinct ones.
  std::set<std::string> seen;
  for (int attempt = 0; attempt < 20 * config.captions_per_image &&
                        static_cast<int64_t>(scene.captions.size()) < config.captions_per_image;
       ++attempt) {
    std::string caption;
    if (scene.objects.size() > 1 && attempt % 2 == 0) caption = relation_caption(scene, rng);
    if (caption.empty()) caption = list_caption(scene, config.background, rng);
    if (seen.insert(caption).second) scene.captions.push_back(caption);
  }
  return scene;
}

nlohmann::json scene_ground_truth(const Scene& scene, const SceneConfig& config) {
  nlohmann::json objects = nlohmann::json::array();
  std::map<std::string, int64_t> counts;
  for (const auto& o : scene.objects) {
    objects.push_back({{"shape", o.shape},
                       {"color", o.color},
                       {"size", o.size},
                       {"rgb", {o.rgb[0], o.rgb[1], o.rgb[2]}},
                       {"center", {o.x, o.y}},
                       {"radius", o.radius},
                       {"box", {o.box[0], o.box[1], o.box[2], o.box[3]}}});
    ++counts[o.color + " " + o.shape];
  }
  nlohmann::json relations = nlohmann::json::array();
  for (const auto& r : scene.relations)
    relations.push_back({{"subject", r.subject}, {"relation", r.relation}, {"object", r.object}});
  return {{"index", scene.index}, {"seed", config.seed}, {"size", config.size},    {"background", config.background},
          {"objects", objects},   {"counts", counts},    {"relations", relations}, {"captions", scene.captions}};
}

}  // namespace tessera::image
