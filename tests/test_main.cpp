#include <gtest/gtest.h>
#include <ATen/Parallel.h>

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // Small tensors: threads cost more than they save, and a fixed count keeps results repeatable.
  at::set_num_threads(1);
  return RUN_ALL_TESTS();
}
