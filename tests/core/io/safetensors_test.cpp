#include "core/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>

#include <nlohmann/json.hpp>

#include "tests/core/io/io_test_util.h"

namespace tessera::io {
namespace {

using namespace tessera::io::testing;

std::string tensor_bytes(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kCPU).contiguous();
  return std::string(static_cast<const char*>(c.const_data_ptr()),
                     static_cast<size_t>(c.numel()) * c.element_size());
}

void expect_same(const at::Tensor& actual, const at::Tensor& expected, const std::string& name) {
  ASSERT_TRUE(actual.defined()) << name;
  EXPECT_EQ(actual.scalar_type(), expected.scalar_type()) << name;
  EXPECT_EQ(actual.sizes(), expected.sizes()) << name;
  EXPECT_EQ(actual.device(), at::Device(at::kCPU)) << name;
  EXPECT_TRUE(actual.is_contiguous()) << name;
  EXPECT_EQ(tensor_bytes(actual), tensor_bytes(expected)) << name;
}

at::Tensor sample(at::ScalarType type, at::IntArrayRef shape) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  const at::Tensor idx = at::arange(n, at::kDouble).reshape(shape);
  if (type == at::kBool) return (at::sin(idx * 1.7) > 0).to(at::kBool);
  if (at::isFloatingType(type)) return (at::sin(idx * 0.9) * 3.25 - 0.5).to(type);
  if (type == at::kByte || type == at::kUInt16 || type == at::kUInt32 || type == at::kUInt64)
    return (idx * 7 + 200).to(at::kLong).to(type);
  return (idx * 37 - 100).to(at::kLong).to(type);
}

const std::vector<std::pair<at::ScalarType, std::string>> kAllDtypes = {
    {at::kDouble, "F64"},       {at::kFloat, "F32"},  {at::kHalf, "F16"},
    {at::kBFloat16, "BF16"},    {at::kLong, "I64"},   {at::kInt, "I32"},
    {at::kShort, "I16"},        {at::kChar, "I8"},    {at::kByte, "U8"},
    {at::kBool, "BOOL"},        {at::kUInt16, "U16"}, {at::kUInt32, "U32"},
    {at::kUInt64, "U64"},       {at::kFloat8_e4m3fn, "F8_E4M3"},
    {at::kFloat8_e5m2, "F8_E5M2"},
};

nlohmann::json header_of(const fs::path& p) {
  const std::string bytes = read_bytes(p);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  return nlohmann::json::parse(bytes.substr(8, n));
}

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir dir;
  NamedTensors tensors;
  for (const auto& [type, name] : kAllDtypes) tensors.emplace_back("t_" + name, sample(type, {3, 4}));
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "ünïcode ✓"}};
  save_safetensors(dir / "all.safetensors", tensors, meta);

  const SafetensorsFile loaded = load_safetensors(dir / "all.safetensors");
  EXPECT_EQ(loaded.metadata, meta);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) expect_same(loaded.tensors.at(name), t, name);

  const nlohmann::json header = header_of(dir / "all.safetensors");
  for (const auto& [type, name] : kAllDtypes) {
    EXPECT_EQ(header.at("t_" + name).at("dtype"), name);
    EXPECT_EQ(safetensors_dtype_name(type), name);
  }
  // bf16 / f16 / bool values survive bit for bit, and mean what they should.
  EXPECT_TRUE(at::equal(loaded.tensors.at("t_BF16").to(at::kFloat),
                        sample(at::kBFloat16, {3, 4}).to(at::kFloat)));
  EXPECT_TRUE(at::equal(loaded.tensors.at("t_BOOL"), sample(at::kBool, {3, 4})));
  EXPECT_FALSE(loaded.tensors.at("t_BOOL").all().item<bool>());
  EXPECT_TRUE(loaded.tensors.at("t_BOOL").any().item<bool>());
}

