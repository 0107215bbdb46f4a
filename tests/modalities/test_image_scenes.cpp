// The compositional scenes generator: determinism, ground truth that agrees with the pixels, and
// captions that name every object and state relations that hold.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "core/config.h"
#include "modalities/image/scenes.h"
#include "modalities_test_util.h"

namespace tessera::image {
namespace {
using tessera::testing::contains;
using tessera::testing::what_of;

SceneConfig config_of(int64_t size, int64_t seed = 0) {
  SceneConfig c;
  c.size = size;
  c.seed = seed;
  return c;
}

TEST(ImageScenes, SameSeedAndIndexGiveIdenticalScenes) {
  const SceneConfig c = config_of(64, 7);
  const Scene a = generate_scene(c, 3), b = generate_scene(c, 3);
  EXPECT_TRUE(at::equal(a.image, b.image));
  EXPECT_EQ(a.captions, b.captions);
  EXPECT_EQ(scene_ground_truth(a, c), scene_ground_truth(b, c));
  // Another index or another seed gives another image.
  EXPECT_FALSE(at::equal(a.image, generate_scene(c, 4).image));
  EXPECT_FALSE(at::equal(a.image, generate_scene(config_of(64, 8), 3).image));
  // The image is what the Segment payload needs.
  EXPECT_EQ(a.image.sizes(), (at::IntArrayRef{3, 64, 64}));
  EXPECT_EQ(a.image.scalar_type(), at::kByte);
}

TEST(ImageScenes, ObjectCountsShapesAndColoursFollowTheConfig) {
  SceneConfig c = config_of(32);
  c.min_objects = 2;
  c.max_objects = 3;
  c.shapes = {"triangle", "diamond"};
  c.colors = {"red", "white"};
  std::set<size_t> counts;
  for (int64_t i = 0; i < 60; ++i) {
    const Scene s = generate_scene(c, i);
    counts.insert(s.objects.size());
    for (const auto& o : s.objects) {
      EXPECT_TRUE(o.shape == "triangle" || o.shape == "diamond") << o.shape;
      EXPECT_TRUE(o.color == "red" || o.color == "white") << o.color;
      EXPECT_TRUE(o.size == "small" || o.size == "large") << o.size;
    }
  }
  EXPECT_EQ(counts, (std::set<size_t>{2, 3}));
}

// For every object: the pixels of exactly its colour inside its box are centred on its position; all
// pixels outside every box are background; each stated relation holds between those pixel centroids.
TEST(ImageScenes, GroundTruthAgreesWithThePixels) {
  for (int64_t size : {32, 64, 128}) {
    const SceneConfig c = config_of(size, 11);
    const auto bg = scene_color_rgb(c.background);
    for (int64_t index = 0; index < 12; ++index) {
      const Scene s = generate_scene(c, index);
      const auto px = s.image.accessor<uint8_t, 3>();
      at::Tensor covered = at::zeros({size, size}, at::kBool);
      std::vector<std::array<double, 2>> centroids;
      for (const auto& o : s.objects) {
        covered.narrow(0, o.box[1], o.box[3] - o.box[1]).narrow(1, o.box[0], o.box[2] - o.box[0]).fill_(true);
        // Every pixel of the box that lies on the blend between background and the object's colour
        // counts with its coverage (wholly inside: 1): the coverage-weighted centroid is the shape's.
        double sx = 0, sy = 0, sw = 0;
        int64_t solid = 0;
        int strongest = 0;
        for (int ch = 1; ch < 3; ++ch)
          if (std::abs(o.rgb[ch] - bg[ch]) > std::abs(o.rgb[strongest] - bg[strongest])) strongest = ch;
        for (int64_t row = o.box[1]; row < o.box[3]; ++row)
          for (int64_t col = o.box[0]; col < o.box[2]; ++col) {
            const double w = (px[strongest][row][col] - bg[strongest]) / double(o.rgb[strongest] - bg[strongest]);
            bool on_blend = w > 0 && w <= 1;
            for (int ch = 0; ch < 3; ++ch)
              on_blend = on_blend && std::abs(px[ch][row][col] - (bg[ch] + w * (o.rgb[ch] - bg[ch]))) <= 1.0;
            if (!on_blend) continue;
            sx += w * (col + 0.5), sy += w * (row + 0.5), sw += w;
            solid += px[0][row][col] == o.rgb[0] && px[1][row][col] == o.rgb[1] && px[2][row][col] == o.rgb[2];
          }
        ASSERT_GT(solid, 0) << "size " << size << " scene " << index << " " << o.phrase();
        centroids.push_back({sx / sw, sy / sw});
        EXPECT_NEAR(sx / sw, o.x, 0.25) << o.phrase();
        EXPECT_NEAR(sy / sw, o.y, 0.25) << o.phrase();
        EXPECT_GE(o.box[0], 0);
        EXPECT_LE(o.box[2], size);
      }
      const auto cov = covered.accessor<bool, 2>();
      for (int64_t row = 0; row < size; ++row)
        for (int64_t col = 0; col < size; ++col)
          if (!cov[row][col]) {
            for (int ch = 0; ch < 3; ++ch) ASSERT_EQ(px[ch][row][col], bg[ch]) << "row " << row << " col " << col;
          }
      for (const auto& r : s.relations) {
        const auto &a = centroids[r.subject], &b = centroids[r.object];
        if (r.relation == kLeftOf) {
          EXPECT_LT(a[0], b[0]);
        } else if (r.relation == kRightOf) {
          EXPECT_GT(a[0], b[0]);
        } else if (r.relation == kAbove) {
          EXPECT_LT(a[1], b[1]);
        } else {
          EXPECT_EQ(r.relation, kBelow);
          EXPECT_GT(a[1], b[1]);
        }
      }
      // Objects are far enough apart that every ordered pair has at least one relation.
      for (int64_t a = 0; a < static_cast<int64_t>(s.objects.size()); ++a)
        for (int64_t b = 0; b < static_cast<int64_t>(s.objects.size()); ++b) {
          if (a == b) continue;
          int n = 0;
          for (const auto& r : s.relations) n += r.subject == a && r.object == b;
          EXPECT_GE(n, 1) << "scene " << index << " objects " << a << ", " << b;
        }
    }
  }
}

// A relation caption "<A> to the left of <B>..." must name two objects whose relation is in the truth.
TEST(ImageScenes, CaptionsNameEveryObjectAndTrueRelations) {
  const SceneConfig c = config_of(64, 5);
  int relation_captions = 0;
  const std::vector<std::pair<std::string, std::string>> phrases = {
      {" to the left of ", kLeftOf}, {" to the right of ", kRightOf}, {" above ", kAbove}, {" below ", kBelow}};
  for (int64_t index = 0; index < 40; ++index) {
    const Scene s = generate_scene(c, index);
    ASSERT_FALSE(s.captions.empty());
    if (s.objects.size() > 1) {
      EXPECT_EQ(static_cast<int64_t>(s.captions.size()), c.captions_per_image);
    }
    EXPECT_EQ(std::set<std::string>(s.captions.begin(), s.captions.end()).size(), s.captions.size());
    for (const std::string& caption : s.captions) {
      for (const auto& o : s.objects) {
        EXPECT_TRUE(contains(caption, o.color + " " + o.shape)) << caption << " lacks " << o.phrase();
        EXPECT_TRUE(contains(caption, o.size)) << caption;
      }
      for (const auto& [words, relation] : phrases) {
        const size_t at = caption.find(words);
        if (at == std::string::npos) continue;
        ++relation_captions;
        // The object right before the phrase and right after it.
        const size_t end = (at >= 3 && caption.compare(at - 3, 3, " is") == 0) ? at - 3 : at;  // "<A> is above <B>"
        int64_t subject = -1, object = -1;
        for (int64_t i = 0; i < static_cast<int64_t>(s.objects.size()); ++i) {
          const std::string p = s.objects[i].phrase();
          if (end >= p.size() && caption.compare(end - p.size(), p.size(), p) == 0) subject = i;
          const size_t after = at + words.size();
          if (caption.compare(after, 2, "a ") == 0 && caption.compare(after + 2, p.size(), p) == 0) object = i;
        }
        ASSERT_GE(subject, 0) << caption;
        ASSERT_GE(object, 0) << caption;
        bool holds = false;
        for (const auto& r : s.relations) holds |= r.subject == subject && r.object == object && r.relation == relation;
        EXPECT_TRUE(holds) << caption;
      }
    }
  }
  EXPECT_GT(relation_captions, 20);
}

TEST(ImageScenes, GroundTruthJsonAndConfigChecking) {
  const SceneConfig c = config_of(48, 2);
  const Scene s = generate_scene(c, 9);
  const nlohmann::json gt = scene_ground_truth(s, c);
  EXPECT_EQ(gt["size"], 48);
  EXPECT_EQ(gt["index"], 9);
  EXPECT_EQ(gt["objects"].size(), s.objects.size());
  int64_t total = 0;
  for (const auto& [key, n] : gt["counts"].items()) total += n.get<int64_t>();
  EXPECT_EQ(total, static_cast<int64_t>(s.objects.size()));
  EXPECT_EQ(gt["relations"].size(), s.relations.size());
  EXPECT_EQ(gt["objects"][0]["shape"], s.objects[0].shape);
  EXPECT_EQ(gt["captions"].get<std::vector<std::string>>(), s.captions);

  SceneConfig bad = c;
  bad.size = 16;
  EXPECT_TRUE(contains(what_of([&] { generate_scene(bad, 0); }), "32..128"));
  bad = c;
  bad.shapes = {"circel"};
  EXPECT_TRUE(contains(what_of([&] { validate(bad); }), "did you mean 'circle'"));
  bad = c;
  bad.colors = {"red", "gray"};
  EXPECT_TRUE(contains(what_of([&] { validate(bad); }), "unknown colors entry 'gray'"));
  bad = c;
  bad.background = "black";
  bad.colors = {"black", "red"};
  EXPECT_TRUE(contains(what_of([&] { validate(bad); }), "also the background"));
  bad = c;
  bad.max_objects = 5;
  EXPECT_TRUE(contains(what_of([&] { validate(bad); }), "max_objects"));

  // The typed config reads from YAML with strict keys.
  const SceneConfig parsed = config::parse<SceneConfig>(YAML::Load("size: 96\nshapes: [circle]\nseed: 4"), "scenes");
  EXPECT_EQ(parsed.size, 96);
  EXPECT_EQ(parsed.shapes, std::vector<std::string>{"circle"});
  EXPECT_TRUE(contains(what_of([] { config::parse<SceneConfig>(YAML::Load("colours: [red]"), "scenes"); }), "colors"));
}

TEST(ImageScenes, SingleObjectScenesStillGetParaphrases) {
  SceneConfig c = config_of(32, 3);
  c.max_objects = 1;
  for (int64_t i = 0; i < 10; ++i) {
    const Scene s = generate_scene(c, i);
    ASSERT_EQ(s.objects.size(), 1u);
    EXPECT_GE(s.captions.size(), 3u);
    EXPECT_TRUE(s.relations.empty());
  }
}

}  // namespace
}  // namespace tessera::image
