#ifndef TLSERVE_WORKER_THREAD_CHOICE_H_
#define TLSERVE_WORKER_THREAD_CHOICE_H_

#include <array>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tlserve::worker {

// Chooses, for one model (or shared backbone), whether a batch runs on one
// intra-op thread or on the worker's whole team, from how long its real
// batches took each way.
//
// Why from real batches: a timing at load, in a quiet process, did not
// predict the choice in service. The compact model's batch of one took
// 0.81-0.84 ms on two threads and 0.85-0.89 ms on one, timed in process
// after an idle gap; served, with the server and the client on the same
// two cores, it took 2.7-4.0 ms on two threads and 0.9 ms on one. The load
// timing picked two threads about half the time.
//
// Batch sizes fall into classes (1, 2, 3-4, 5-8, ... 33-64 rows); bigger
// batches always use the team. In each class the first batches alternate
// between the two ways until each has kMinSamples timings; then a batch
// takes the way with the lower median of its last kWindow timings, except
// one in kExplorePeriod, which takes the other way to keep its timings
// current (load and neighbours change). Thread-safe.
class ThreadChoice {
 public:
  static constexpr int64_t kMaxRows = 64;
  static constexpr int kClasses = 7;  // 1, 2, 4, ... 64
  static constexpr int kWindow = 8;
  static constexpr int kMinSamples = 3;
  static constexpr int64_t kExplorePeriod = 200;

  // Whether a batch of `rows` rows runs on one thread. Counts the batch.
  bool OneThread(int64_t rows);
  // How long a batch of `rows` rows took on the way OneThread chose.
  void Record(int64_t rows, bool one_thread, absl::Duration took);

  // The largest batch size up to which every class now prefers one thread
  // (0: none does, or still deciding). For logs and status.
  int64_t OneThreadMaxRows() const;

 private:
  struct Way {
    std::array<double, kWindow> seconds{};
    int samples = 0;  // all recorded; the window holds the last kWindow
    double Median() const;
  };
  struct SizeClass {
    Way ways[2];  // [0]: the team, [1]: one thread
    int64_t batches = 0;
    bool Decided() const {
      return ways[0].samples >= kMinSamples && ways[1].samples >= kMinSamples;
    }
    bool PrefersOne() const { return ways[1].Median() < ways[0].Median(); }
  };
  // -1 when `rows` is out of range.
  static int ClassOf(int64_t rows);

  mutable absl::Mutex mu_;
  std::array<SizeClass, kClasses> classes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_THREAD_CHOICE_H_
