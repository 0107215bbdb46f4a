// Cross-checks against the reference implementation (the `safetensors` Python package, whose
// parser is the Hugging Face Rust crate). Skipped when python3 or the package is missing; install
// it with: pip install --target ${TESSERA_CACHE:-$HOME/.cache/tessera}/py safetensors numpy
#include "core/io/safetensors.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include <nlohmann/json.hpp>

#include "tests/core/io/io_test_util.h"

namespace tessera::io {
namespace {

using namespace tessera::io::testing;

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// "PYTHONPATH=<cache>/py:$PYTHONPATH python3", with the cache from TESSERA_CACHE or ~/.cache.
std::string python_command() {
  std::string cache;
  if (const char* c = std::getenv("TESSERA_CACHE"); c && *c) {
    cache = c;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    cache = std::string(home) + "/.cache/tessera";
  }
  std::string pythonpath = cache.empty() ? std::string() : cache + "/py";
  if (const char* existing = std::getenv("PYTHONPATH"); existing && *existing)
    pythonpath = pythonpath.empty() ? existing : pythonpath + ":" + existing;
  return "PYTHONPATH=" + shell_quote(pythonpath) + " python3";
}

bool python_available() {
  static const bool available =
      std::system((python_command() +
                   " -c 'import safetensors, safetensors.numpy, numpy' >/dev/null 2>&1")
                      .c_str()) == 0;
  return available;
}

#define REQUIRE_PYTHON()                                                                     \
  if (!python_available())                                                                   \
  GTEST_SKIP() << "python3 with the safetensors and numpy packages is not available; install " \
                  "with: pip install --target ${TESSERA_CACHE:-$HOME/.cache/tessera}/py "      \
                  "safetensors numpy"

// Runs the script with arguments; returns stdout, failing the test on a non-zero exit.
std::string run_python(const fs::path& script, const std::vector<std::string>& args) {
  std::string cmd = python_command() + " " + shell_quote(script.string());
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
  if (!pipe) {
    ADD_FAILURE() << "cannot run " << cmd;
    return {};
  }
  std::string out;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe.get())) > 0) out.append(buf.data(), n);
  const int status = ::pclose(pipe.release());
  EXPECT_EQ(status, 0) << "python failed:\n" << out;
  return out;
}

// Reads a file with the reference implementation and prints, per tensor, dtype, shape and the
// float64 sum, plus the metadata. It uses safetensors.numpy.load_file (the public API) when numpy
// has every dtype of the file, else the package's raw deserializer (BF16: bits -> float32).
constexpr const char* kReadScript = R"PY(
import json, sys
import numpy as np
import safetensors
from safetensors import deserialize, safe_open
from safetensors.numpy import load_file

path = sys.argv[1]
with safe_open(path, framework="numpy") as f:   # validates the header the strict Rust way
    metadata = f.metadata() or {}
    keys = list(f.keys())
try:
    arrays = load_file(path)
    via = "load_file"
except Exception:
    types = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
             "I8": "i1", "U8": "u1", "BOOL": "?"}
    arrays = {}
    with open(path, "rb") as fh:
        raw = fh.read()
    for name, t in deserialize(raw):
        data = bytes(t["data"])
        if t["dtype"] == "BF16":
            a = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(data, dtype=types[t["dtype"]])
        arrays[name] = a.reshape(t["shape"])
    via = "deserialize"
out = {"via": via, "metadata": metadata, "keys": keys, "tensors": {}}
for name, a in arrays.items():
    out["tensors"][name] = {"shape": list(a.shape), "dtype": str(a.dtype),
                            "sum": float(a.astype(np.float64).sum())}
print(json.dumps(out))
)PY";

// Writes two files with the reference implementation: plain numpy dtypes via save_file, and one
// with a BF16 tensor via the low-level serialize_file (numpy has no bfloat16).
constexpr const char* kWriteScript = R"PY(
import sys
import numpy as np
from safetensors import serialize_file, TensorSpec
from safetensors.numpy import save_file

plain, with_bf16 = sys.argv[1], sys.argv[2]
idx = np.arange(12, dtype=np.float64).reshape(3, 4)
save_file({
    "f64": idx * 0.25 - 1.0,
    "f32": (idx * 0.5).astype(np.float32),
    "f16": (idx - 6).astype(np.float16),
    "i64": (idx * 1000 - 3).astype(np.int64),
    "i32": (idx * -7).astype(np.int32),
    "i16": (idx * 3).astype(np.int16),
    "i8": (idx - 6).astype(np.int8),
    "u8": (idx * 20).astype(np.uint8),
    "bool": (idx.astype(np.int64) % 3 == 0),
    "scalar": np.array(3.5, dtype=np.float32),
    "empty": np.zeros((0, 2), dtype=np.float32),
    "transposed": np.ascontiguousarray((idx.T * 2).astype(np.float32)),
}, plain, metadata={"format": "np", "author": "python"})

bits = np.array([0x3f80, 0xc000, 0x4040, 0x0000, 0x3f00, 0x4120], dtype=np.uint16)  # 1 -2 3 0 .5 10
f32 = np.array([1.5, -2.5], dtype=np.float32)
serialize_file({
    "bf16": TensorSpec(dtype="bfloat16", shape=[2, 3], data_ptr=bits.ctypes.data, data_len=bits.nbytes),
    "f32": TensorSpec(dtype="float32", shape=[2], data_ptr=f32.ctypes.data, data_len=f32.nbytes),
}, with_bf16, metadata={"k": "v"})
print("ok")
)PY";