TEST(Safetensors, NonContiguousZeroDimAndEmptyTensors) {
  TempDir dir;
  const at::Tensor base = sample(at::kFloat, {4, 6});
  NamedTensors tensors = {
      {"transposed", base.t()},
      {"strided", base.slice(1, 0, 6, 2)},
      {"expanded", at::arange(3, at::kLong).unsqueeze(1).expand({3, 5})},
      {"scalar", at::scalar_tensor(2.5, at::kDouble)},
      {"scalar_bool", at::scalar_tensor(true, at::kBool)},
      {"empty_2d", at::empty({0, 3}, at::kFloat)},
      {"empty_1d", at::empty({0}, at::kBFloat16)},
      {"empty_mid", at::empty({2, 0, 5}, at::kHalf)},
  };
  ASSERT_FALSE(tensors[0].second.is_contiguous());
  ASSERT_FALSE(tensors[1].second.is_contiguous());
  save_safetensors(dir / "x.safetensors", tensors);
  const SafetensorsFile loaded = load_safetensors(dir / "x.safetensors");
  EXPECT_TRUE(loaded.metadata.empty());
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) expect_same(loaded.tensors.at(name), t, name);
  EXPECT_EQ(loaded.tensors.at("scalar").dim(), 0);
  EXPECT_DOUBLE_EQ(loaded.tensors.at("scalar").item<double>(), 2.5);

  const nlohmann::json header = header_of(dir / "x.safetensors");
  EXPECT_FALSE(header.contains("__metadata__"));  // omitted when empty
  EXPECT_EQ(header.at("scalar").at("shape"), nlohmann::json::array());
  EXPECT_EQ(header.at("empty_2d").at("shape"), nlohmann::json({0, 3}));
  const auto& off = header.at("empty_2d").at("data_offsets");
  EXPECT_EQ(off[0], off[1]);
}

TEST(Safetensors, LoadedTensorsOwnTheirMemory) {
  TempDir dir;
  save_safetensors(dir / "a.safetensors", {{"w", sample(at::kFloat, {8})}});
  at::Tensor w = load_safetensors(dir / "a.safetensors").tensors.at("w");
  fs::remove(dir / "a.safetensors");
  w.add_(1.0f);  // writable, independent of the (deleted) file
  EXPECT_TRUE(at::allclose(w, sample(at::kFloat, {8}) + 1));
}

// The exact bytes, against a file built by hand: 8-byte little-endian length, JSON header with
// __metadata__ first and tensors sorted by name, space padding to 8 bytes, data in name order.
TEST(Safetensors, HeaderLayoutMatchesHandBuiltFile) {
  TempDir dir;
  const at::Tensor b = at::tensor({1.0f, -2.0f});
  const at::Tensor a = at::scalar_tensor(7, at::kLong);
  const at::Tensor c = at::tensor({static_cast<int8_t>(-1), static_cast<int8_t>(5),
                                   static_cast<int8_t>(3)});
  save_safetensors(dir / "x.safetensors", {{"b", b}, {"c", c}, {"a", a}}, {{"k", "v"}});

  const std::string header =
      R"({"__metadata__":{"k":"v"},)"
      R"("a":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("c":{"dtype":"I8","shape":[3],"data_offsets":[16,19]}})";
  std::string data;
  const int64_t a_value = 7;
  const float b_values[2] = {1.0f, -2.0f};
  const int8_t c_values[3] = {-1, 5, 3};
  data.append(reinterpret_cast<const char*>(&a_value), 8);
  data.append(reinterpret_cast<const char*>(b_values), 8);
  data.append(reinterpret_cast<const char*>(c_values), 3);
  std::string padded = header;
  padded.append((8 - padded.size() % 8) % 8, ' ');
  ASSERT_EQ(padded.size() % 8, 0u);
  ASSERT_GT(padded.size(), header.size());  // this header does need padding
  const std::string expected = le64(padded.size()) + padded + data;

  const std::string actual = read_bytes(dir / "x.safetensors");
  EXPECT_EQ(actual.size(), expected.size());
  EXPECT_EQ(actual, expected);
  EXPECT_EQ((8 + padded.size()) % 8, 0u);
  EXPECT_EQ(list_safetensors(dir / "x.safetensors"), (std::vector<std::string>{"a", "b", "c"}));
}

