// ThreadChoice: one thread or the team per batch size, from timings.

#include "worker/thread_choice.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tlserve::worker {
namespace {

// Runs `n` batches of `rows` rows, each taking `one` on one thread and
// `team` on the team; returns how many ran on one thread.
int RunBatches(ThreadChoice* choice, int n, int64_t rows, absl::Duration one,
        absl::Duration team) {
  int on_one = 0;
  for (int i = 0; i < n; ++i) {
    const bool one_thread = choice->OneThread(rows);
    on_one += one_thread;
    choice->Record(rows, one_thread, one_thread ? one : team);
  }
  return on_one;
}

TEST(ThreadChoiceTest, TriesBothWaysThenKeepsTheFasterWithRareRechecks) {
  ThreadChoice choice;
  // The first batches alternate until each way has its minimum.
  std::vector<bool> first;
  for (int i = 0; i < 2 * ThreadChoice::kMinSamples; ++i) {
    const bool one = choice.OneThread(1);
    first.push_back(one);
    choice.Record(1, one, one ? absl::Microseconds(900)
                              : absl::Microseconds(2700));
  }
  EXPECT_EQ(std::count(first.begin(), first.end(), true),
            ThreadChoice::kMinSamples);
  EXPECT_EQ(choice.OneThreadMaxRows(), 1);

  // Then one thread, except one batch in kExplorePeriod on the team.
  const int n = 4 * ThreadChoice::kExplorePeriod;
  const int on_one = RunBatches(&choice, n, 1, absl::Microseconds(900),
                         absl::Microseconds(2700));
  EXPECT_EQ(n - on_one, 4);
  EXPECT_EQ(choice.OneThreadMaxRows(), 1);
}

TEST(ThreadChoiceTest, PrefersTheTeamWhereItIsFaster) {
  ThreadChoice choice;
  const int n = 2 * ThreadChoice::kExplorePeriod + 1;
  const int on_one =
      RunBatches(&choice, n, 32, absl::Milliseconds(8), absl::Milliseconds(5));
  // Only the first tries and the rechecks ran on one thread.
  EXPECT_EQ(on_one, ThreadChoice::kMinSamples + 2);
  EXPECT_EQ(choice.OneThreadMaxRows(), 0);
}

TEST(ThreadChoiceTest, SizeClassesDecideApart) {
  ThreadChoice choice;
  // 1 and 2 rows: one thread wins; 3-4 rows: the team wins.
  RunBatches(&choice, 50, 1, absl::Microseconds(500), absl::Microseconds(900));
  RunBatches(&choice, 50, 2, absl::Microseconds(700), absl::Microseconds(1000));
  RunBatches(&choice, 50, 4, absl::Microseconds(1500), absl::Microseconds(1100));
  EXPECT_EQ(choice.OneThreadMaxRows(), 2);
  EXPECT_TRUE(choice.OneThread(2));
  EXPECT_FALSE(choice.OneThread(3));  // 3 rows are in the 3-4 class
  // Batches over kMaxRows rows (and empty ones) always use the team, and
  // their timings are ignored.
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(choice.OneThread(ThreadChoice::kMaxRows + 1));
    EXPECT_FALSE(choice.OneThread(0));
  }
  choice.Record(ThreadChoice::kMaxRows + 1, true, absl::Microseconds(1));
}

TEST(ThreadChoiceTest, FollowsAChangeAndIgnoresAnOutlier) {
  ThreadChoice choice;
  RunBatches(&choice, 50, 1, absl::Microseconds(900), absl::Microseconds(2700));
  ASSERT_EQ(choice.OneThreadMaxRows(), 1);
  // One very slow batch on one thread: the median does not move.
  choice.Record(1, true, absl::Milliseconds(50));
  EXPECT_EQ(choice.OneThreadMaxRows(), 1);
  // The team's cores free up (a neighbour stopped): the rechecks see it,
  // and once most of one thread's window is slower, the team takes over.
  const int n = 10 * ThreadChoice::kExplorePeriod;
  RunBatches(&choice, n, 1, absl::Microseconds(900), absl::Microseconds(400));
  EXPECT_EQ(choice.OneThreadMaxRows(), 0);
}

TEST(ThreadChoiceTest, ConcurrentBatchesAreSafe) {
  ThreadChoice choice;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&choice, t] {
      RunBatches(&choice, 500, 1 + t, absl::Microseconds(100),
          absl::Microseconds(200));
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(choice.OneThreadMaxRows(), 4);
}

}  // namespace
}  // namespace tlserve::worker