double sum64(const at::Tensor& t) { return t.to(at::kDouble).sum().item<double>(); }

TEST(SafetensorsPython, CppWritesPythonReads) {
  REQUIRE_PYTHON();
  TempDir dir;
  write_bytes(dir / "read.py", kReadScript);

  const at::Tensor base = at::sin(at::arange(24, at::kDouble) * 0.37).reshape({4, 6}) * 5;
  NamedTensors plain = {
      {"f64", base},
      {"f32", base.to(at::kFloat).t()},  // non-contiguous
      {"f16", base.to(at::kHalf).slice(1, 0, 6, 2)},
      {"i64", (base * 1000).to(at::kLong)},
      {"i32", (base * -10).to(at::kInt)},
      {"i16", (base * 7).to(at::kShort)},
      {"i8", (base * 3).to(at::kChar)},
      {"u8", (base.abs() * 9).to(at::kByte)},
      {"bool", base > 0},
      {"scalar", at::scalar_tensor(-4.25, at::kFloat)},
      {"empty", at::empty({0, 7}, at::kFloat)},
  };
  NamedTensors with_bf16 = plain;
  with_bf16.emplace_back("bf16", base.to(at::kBFloat16));
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"run", "ünïcode"}};

  for (const auto* tensors : {&plain, &with_bf16}) {
    const fs::path file = dir / (tensors == &plain ? "plain.safetensors" : "bf16.safetensors");
    save_safetensors(file, *tensors, meta);
    const std::string out = run_python(dir / "read.py", {file.string()});
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(out)) << out;
    EXPECT_EQ(j.at("via"), tensors == &plain ? "load_file" : "deserialize");
    EXPECT_EQ(j.at("metadata").get<decltype(meta)>(), meta);
    ASSERT_EQ(j.at("tensors").size(), tensors->size()) << out;
    for (const auto& [name, t] : *tensors) {
      SCOPED_TRACE(name);
      const nlohmann::json& info = j.at("tensors").at(name);
      EXPECT_EQ(info.at("shape").get<std::vector<int64_t>>(), t.sizes().vec());
      const double expected = sum64(t);
      EXPECT_NEAR(info.at("sum").get<double>(), expected, 1e-9 * (1 + std::abs(expected)));
    }
  }
}

TEST(SafetensorsPython, PythonWritesCppReads) {
  REQUIRE_PYTHON();
  TempDir dir;
  write_bytes(dir / "write.py", kWriteScript);
  const fs::path plain = dir / "plain.safetensors";
  const fs::path bf16 = dir / "bf16.safetensors";
  EXPECT_EQ(run_python(dir / "write.py", {plain.string(), bf16.string()}), "ok\n");

  const SafetensorsFile f = load_safetensors(plain);
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "np"}, {"author", "python"}}));
  EXPECT_EQ(list_safetensors(plain).size(), 12u);
  const at::Tensor idx = at::arange(12, at::kDouble).reshape({3, 4});
  auto expect_tensor = [&](const std::string& name, const at::Tensor& want) {
    SCOPED_TRACE(name);
    const at::Tensor& got = f.tensors.at(name);
    EXPECT_EQ(got.scalar_type(), want.scalar_type());
    EXPECT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(at::equal(got, want));
  };
  expect_tensor("f64", idx * 0.25 - 1.0);
  expect_tensor("f32", (idx * 0.5).to(at::kFloat));
  expect_tensor("f16", (idx - 6).to(at::kHalf));
  expect_tensor("i64", (idx * 1000 - 3).to(at::kLong));
  expect_tensor("i32", (idx * -7).to(at::kInt));
  expect_tensor("i16", (idx * 3).to(at::kShort));
  expect_tensor("i8", (idx - 6).to(at::kChar));
  expect_tensor("u8", (idx * 20).to(at::kByte));
  expect_tensor("bool", idx.to(at::kLong).remainder(3) == 0);
  expect_tensor("scalar", at::scalar_tensor(3.5, at::kFloat));
  expect_tensor("empty", at::zeros({0, 2}, at::kFloat));
  expect_tensor("transposed", (idx.t() * 2).to(at::kFloat).contiguous());

  const SafetensorsFile g = load_safetensors(bf16);
  EXPECT_EQ(g.metadata.at("k"), "v");
  const at::Tensor b = g.tensors.at("bf16");
  EXPECT_EQ(b.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(b.to(at::kFloat),
                        at::tensor({1.0f, -2.0f, 3.0f, 0.0f, 0.5f, 10.0f}).reshape({2, 3})));
  EXPECT_TRUE(at::equal(g.tensors.at("f32"), at::tensor({1.5f, -2.5f})));

  // Re-saved by C++ (different byte layout than the Rust writer's), the content is unchanged.
  NamedTensors again(g.tensors.begin(), g.tensors.end());
  save_safetensors(dir / "again.safetensors", again, g.metadata);
  const SafetensorsFile h = load_safetensors(dir / "again.safetensors");
  for (const auto& [name, t] : g.tensors) EXPECT_TRUE(at::equal(h.tensors.at(name), t)) << name;
}

}  // namespace
}  // namespace tessera::io
