#ifndef TLSERVE_SERVER_WORK_POOL_H_
#define TLSERVE_SERVER_WORK_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace tlserve {

// A fixed set of threads for work too slow for a gRPC reactor callback
// (decoding an uploaded dataset, for instance). Tasks must not throw. The
// destructor runs what is queued, then joins.
class WorkPool {
 public:
  explicit WorkPool(int threads);
  ~WorkPool();
  void Submit(std::function<void()> task);

 private:
  void Run();
  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_WORK_POOL_H_
