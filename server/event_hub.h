#ifndef TLSERVE_SERVER_EVENT_HUB_H_
#define TLSERVE_SERVER_EVENT_HUB_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "absl/synchronization/mutex.h"

namespace tlserve {

// Tells watchers that a job has new events. It carries no events itself:
// a watcher reads them from the store after its last sequence, so a
// notification can never be lost between a read and a subscribe.
// Thread-safe; listeners run on the notifying thread with no lock held.
class EventHub {
 public:
  using Listener = std::function<void()>;

  uint64_t Subscribe(const std::string& job_id, Listener listener);
  // After it returns the listener is not called again, unless a call was
  // already under way on another thread.
  void Unsubscribe(uint64_t token);
  void Notify(const std::string& job_id);
  // Server shutdown: marks the hub closed and calls every listener once, so
  // that watchers see closed() and end their streams.
  void Close();
  bool closed();

 private:
  struct Entry {
    std::string job_id;
    Listener listener;
  };
  absl::Mutex mu_;
  uint64_t next_token_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Entry> entries_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_EVENT_HUB_H_
