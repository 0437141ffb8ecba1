#include "server/event_hub.h"

#include <vector>

namespace tlserve {

uint64_t EventHub::Subscribe(const std::string& job_id, Listener listener) {
  absl::MutexLock lock(&mu_);
  uint64_t token = next_token_++;
  entries_[token] = Entry{job_id, std::move(listener)};
  return token;
}

void EventHub::Unsubscribe(uint64_t token) {
  absl::MutexLock lock(&mu_);
  entries_.erase(token);
}

void EventHub::Notify(const std::string& job_id) {
  std::vector<Listener> to_call;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [token, entry] : entries_) {
      if (entry.job_id == job_id) to_call.push_back(entry.listener);
    }
  }
  for (const Listener& listener : to_call) listener();
}

void EventHub::Close() {
  std::vector<Listener> to_call;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    for (const auto& [token, entry] : entries_) to_call.push_back(entry.listener);
  }
  for (const Listener& listener : to_call) listener();
}

bool EventHub::closed() {
  absl::MutexLock lock(&mu_);
  return closed_;
}

}  // namespace tlserve
