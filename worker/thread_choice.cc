#include "worker/thread_choice.h"

#include <algorithm>
#include <utility>
#include <bit>

namespace tlserve::worker {

double ThreadChoice::Way::Median() const {
  const int n = std::min(samples, kWindow);
  if (n == 0) return 0;
  // Insertion sort of at most kWindow values (std::sort on a span this
  // small trips g++ 12's -Warray-bounds).
  std::array<double, kWindow> sorted = seconds;
  for (int i = 1; i < n; ++i) {
    for (int j = i; j > 0 && sorted[j] < sorted[j - 1]; --j) {
      std::swap(sorted[j], sorted[j - 1]);
    }
  }
  return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

int ThreadChoice::ClassOf(int64_t rows) {
  if (rows < 1 || rows > kMaxRows) return -1;
  // 1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, ... 33..64 -> 6.
  return static_cast<int>(std::bit_width(static_cast<uint64_t>(rows - 1)));
}

bool ThreadChoice::OneThread(int64_t rows) {
  const int c = ClassOf(rows);
  if (c < 0) return false;
  absl::MutexLock lock(&mu_);
  SizeClass& size_class = classes_[c];
  const int64_t batch = size_class.batches++;
  if (!size_class.Decided()) {
    // Whichever way has fewer timings (concurrent batches may not have
    // recorded yet); ties alternate.
    const int team = size_class.ways[0].samples;
    const int one = size_class.ways[1].samples;
    return one != team ? one < team : batch % 2 == 1;
  }
  const bool one = size_class.PrefersOne();
  return batch % kExplorePeriod == 0 ? !one : one;
}

void ThreadChoice::Record(int64_t rows, bool one_thread, absl::Duration took) {
  const int c = ClassOf(rows);
  if (c < 0) return;
  absl::MutexLock lock(&mu_);
  Way& way = classes_[c].ways[one_thread ? 1 : 0];
  way.seconds[way.samples % kWindow] = absl::ToDoubleSeconds(took);
  ++way.samples;
}

int64_t ThreadChoice::OneThreadMaxRows() const {
  absl::MutexLock lock(&mu_);
  int64_t rows = 0;
  for (int c = 0; c < kClasses; ++c) {
    if (!classes_[c].Decided() || !classes_[c].PrefersOne()) break;
    rows = int64_t{1} << c;
  }
  return rows;
}

}  // namespace tlserve::worker
