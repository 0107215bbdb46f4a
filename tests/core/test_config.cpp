#include <gtest/gtest.h>

#include "core/error.h"
#include "core/config.h"

namespace tessera {
namespace {

struct Inner {
  int64_t width = 4;
  std::string mode = "fast";
  template <class V>
  void fields(V& v) {
    v.optional("width", width, "a width");
    v.choice("mode", mode, {"fast", "slow"}, "speed");
  }
};

struct Outer {
  int64_t steps = 0;
  double lr = 1e-3;
  bool flag = false;
  std::string name = "x";
  std::vector<int64_t> sizes;
  Inner inner;
  template <class V>
  void fields(V& v) {
    v.required("steps", steps, "steps");
    v.optional("lr", lr);
    v.optional("flag", flag);
    v.optional("name", name);
    v.optional("sizes", sizes);
    v.optional("inner", inner);
  }
};

std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    YAML::Node n = config::load_yaml_string(yaml, "r.yaml");
    config::apply_overrides(n, overrides);
    config::parse<Outer>(n, "", "r.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, ParsesTypedFieldsAndKeepsDefaults) {
  YAML::Node n = config::load_yaml_string("steps: 10\nlr: 2.5e-4\nflag: true\nsizes: [1, 2, 3]\ninner: {width: 8}\n", "r");
  const Outer o = config::parse<Outer>(n);
  EXPECT_EQ(o.steps, 10);
  EXPECT_DOUBLE_EQ(o.lr, 2.5e-4);
  EXPECT_TRUE(o.flag);
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(o.inner.width, 8);
  EXPECT_EQ(o.inner.mode, "fast");
  EXPECT_EQ(o.name, "x");
}

TEST(Config, UnknownKeyNamesPathPositionAndClosestKey) {
  const std::string e = error_of("steps: 1\ninner:\n  widht: 3\n");
  EXPECT_NE(e.find("unknown key 'inner.widht'"), std::string::npos) << e;
  EXPECT_NE(e.find("r.yaml:3:3"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'inner.width'"), std::string::npos) << e;
}

TEST(Config, UnrelatedUnknownKeyGetsNoMisleadingSuggestion) {
  const std::string e = error_of("steps: 1\ncompletely_different: 3\n");
  EXPECT_NE(e.find("unknown key 'completely_different'"), std::string::npos) << e;
  EXPECT_EQ(e.find("did you mean"), std::string::npos) << e;
}

TEST(Config, WrongTypeNamesKeyAndValue) {
  std::string e = error_of("steps: ten\n");
  EXPECT_NE(e.find("'steps' must be an integer, got 'ten'"), std::string::npos) << e;
  EXPECT_NE(e.find("r.yaml:1:8"), std::string::npos) << e;
  e = error_of("steps: 1\nlr: fast\n");
  EXPECT_NE(e.find("'lr' must be a number"), std::string::npos) << e;
  e = error_of("steps: 1\nflag: 3\n");
  EXPECT_NE(e.find("'flag' must be true or false"), std::string::npos) << e;
  e = error_of("steps: 1\ninner: 5\n");
  EXPECT_NE(e.find("'inner' must be a mapping"), std::string::npos) << e;
  e = error_of("steps: 1\nsizes: [1, x]\n");
  EXPECT_NE(e.find("'sizes[1]' must be an integer"), std::string::npos) << e;
}

TEST(Config, IntegralFloatsAreAcceptedForIntegers) {
  const Outer o = config::parse<Outer>(config::load_yaml_string("steps: 1e3\n", "r"));
  EXPECT_EQ(o.steps, 1000);
  EXPECT_NE(error_of("steps: 2.5\n").find("must be an integer"), std::string::npos);
}

TEST(Config, MissingRequiredKey) {
  const std::string e = error_of("lr: 0.1\n");
  EXPECT_NE(e.find("missing required key 'steps'"), std::string::npos) << e;
}

TEST(Config, ChoiceRejectsInvalidValueWithSuggestion) {
  const std::string e = error_of("steps: 1\ninner: {mode: slwo}\n");
  EXPECT_NE(e.find("invalid value 'slwo' for 'inner.mode'"), std::string::npos) << e;
  EXPECT_NE(e.find("did you mean 'slow'"), std::string::npos) << e;
}

TEST(Config, SyntaxErrorGivesFileLineColumn) {
  const std::string e = error_of("steps: 1\ninner: {width: 3\nlr: 2\n");
  EXPECT_NE(e.find("r.yaml:"), std::string::npos) << e;
  EXPECT_NE(e.find("YAML syntax error"), std::string::npos) << e;
}

TEST(Config, OverridesSetNestedKeysAndAreChecked) {
  YAML::Node n = config::load_yaml_string("steps: 1\n", "r");
  config::apply_overrides(n, {"inner.width=16", "lr=0.5", "inner.mode=slow", "sizes=[4,5]"});
  const Outer o = config::parse<Outer>(n);
  EXPECT_EQ(o.inner.width, 16);
  EXPECT_DOUBLE_EQ(o.lr, 0.5);
  EXPECT_EQ(o.inner.mode, "slow");
  EXPECT_EQ(o.sizes, (std::vector<int64_t>{4, 5}));
  EXPECT_NE(error_of("steps: 1\n", {"inner.widht=3"}).find("did you mean 'inner.width'"), std::string::npos);
  EXPECT_NE(error_of("steps: 1\n", {"lr"}).find("must look like key.sub=value"), std::string::npos);
  EXPECT_NE(error_of("steps: 1\n", {"steps.x=1"}).find("is not a section"), std::string::npos);
}

TEST(Config, ResolvedConfigRoundTripsThroughYamlAndJson) {
  Outer o = config::parse<Outer>(config::load_yaml_string("steps: 7\nlr: 0.05\nsizes: [3]\n", "r"));
  const YAML::Node y = config::to_yaml(o);
  EXPECT_EQ(y["lr"].Scalar(), "0.05");  // shortest text that reads back exactly
  const Outer back = config::parse<Outer>(config::load_yaml_string(config::dump_yaml(y), "dump"));
  EXPECT_EQ(back.steps, 7);
  EXPECT_DOUBLE_EQ(back.lr, 0.05);
  EXPECT_EQ(back.sizes, o.sizes);
  const nlohmann::json j = config::to_json(o);
  EXPECT_EQ(j["steps"], 7);
  EXPECT_DOUBLE_EQ(j["lr"].get<double>(), 0.05);
  EXPECT_EQ(j["inner"]["mode"], "fast");
  const Outer from_json = config::parse<Outer>(config::json_to_yaml(j));
  EXPECT_EQ(from_json.inner.width, 4);
}

TEST(Config, FormatDoubleIsShortestExact) {
  for (double v : {0.1, 1e-8, 3.0e-3, 1.0 / 3.0, 12345.678, 0.95})
    EXPECT_EQ(std::strtod(config::format_double(v).c_str(), nullptr), v);
  EXPECT_EQ(config::format_double(0.95), "0.95");
}

TEST(Config, EditDistanceAndClosestMatch) {
  EXPECT_EQ(config::edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(config::closest_match("n_layer", {"n_layers", "n_heads", "dim"}), "n_layers");
  EXPECT_EQ(config::closest_match("zzzzzz", {"n_layers", "dim"}), "");
}

TEST(Config, DocumentListsFields) {
  const auto lines = config::document<Outer>();
  ASSERT_GE(lines.size(), 6u);
  EXPECT_EQ(lines[0], "steps (required): steps");
  bool saw_choice = false;
  for (const auto& l : lines) saw_choice |= l.find("inner.mode = fast {fast|slow}") != std::string::npos;
  EXPECT_TRUE(saw_choice);
}

}  // namespace
}  // namespace tessera