// Files from other writers may order the header and data differently, leave gaps, and skip padding.
TEST(Safetensors, LoadsAnyValidLayout) {
  TempDir dir;
  std::string data;
  const float z[2] = {3.0f, 4.0f};
  const int16_t y = -12;
  data.append(reinterpret_cast<const char*>(z), 8);
  data.append(4, '\xAB');  // gap
  data.append(reinterpret_cast<const char*>(&y), 2);
  const std::string header =
      R"({"z":{"shape":[2],"dtype":"F32","data_offsets":[0,8]},)"
      R"("y":{"data_offsets":[12,14],"dtype":"I16","shape":[1,1]},"__metadata__":{"a":"b"}})";
  write_bytes(dir / "other.safetensors", safetensors_bytes(header, data, /*pad=*/false));
  const SafetensorsFile f = load_safetensors(dir / "other.safetensors");
  EXPECT_TRUE(at::equal(f.tensors.at("z"), at::tensor({3.0f, 4.0f})));
  EXPECT_EQ(f.tensors.at("y").sizes(), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(f.tensors.at("y").item<int16_t>(), -12);
  EXPECT_EQ(f.metadata.at("a"), "b");
  EXPECT_EQ(list_safetensors(dir / "other.safetensors"), (std::vector<std::string>{"y", "z"}));
}

TEST(Safetensors, OverwritesExistingFileAndLeavesOnlyTheFinalName) {
  TempDir dir;
  save_safetensors(dir / "w.safetensors", {{"a", at::ones({4})}});
  save_safetensors(dir / "w.safetensors", {{"b", at::zeros({2}, at::kLong)}});
  EXPECT_EQ(entries(dir.path()), (std::set<std::string>{"w.safetensors"}));
  EXPECT_EQ(list_safetensors(dir / "w.safetensors"), (std::vector<std::string>{"b"}));
  // A missing parent folder is created.
  save_safetensors(dir / "sub" / "deeper" / "w.safetensors", {{"a", at::ones({1})}});
  EXPECT_EQ(entries(dir / "sub/deeper"), (std::set<std::string>{"w.safetensors"}));
}

TEST(Safetensors, BadInputIsRejectedBeforeAnythingIsWritten) {
  TempDir dir;
  const fs::path p = dir / "bad.safetensors";
  expect_error([&] { save_safetensors(p, {{"w", at::ones({2})}, {"w", at::zeros({2})}}); },
               {p.string(), "duplicate tensor name 'w'"});
  expect_error([&] { save_safetensors(p, {{"__metadata__", at::ones({2})}}); },
               {p.string(), "reserved"});
  expect_error([&] { save_safetensors(p, {{"c", at::ones({2}, at::kComplexFloat)}}); },
               {p.string(), "'c'", "cannot be stored"});
  expect_error([&] { save_safetensors(p, {{"u", at::Tensor()}}); }, {p.string(), "undefined"});
  expect_error([&] { save_safetensors(p, {{std::string("bad\xff"), at::ones({1})}}); },
               {p.string(), "UTF-8"});
  EXPECT_TRUE(entries(dir.path()).empty());
}

// Atomicity: when the final rename cannot happen, neither the final name nor a temporary remains.
TEST(Safetensors, FailedWriteLeavesNoPartialFile) {
  TempDir dir;
  // The destination is a non-empty directory: rename(file, dir) fails after the data is written.
  fs::create_directories(dir / "taken.safetensors" / "inside");
  expect_error([&] { save_safetensors(dir / "taken.safetensors", {{"w", at::ones({1000})}}); },
               {(dir / "taken.safetensors").string(), "cannot rename"});
  EXPECT_EQ(entries(dir.path()), (std::set<std::string>{"taken.safetensors"}));
  EXPECT_TRUE(fs::is_directory(dir / "taken.safetensors"));

  // An unwritable folder (meaningful only when not root: root ignores permissions).
  if (::geteuid() != 0) {
    fs::create_directories(dir / "ro");
    fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    expect_error([&] { save_safetensors(dir / "ro" / "w.safetensors", {{"w", at::ones({4})}}); },
                 {(dir / "ro").string()});
    fs::permissions(dir / "ro", fs::perms::owner_all);
    EXPECT_TRUE(entries(dir / "ro").empty());
  }
}

// ---- malformed files: every case is a tessera::Error naming the file and the problem ---------

class MalformedSafetensors : public ::testing::Test {
 protected:
  fs::path write(const std::string& bytes) {
    const fs::path p = dir_ / "broken.safetensors";
    write_bytes(p, bytes);
    return p;
  }
  // Both the full load and the header-only listing reject header problems.
  void expect_bad(const std::string& bytes, const std::string& problem, bool header_only = true) {
    const fs::path p = write(bytes);
    expect_error([&] { load_safetensors(p); }, {p.string(), problem});
    if (header_only) expect_error([&] { list_safetensors(p); }, {p.string(), problem});
  }
  TempDir dir_;
};

std::string f32_data(int n) { return std::string(static_cast<size_t>(4 * n), '\0'); }

TEST_F(MalformedSafetensors, MissingFile) {
  const fs::path p = dir_ / "nope.safetensors";
  expect_error([&] { load_safetensors(p); }, {p.string(), "does not exist"});
  expect_error([&] { list_safetensors(p); }, {p.string(), "does not exist"});
  expect_error([&] { load_safetensors(dir_.path()); }, {dir_.path().string(), "directory"});
}

TEST_F(MalformedSafetensors, ShorterThanEightBytes) {
  expect_bad("", "too short");
  expect_bad("\x10\x00\x00", "too short");
}

TEST_F(MalformedSafetensors, HeaderLengthBeyondFileSize) {
  expect_bad(le64(1000) + "{}", "header length (1000 bytes) exceeds");
  expect_bad(le64(~uint64_t{0}) + "{}      ", "exceeds");
  // A length within a (sparse) large file, but beyond the format's 100 MB header limit.
  const fs::path big = write(le64(150'000'000) + "{}");
  fs::resize_file(big, 150'000'100);
  expect_error([&] { list_safetensors(big); }, {big.string(), "100000000-byte limit"});
}

TEST_F(MalformedSafetensors, InvalidJson) {
  expect_bad(safetensors_bytes(R"({"a": {"dtype": "F32",)", ""), "invalid JSON");
  expect_bad(safetensors_bytes("[1, 2]", ""), "not an object");
  expect_bad(safetensors_bytes(R"({"a": 3})", ""), "tensor 'a'");
  expect_bad(safetensors_bytes(R"({"__metadata__": {"k": 1}})", ""), "__metadata__");
}

TEST_F(MalformedSafetensors, UnknownDtype) {
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})",
                               std::string(16, '\0')),
             "unknown dtype \"F128\"");
  expect_bad(safetensors_bytes(R"({"a":{"shape":[1],"data_offsets":[0,4]}})", f32_data(1)),
             "dtype");
}

