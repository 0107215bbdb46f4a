// Captions files for a user's image folder: COCO captions JSON, JSON lines and TSV, good and malformed.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "modalities/image/captions.h"
#include "modalities_test_util.h"

namespace tessera::image {
namespace {
namespace fs = std::filesystem;
using tessera::testing::contains;
using tessera::testing::TempDir;
using tessera::testing::what_of;
using tessera::testing::write_bytes;

std::vector<std::string> captions_of(const std::vector<CaptionedImage>& pairs) {
  std::vector<std::string> out;
  for (const auto& p : pairs) out.push_back(p.caption);
  return out;
}

TEST(ImageCaptions, CocoGivesOnePairPerAnnotation) {
  TempDir dir;
  write_bytes(dir / "coco.json", R"({"info": {}, "images": [{"id": 1, "file_name": "a.jpg", "width": 4},
    {"id": "b", "file_name": "/abs/b.png"}],
    "annotations": [{"id": 10, "image_id": 1, "caption": " A red bus.\n"},
                    {"id": 11, "image_id": "b", "caption": "a cat"},
                    {"id": 12, "image_id": 1, "caption": "a bus on a road"}]})");
  const auto pairs = read_coco_captions(dir / "coco.json", dir / "imgs");
  ASSERT_EQ(pairs.size(), 3u);
  EXPECT_EQ(captions_of(pairs), (std::vector<std::string>{"A red bus.", "a cat", "a bus on a road"}));
  EXPECT_EQ(pairs[0].path, (dir / "imgs/a.jpg").string());
  EXPECT_EQ(pairs[1].path, "/abs/b.png");
  EXPECT_TRUE(contains(pairs[2].source, "annotations[2]"));
}

TEST(ImageCaptions, MalformedCocoNamesFileAndPlace) {
  TempDir dir;
  auto error_of = [&](const std::string& text) {
    write_bytes(dir / "c.json", text);
    const std::string message = what_of([&] { read_coco_captions(dir / "c.json", dir.path()); });
    EXPECT_TRUE(contains(message, "c.json")) << message;
    return message;
  };
  EXPECT_TRUE(contains(error_of("{\"images\": [],\n \"annotations\": [,]}"), "line 2"));
  EXPECT_TRUE(contains(error_of("[1, 2]"), "JSON object"));
  EXPECT_TRUE(contains(error_of(R"({"images": []})"), "no \"annotations\" list"));
  const std::string images = R"("images": [{"id": 1, "file_name": "a.jpg"}])";
  EXPECT_TRUE(
      contains(error_of("{" + images +
                        R"(, "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 2, "caption": "y"}]})"),
               "annotations[1]: image_id 2 is not in \"images\""));
  EXPECT_TRUE(contains(error_of("{" + images + R"(, "annotations": [{"image_id": 1, "caption": 5}]})"),
                       "annotations[0] has no \"caption\" string"));
  EXPECT_TRUE(
      contains(error_of("{" + images + R"(, "annotations": [{"image_id": 1, "caption": "  "}]})"), "empty caption"));
  EXPECT_TRUE(
      contains(error_of(R"({"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}], "annotations": []})"),
               "appears twice"));
  EXPECT_TRUE(
      contains(error_of(R"({"images": [{"id": 1}], "annotations": []})"), "images[0] (id 1) has no \"file_name\""));
}

TEST(ImageCaptions, JsonLinesWithStringsOrLists) {
  TempDir dir;
  write_bytes(dir / "c.jsonl",
              "{\"path\": \"x/1.png\", \"caption\": \"one\"}\n\n"
              "{\"path\": \"2.png\", \"caption\": [\"two\", \"deux\"], \"extra\": 1}\r\n");
  const auto pairs = read_jsonl_captions(dir / "c.jsonl", dir.path());
  EXPECT_EQ(captions_of(pairs), (std::vector<std::string>{"one", "two", "deux"}));
  EXPECT_EQ(pairs[0].path, (dir / "x/1.png").string());
  EXPECT_EQ(pairs[2].source, (dir / "c.jsonl").string() + ":3");
  // Other field names.
  write_bytes(dir / "d.jsonl", "{\"image\": \"a.png\", \"text\": \"hi\"}\n");
  EXPECT_EQ(read_jsonl_captions(dir / "d.jsonl", dir.path(), "image", "text").size(), 1u);
}

