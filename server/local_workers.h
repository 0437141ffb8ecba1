#ifndef TLSERVE_SERVER_LOCAL_WORKERS_H_
#define TLSERVE_SERVER_LOCAL_WORKERS_H_

#include <string>
#include <sys/types.h>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tlserve {

// Starts N tlworker processes beside the server (the embedded single-machine
// setup) and restarts one that exits, with a back-off so a worker that
// crashes at start does not spin. Stops them (SIGTERM, then SIGKILL after a
// grace period) when destroyed.
class LocalWorkers {
 public:
  struct Options {
    int count = 0;
    std::string binary;          // path of tlworker
    std::string server_address;  // what the workers dial
    std::string cache_root;      // each worker gets <cache_root>/local-<i>
    int threads_per_worker = 0;  // 0: the worker's default
    // More flags for each worker (its token file, the CA to trust).
    std::vector<std::string> extra_args;
    // On stop, workers get SIGTERM and `drain` to hand their jobs back
    // with a checkpoint (tlworker --drain_seconds); after stop_grace they
    // are killed.
    absl::Duration drain = absl::Seconds(10);
    absl::Duration stop_grace = absl::Seconds(15);
  };
  explicit LocalWorkers(Options options);
  ~LocalWorkers();
  void Start();
  // Process ids now running (for tests and logs).
  std::vector<pid_t> Pids();

 private:
  pid_t Spawn(int index);
  void Supervise();

  Options options_;
  absl::Mutex mu_;
  std::vector<pid_t> pids_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_LOCAL_WORKERS_H_
