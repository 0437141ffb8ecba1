#include "server/inference_router.h"

#include <limits>
#include <vector>

#include "absl/strings/str_format.h"

namespace tlserve {

using tlserve::v1::PredictRequest;
using tlserve::v1::PredictResponse;

InferenceRouter::InferenceRouter(Options options, Store* store,
                                 Scheduler* scheduler)
    : options_(options), store_(store), scheduler_(scheduler) {}

InferenceRouter::~InferenceRouter() {
  std::map<std::string, Pending> left;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    left.swap(pending_);
  }
  if (thread_.joinable()) thread_.join();
  for (auto& [id, p] : left) {
    p.done(absl::UnavailableError("the server is shutting down"));
  }
}

void InferenceRouter::Start() { thread_ = std::thread([this] { Loop(); }); }

void InferenceRouter::Predict(const PredictRequest& request, absl::Time deadline,
                              Done done) {
  if (request.model_id().empty()) {
    done(absl::InvalidArgumentError("model_id is required"));
    return;
  }
  if (request.images_size() == 0 && request.tensor().contents().empty()) {
    done(absl::InvalidArgumentError(
        "give inputs as images (PNG/JPEG bytes) or as a tensor"));
    return;
  }
  if (request.top_k() < 0) {
    done(absl::InvalidArgumentError("top_k must be >= 0"));
    return;
  }
  auto model = store_->GetModel(request.model_id());
  if (!model.ok()) {
    done(model.status());
    return;
  }
  if (deadline == absl::InfiniteFuture()) {
    deadline = absl::Now() + options_.default_timeout;
  }

  // Least outstanding calls among workers that hold the model, else among all.
  std::vector<Scheduler::WorkerSnapshot> workers = scheduler_->Workers();
  std::string chosen;
  std::string request_id;
  {
    absl::MutexLock lock(&mu_);
    if (pending_.size() >= options_.max_pending) {
      done(absl::ResourceExhaustedError(absl::StrFormat(
          "%d inference calls pending, the limit; retry with backoff",
          pending_.size())));
      return;
    }
    int best = std::numeric_limits<int>::max();
    bool best_loaded = false;
    for (const auto& w : workers) {
      const bool loaded = w.loaded_models.count(request.model_id()) > 0;
      const int load = outstanding_[w.id];
      if ((loaded && !best_loaded) || (loaded == best_loaded && load < best)) {
        chosen = w.id;
        best = load;
        best_loaded = loaded;
      }
    }
    if (!chosen.empty()) {
      request_id = absl::StrFormat("inf-%d", next_id_++);
      pending_[request_id] = Pending{chosen, deadline, done};
      ++outstanding_[chosen];
    }
  }
  if (chosen.empty()) {
    done(absl::UnavailableError("no worker is connected to serve the model"));
    return;
  }
  tlserve::v1::ServerMessage message;
  auto* call = message.mutable_infer();
  call->set_request_id(request_id);
  call->set_model_id(model->id());
  call->mutable_model()->set_sha256(model->sha256());
  call->mutable_model()->set_size_bytes(model->size_bytes());
  *call->mutable_input_spec() = model->input_spec();
  *call->mutable_class_names() = model->class_names();
  *call->mutable_request() = request;
  call->set_timeout_ms(std::max<int64_t>(
      1, absl::ToInt64Milliseconds(deadline - absl::Now())));
  if (!scheduler_->SendTo(chosen, message)) {
    OnInferenceReply(chosen, [&] {
      tlserve::v1::InferenceReply reply;
      reply.set_request_id(request_id);
      reply.set_code(static_cast<int>(absl::StatusCode::kUnavailable));
      reply.set_message("the chosen worker disconnected; retry");
      return reply;
    }());
  }
}

void InferenceRouter::OnInferenceReply(const std::string& worker_id,
                                       const tlserve::v1::InferenceReply& reply) {
  Done done;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(reply.request_id());
    if (it == pending_.end() || it->second.worker_id != worker_id) return;
    done = std::move(it->second.done);
    pending_.erase(it);
    --outstanding_[worker_id];
  }
  if (reply.code() != 0) {
    done(absl::Status(static_cast<absl::StatusCode>(reply.code()), reply.message()));
    return;
  }
  PredictResponse response = reply.response();
  response.set_worker_id(worker_id);
  done(std::move(response));
}

void InferenceRouter::OnWorkerGone(const std::string& worker_id) {
  std::vector<Done> failed;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if (it->second.worker_id == worker_id) {
        failed.push_back(std::move(it->second.done));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
    outstanding_.erase(worker_id);
  }
  for (Done& done : failed) {
    done(absl::UnavailableError(absl::StrFormat(
        "worker %s went away while serving the call; retry", worker_id)));
  }
}

void InferenceRouter::Loop() {
  while (true) {
    std::vector<Done> expired;
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(10));
      if (stopping_) return;
      const absl::Time now = absl::Now();
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.deadline <= now) {
          --outstanding_[it->second.worker_id];
          expired.push_back(std::move(it->second.done));
          it = pending_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (Done& done : expired) {
      done(absl::DeadlineExceededError(
          "the deadline passed before a worker answered"));
    }
  }
}

}  // namespace tlserve