TEST(ImageCaptions, MalformedJsonLinesNameTheLine) {
  TempDir dir;
  auto error_of = [&](const std::string& text) {
    write_bytes(dir / "c.jsonl", "{\"path\": \"ok.png\", \"caption\": \"fine\"}\n" + text);
    return what_of([&] { read_jsonl_captions(dir / "c.jsonl", dir.path()); });
  };
  const std::string c = (dir / "c.jsonl").string();
  EXPECT_TRUE(contains(error_of("{\"path\": \"a.png\", \"caption\": }\n"), c + ":2: not valid JSON"));
  EXPECT_TRUE(contains(error_of("\n[1]\n"), c + ":3: expected a JSON object"));
  const std::string missing = error_of("{\"image\": \"a.png\", \"caption\": \"x\"}\n");
  EXPECT_TRUE(contains(missing, c + ":2: no \"path\" field") && contains(missing, "caption, image")) << missing;
  EXPECT_TRUE(contains(error_of("{\"path\": \"a.png\", \"caption\": \"\"}\n"), ":2: empty caption"));
  EXPECT_TRUE(contains(error_of("{\"path\": 3, \"caption\": \"x\"}\n"), ":2: \"path\" must be a non-empty string"));
  EXPECT_TRUE(contains(error_of("{\"path\": \"a\", \"caption\": [\"x\", 2]}\n"), "\"caption\"[1] is a JSON number"));
}

TEST(ImageCaptions, TsvWithHeaderAndCrlf) {
  TempDir dir;
  write_bytes(dir / "c.tsv", "Path\tCaption\r\nimg/a.jpg\ta dog on grass\r\n\n/abs/b.jpg\t  two cats \n");
  const auto pairs = read_tsv_captions(dir / "c.tsv", dir / "root");
  EXPECT_EQ(captions_of(pairs), (std::vector<std::string>{"a dog on grass", "two cats"}));
  EXPECT_EQ(pairs[0].path, (dir / "root/img/a.jpg").string());
  EXPECT_EQ(pairs[1].path, "/abs/b.jpg");
  EXPECT_EQ(pairs[1].source, (dir / "c.tsv").string() + ":4");
}

TEST(ImageCaptions, MalformedTsvNamesTheLine) {
  TempDir dir;
  auto error_of = [&](const std::string& text) {
    write_bytes(dir / "c.tsv", "a.jpg\tfine\n" + text);
    return what_of([&] { read_tsv_captions(dir / "c.tsv", dir.path()); });
  };
  const std::string c = (dir / "c.tsv").string();
  EXPECT_TRUE(contains(error_of("b.jpg a caption with spaces\n"), c + ":2: expected 2 tab-separated fields"));
  EXPECT_TRUE(
      contains(error_of("b.jpg\tcap\textra\n"), c + ":2: expected 2 tab-separated fields (path, caption), found 3"));
  EXPECT_TRUE(contains(error_of("\nb.jpg\t \n"), c + ":3: empty caption for 'b.jpg'"));
  EXPECT_TRUE(contains(error_of("\tcap\n"), c + ":2: empty image path"));
}

TEST(ImageCaptions, ReadCaptionsPicksTheFormatAndFolder) {
  TempDir dir;
  fs::create_directories(dir / "set");
  write_bytes(dir / "set/c.tsv", "a.jpg\ta\n");
  write_bytes(dir / "set/c.jsonl", "{\"path\": \"a.jpg\", \"caption\": \"b\"}\n");
  CaptionsConfig config;
  config.file = (dir / "set/c.tsv").string();
  auto pairs = read_captions(config);
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(pairs[0].path, (dir / "set/a.jpg").string());  // beside the captions file by default
  config.file = "set/c.jsonl";                             // relative: found beside the recipe
  config.image_dir = "/data/images";
  pairs = read_captions(config, dir.path().string());
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(pairs[0].caption, "b");
  EXPECT_EQ(pairs[0].path, "/data/images/a.jpg");
  EXPECT_EQ(captions_format("x.JSON"), "coco");
  EXPECT_EQ(captions_format("x.txt"), "tsv");
  EXPECT_EQ(captions_format("x.csv", "jsonl"), "jsonl");
  EXPECT_TRUE(contains(what_of([] { captions_format("x.csv"); }), "cannot tell the format"));
  config.file = (dir / "set/none.tsv").string();
  EXPECT_TRUE(contains(what_of([&] { read_captions(config); }), "none.tsv' not found"));
}

}  // namespace
}  // namespace tessera::image