TEST_F(MalformedSafetensors, ShapeOffsetSizeMismatch) {
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}})",
                               f32_data(6)),
             "size mismatch");
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                               f32_data(2)),
             "non-negative");
  expect_bad(safetensors_bytes(
                 R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                 f32_data(2)),
             "too large");
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}})",
                               f32_data(2)),
             "data_offsets");
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
                               f32_data(2)),
             "end before they begin");
}

TEST_F(MalformedSafetensors, OffsetsOutOfBounds) {
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
                               f32_data(2)),
             "out of bounds");
}

TEST_F(MalformedSafetensors, OverlappingOffsets) {
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                               f32_data(3)),
             "overlap");
}

TEST_F(MalformedSafetensors, TruncatedData) {
  save_safetensors(dir_ / "good.safetensors",
                   {{"a", at::ones({16})}, {"b", at::ones({16}, at::kDouble)}});
  const std::string good = read_bytes(dir_ / "good.safetensors");
  expect_bad(good.substr(0, good.size() - 1), "truncated");
  // Chopped inside the header, too.
  expect_bad(good.substr(0, 20), "exceeds");
}

TEST_F(MalformedSafetensors, BoolBytesOtherThanZeroOrOne) {
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})",
                               std::string("\x01\x02\x00", 3)),
             "BOOL", /*header_only=*/false);
}

}  // namespace
}  // namespace tessera::io
