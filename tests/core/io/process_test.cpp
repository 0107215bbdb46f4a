#include <gtest/gtest.h>

#include "core/error.h"
#include "core/io/process.h"
#include "io_test_util.h"

namespace tessera::io {
namespace {

using testing::TempDir;

TEST(ChildProcess, RedirectsStreamsAndReportsTheExitCode) {
  TempDir dir;
  const auto out = dir.path() / "out.txt", err = dir.path() / "err.txt";
  // Arguments pass as they are: no shell sees the quote or the semicolon inside the first echo's text.
  ChildProcess child({"sh", "-c", "echo \"$0\"; echo oops >&2; exit 3", "a'b; rm -rf /nothing"}, out, err);
  EXPECT_EQ(child.wait(), 3);
  EXPECT_EQ(child.wait(), 3);  // idempotent
  EXPECT_EQ(tail_of_file(out), "a'b; rm -rf /nothing");
  EXPECT_EQ(tail_of_file(err), "oops");
  EXPECT_EQ(tail_of_file(err, 2), "...ps");
  EXPECT_EQ(tail_of_file(dir.path() / "missing.txt"), "");
}

TEST(ChildProcess, ReportsSignalsAndAMissingProgram) {
  ChildProcess killed({"sh", "-c", "kill -9 $$"}, {}, {});
  EXPECT_EQ(killed.wait(), 128 + 9);
  try {
    ChildProcess missing({"tessera-no-such-program-xyz"}, {}, {});
    FAIL() << "started a program that does not exist";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tessera-no-such-program-xyz"), std::string::npos) << e.what();
  }
}

TEST(ChildProcess, DestructorReapsAChildNotWaitedFor) {
  TempDir dir;
  const auto out = dir.path() / "out.txt";
  { ChildProcess child({"sh", "-c", "sleep 0.2; echo done"}, out, {}); }
  EXPECT_EQ(tail_of_file(out), "done");  // the destructor waited for it to finish
}

}  // namespace
}  // namespace tessera::io
