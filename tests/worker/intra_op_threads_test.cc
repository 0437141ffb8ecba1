#include "worker/intra_op_threads.h"

#include <ATen/Parallel.h>

#include <thread>

#include "gtest/gtest.h"

namespace tlserve::worker {
namespace {

TEST(ScopedIntraOpThreadsTest, SetsOnlyThisThreadsCountForTheScope) {
  ASSERT_TRUE(ScopedIntraOpThreads::Supported())
      << "Debian's LibTorch is built with OpenMP: " << at::get_parallel_info();
  at::set_num_threads(2);
  {
    ScopedIntraOpThreads one(1);
    // What LibTorch's own parallel ops read (at::parallel_for inlined here
    // would not show it: this file is not built with OpenMP).
    EXPECT_EQ(at::get_num_threads(), 1);
    // Unlike at::set_num_threads, the process default stays: a thread
    // started now still gets two.
    int other_threads = 0;
    std::thread other([&] { other_threads = at::get_num_threads(); });
    other.join();
    EXPECT_EQ(other_threads, 2);
  }
  EXPECT_EQ(at::get_num_threads(), 2);
}

TEST(ScopedIntraOpThreadsTest, NestsAndIgnoresNonPositiveCounts) {
  at::set_num_threads(2);
  {
    ScopedIntraOpThreads none(0);
    EXPECT_EQ(at::get_num_threads(), 2);
    ScopedIntraOpThreads one(1);
    {
      ScopedIntraOpThreads two(2);
      EXPECT_EQ(at::get_num_threads(), 2);
    }
    EXPECT_EQ(at::get_num_threads(), 1);
  }
  EXPECT_EQ(at::get_num_threads(), 2);
}

}  // namespace
}  // namespace tlserve::worker
