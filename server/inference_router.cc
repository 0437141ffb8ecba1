#include "server/inference_router.h"

#include <algorithm>
#include <limits>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tlserve {
namespace {

using tlserve::v1::EmbedRequest;
using tlserve::v1::EmbedResponse;
using tlserve::v1::InferenceItem;
using tlserve::v1::InferenceResult;
using tlserve::v1::PredictRequest;
using tlserve::v1::PredictResponse;

// How stale the router's copy of the scheduler's worker list may get; a
// lost worker is dropped at once through OnWorkerGone.
constexpr absl::Duration kWorkerRefresh = absl::Milliseconds(100);
// The deadline loop's tick when nothing is due sooner.
constexpr absl::Duration kTick = absl::Milliseconds(10);

// Rows the call sends: images, texts, or the tensor's first dimension (a
// bad shape counts as one; the worker rejects it).
int64_t InputCount(const PredictRequest& request) {
  if (request.images_size() > 0) return request.images_size();
  if (request.texts_size() > 0) return request.texts_size();
  if (request.tensor().shape_size() > 0 && request.tensor().shape(0) > 0) {
    return request.tensor().shape(0);
  }
  return 1;
}

// One kind of input per call; whether it fits the model (a text model
// takes texts, an image model images or a tensor) is the worker's check.
absl::Status CheckInputs(const std::string& model_id, int images, int texts,
                         const tlserve::v1::RawTensor& tensor) {
  if (model_id.empty()) return absl::InvalidArgumentError("model_id is required");
  const bool has_tensor = tensor.shape_size() > 0 || !tensor.contents().empty();
  const int kinds = (images > 0) + (texts > 0) + has_tensor;
  if (kinds == 0) {
    return absl::InvalidArgumentError(
        "give inputs as images (PNG/JPEG bytes), as a tensor, or as texts "
        "(text models)");
  }
  if (kinds > 1) {
    return absl::InvalidArgumentError(
        "give inputs as images, as a tensor or as texts, only one of them");
  }
  return absl::OkStatus();
}

}  // namespace

InferenceRouter::InferenceRouter(Options options, Store* store,
                                 Scheduler* scheduler)
    : options_(options), store_(store), scheduler_(scheduler) {
  options_.max_batch_size = std::max(1, options_.max_batch_size);
  options_.max_queue_size = std::max(1, options_.max_queue_size);
  options_.max_batches_per_worker = std::max(1, options_.max_batches_per_worker);
}

InferenceRouter::~InferenceRouter() {
  std::vector<Completion> left;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    auto fail = [&](const CallPtr& call) {
      if (call->completed) return;
      call->completed = true;
      left.push_back({std::move(call->done),
                      absl::UnavailableError("the server is shutting down")});
    };
    for (auto& [key, lane] : lanes_) {
      for (const CallPtr& call : lane.calls) fail(call);
      lane.calls.clear();
    }
    for (auto& [id, batch] : in_flight_) {
      for (const CallPtr& call : batch.calls) fail(call);
    }
    in_flight_.clear();
  }
  if (thread_.joinable()) thread_.join();
  Run(std::move(left));
}

void InferenceRouter::Start() { thread_ = std::thread([this] { Loop(); }); }

void InferenceRouter::Predict(const PredictRequest& request, absl::Time deadline,
                              PredictDone done, absl::string_view tenant) {
  absl::Status ok = CheckInputs(request.model_id(), request.images_size(),
                                request.texts_size(), request.tensor());
  if (ok.ok() && request.top_k() < 0) {
    ok = absl::InvalidArgumentError(
        absl::StrCat("top_k ", request.top_k(), " is negative"));
  }
  if (!ok.ok()) {
    done(ok);
    return;
  }
  InferenceItem item;
  *item.mutable_request() = request;
  item.mutable_request()->clear_model_id();
  Infer(request.model_id(), std::move(item), deadline,
        [done = std::move(done)](absl::StatusOr<InferenceResult> result) {
          if (!result.ok()) return done(result.status());
          done(std::move(*result->mutable_prediction()));
        },
        tenant);
}

void InferenceRouter::Embed(const EmbedRequest& request, absl::Time deadline,
                            EmbedDone done, absl::string_view tenant) {
  absl::Status ok = CheckInputs(request.model_id(), request.images_size(),
                                request.texts_size(), request.tensor());
  if (!ok.ok()) {
    done(ok);
    return;
  }
  InferenceItem item;
  item.set_embed(true);
  *item.mutable_request()->mutable_images() = request.images();
  *item.mutable_request()->mutable_texts() = request.texts();
  if (request.has_tensor()) {
    *item.mutable_request()->mutable_tensor() = request.tensor();
  }
  Infer(request.model_id(), std::move(item), deadline,
        [done = std::move(done)](absl::StatusOr<InferenceResult> result) {
          if (!result.ok()) return done(result.status());
          done(std::move(*result->mutable_embedding()));
        },
        tenant);
}

void InferenceRouter::Infer(const std::string& model_id, InferenceItem item,
                            absl::Time deadline, ResultDone done,
                            absl::string_view tenant) {
  const absl::Time now = absl::Now();
  if (deadline == absl::InfiniteFuture()) deadline = now + options_.default_timeout;
  bool known = false;
  absl::Status unknown;
  {
    absl::MutexLock lock(&mu_);
    auto it = queues_.find(model_id);
    known = it != queues_.end() && !it->second.tenant.empty();
    // Another tenant's model is not found, word for word as in the store.
    if (known && tenant != kEveryTenant && it->second.tenant != tenant) {
      unknown = absl::NotFoundError(absl::StrCat("model '", model_id, "' not found"));
    }
  }
  std::optional<tlserve::v1::Model> stored;
  if (!known) {
    // Models do not change once stored (Deploy and Undeploy tell the router
    // themselves), so the store is read once per model.
    absl::StatusOr<tlserve::v1::Model> got = store_->GetModel(model_id, tenant);
    if (got.ok()) {
      stored = *std::move(got);
    } else {
      unknown = got.status();
    }
  }
  if (!unknown.ok()) {
    if (metrics_ != nullptr) {
      metrics_->Call(InferenceMetrics::kUnknownModel, unknown.code(),
                     absl::Now() - now, nullptr);
    }
    done(unknown);
    return;
  }

  const int64_t bytes = static_cast<int64_t>(item.ByteSizeLong());
  if (bytes > options_.max_batch_bytes) {
    done(absl::InvalidArgumentError(absl::StrFormat(
        "the call's inputs take %d bytes, over the %d-byte limit of one "
        "batch; send fewer or smaller inputs per call",
        bytes, options_.max_batch_bytes)));
    return;
  }
  auto call = std::make_shared<Call>();
  call->model_id = model_id;
  call->inputs = InputCount(item.request());
  call->bytes = bytes;
  call->item = std::move(item);
  call->deadline = deadline;
  call->enqueued = now;
  call->done = std::move(done);

  absl::Status refused;
  std::vector<Outgoing> outgoing;
  std::vector<Completion> completions;
  {
    absl::MutexLock lock(&mu_);
    auto it = queues_.find(model_id);
    ModelQueue& queue = it != queues_.end() || !stored.has_value()
                            ? queues_[model_id]
                            : UpdateModelLocked(ServedModel(*stored),
                                                stored->serving());
    if (queue.tenant.empty() && stored.has_value()) queue.tenant = stored->tenant();
    call->lane = queue.lane;
    RefreshWorkersLocked(now, /*force=*/false);
    if (stopping_) {
      refused = absl::UnavailableError("the server is shutting down");
    } else if (queue.serving.undeployed()) {
      refused = absl::FailedPreconditionError(absl::StrCat(
          "model ", model_id, " is undeployed; deploy it again with `tlctl "
          "model deploy ", model_id, "`"));
    } else if (workers_.empty()) {
      RefreshWorkersLocked(now, /*force=*/true);
    }
    if (refused.ok() && workers_.empty()) {
      refused = absl::UnavailableError(
          "no worker is connected to serve the model; start a tlworker");
    } else if (refused.ok() && queue.queued_calls >= MaxQueue(queue)) {
      refused = absl::ResourceExhaustedError(absl::StrFormat(
          "model %s has %d calls queued, the limit; retry with backoff or add "
          "workers",
          model_id, queue.queued_calls));
    }
    if (refused.ok()) {
      Lane& lane = lanes_[queue.lane];
      lane.calls.push_back(call);
      lane.queued_inputs += call->inputs;
      ++queue.queued_calls;
      outgoing = DispatchLocked(now);
    } else {
      FinishLocked(call, refused, now, &completions);
    }
  }
  Send(std::move(outgoing));
  Run(std::move(completions));
}

void InferenceRouter::FinishLocked(const CallPtr& call,
                                   absl::StatusOr<InferenceResult> result,
                                   absl::Time now,
                                   std::vector<Completion>* completions) {
  if (call->completed) return;
  call->completed = true;
  const std::string& model_id = call->model_id;
  ModelStats& stats = queues_[model_id].stats;
  if (result.ok()) {
    stats.success.Add(now - call->enqueued);
    stats.inference_count += static_cast<uint64_t>(call->inputs);
    stats.last_inference = now;
  } else {
    stats.fail.Add(now - call->enqueued);
  }
  if (call->attempts > 0) stats.queue.Add(call->dispatched - call->enqueued);
  if (metrics_ != nullptr) {
    const absl::Duration queued = call->dispatched - call->enqueued;
    metrics_->Call(model_id, result.status().code(), now - call->enqueued,
                   call->attempts > 0 ? &queued : nullptr);
  }
  completions->push_back({std::move(call->done), std::move(result)});
}

std::vector<InferenceRouter::ModelStats> InferenceRouter::Stats(
    const std::string& model_id, absl::string_view tenant) {
  absl::MutexLock lock(&mu_);
  std::vector<ModelStats> out;
  for (const auto& [id, queue] : queues_) {
    if (!model_id.empty() && id != model_id) continue;
    if (tenant != kEveryTenant && queue.tenant != tenant) continue;
    out.push_back(queue.stats);
    out.back().model_id = id;
  }
  return out;
}

bool InferenceRouter::WaitIdle(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    if (!in_flight_.empty()) return false;
    for (const auto& [key, lane] : lanes_) {
      if (!lane.calls.empty()) return false;
    }
    return true;
  };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

int InferenceRouter::ConnectedWorkers() {
  absl::MutexLock lock(&mu_);
  RefreshWorkersLocked(absl::Now(), /*force=*/true);
  return static_cast<int>(workers_.size());
}

int64_t InferenceRouter::MaxBatch(const ModelQueue& queue) const {
  return queue.serving.has_max_batch_size() ? queue.serving.max_batch_size()
                                            : options_.max_batch_size;
}

absl::Duration InferenceRouter::MaxDelay(const ModelQueue& queue) const {
  return queue.serving.has_max_queue_delay_us()
             ? absl::Microseconds(queue.serving.max_queue_delay_us())
             : options_.max_queue_delay;
}

size_t InferenceRouter::MaxQueue(const ModelQueue& queue) const {
  return static_cast<size_t>(queue.serving.has_max_queue_size()
                                 ? queue.serving.max_queue_size()
                                 : options_.max_queue_size);
}

int64_t InferenceRouter::MaxBatch(const Lane& lane) const {
  int64_t most = std::numeric_limits<int64_t>::max();
  for (const std::string& id : lane.models) {
    if (auto it = queues_.find(id);
        it != queues_.end() && !it->second.serving.undeployed()) {
      most = std::min(most, MaxBatch(it->second));
    }
  }
  return most == std::numeric_limits<int64_t>::max() ? options_.max_batch_size
                                                     : most;
}

absl::Duration InferenceRouter::MaxDelay(const Lane& lane) const {
  absl::Duration least = absl::InfiniteDuration();
  for (const std::string& id : lane.models) {
    if (auto it = queues_.find(id);
        it != queues_.end() && !it->second.serving.undeployed()) {
      least = std::min(least, MaxDelay(it->second));
    }
  }
  return least == absl::InfiniteDuration() ? options_.max_queue_delay : least;
}

tlserve::v1::InferenceModel InferenceRouter::ServedModel(
    const tlserve::v1::Model& model) const {
  tlserve::v1::InferenceModel served;
  served.set_model_id(model.id());
  served.mutable_model()->set_sha256(model.sha256());
  served.mutable_model()->set_size_bytes(model.size_bytes());
  *served.mutable_input_spec() = model.input_spec();
  *served.mutable_class_names() = model.class_names();
  *served.mutable_tasks() = model.tasks();
  if (model.has_text()) *served.mutable_text() = model.text();
  if (options_.share_backbones && !model.backbone_digest().empty()) {
    served.set_shared_backbone(
        absl::StrCat(model.backbone_id(), "/", model.backbone_digest()));
  }
  return served;
}

InferenceRouter::ModelQueue& InferenceRouter::UpdateModelLocked(
    const tlserve::v1::InferenceModel& served,
    const tlserve::v1::ServingConfig& serving) {
  ModelQueue& queue = queues_[served.model_id()];
  queue.model = served;
  queue.serving = serving;
  if (queue.lane.empty()) {
    // A model never changes lanes: its backbone digest is fixed.
    queue.lane = served.shared_backbone().empty()
                     ? absl::StrCat("model/", served.model_id())
                     : absl::StrCat("backbone/", served.shared_backbone());
    lanes_[queue.lane].models.insert(served.model_id());
  }
  return queue;
}

absl::StatusOr<tlserve::v1::Model> InferenceRouter::Deploy(
    const std::string& model_id, const tlserve::v1::ServingConfig& serving,
    absl::string_view tenant) {
  if (model_id.empty()) return absl::InvalidArgumentError("id: a model id is required");
  if (serving.has_max_batch_size() &&
      (serving.max_batch_size() < 1 || serving.max_batch_size() > 4096)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "serving.max_batch_size ", serving.max_batch_size(),
        " is outside 1..4096"));
  }
  if (serving.has_max_queue_delay_us() &&
      (serving.max_queue_delay_us() < 0 ||
       serving.max_queue_delay_us() > 10'000'000)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "serving.max_queue_delay_us ", serving.max_queue_delay_us(),
        " is outside 0..10000000 (10 s)"));
  }
  if (serving.has_max_queue_size() &&
      (serving.max_queue_size() < 1 || serving.max_queue_size() > 1'000'000)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "serving.max_queue_size ", serving.max_queue_size(),
        " is outside 1..1000000"));
  }
  absl::MutexLock lifecycle(&lifecycle_mu_);
  absl::StatusOr<tlserve::v1::Model> model = store_->GetModel(model_id, tenant);
  if (!model.ok()) return model.status();
  *model->mutable_serving() = serving;
  model->mutable_serving()->set_undeployed(false);
  if (absl::Status stored = store_->PutModel(*model); !stored.ok()) {
    return stored;
  }
  std::vector<Outgoing> outgoing;
  {
    absl::MutexLock lock(&mu_);
    ModelQueue& queue = UpdateModelLocked(ServedModel(*model), model->serving());
    queue.tenant = model->tenant();
    // Warm-up: a batch with the model and no items makes the least loaded
    // worker load it now, so the first caller does not wait for that.
    RefreshWorkersLocked(absl::Now(), /*force=*/true);
    std::string chosen;
    int fewest = std::numeric_limits<int>::max();
    for (const auto& [id, w] : workers_) {
      if (w.models.count(model_id) > 0) {
        chosen.clear();  // already held somewhere: no warm-up needed
        break;
      }
      if (w.batches < fewest) {
        chosen = id;
        fewest = w.batches;
      }
    }
    if (!chosen.empty()) {
      Outgoing out;
      out.worker_id = chosen;
      out.batch_id = absl::StrCat("b-", next_batch_++);
      out.message.mutable_infer()->set_request_id(out.batch_id);
      out.message.mutable_infer()->set_timeout_ms(60'000);
      *out.message.mutable_infer()->add_models() = queue.model;
      Batch batch;
      batch.worker_id = chosen;
      WorkerState& worker = workers_[chosen];
      ++worker.batches;
      worker.models.insert(model_id);
      in_flight_.emplace(out.batch_id, std::move(batch));
      outgoing.push_back(std::move(out));
    }
    std::vector<Outgoing> more = DispatchLocked(absl::Now());
    for (Outgoing& o : more) outgoing.push_back(std::move(o));
  }
  Send(std::move(outgoing));
  return model;
}

absl::StatusOr<tlserve::v1::Model> InferenceRouter::Undeploy(
    const std::string& model_id, absl::string_view tenant) {
  if (model_id.empty()) return absl::InvalidArgumentError("id: a model id is required");
  absl::MutexLock lifecycle(&lifecycle_mu_);
  absl::StatusOr<tlserve::v1::Model> model = store_->GetModel(model_id, tenant);
  if (!model.ok()) return model.status();
  model->mutable_serving()->set_undeployed(true);
  if (absl::Status stored = store_->PutModel(*model); !stored.ok()) {
    return stored;
  }
  std::vector<Completion> completions;
  std::vector<Outgoing> outgoing;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    auto it = queues_.find(model_id);
    if (it != queues_.end()) {
      ModelQueue& queue = it->second;
      queue.serving = model->serving();
      Lane& lane = lanes_[queue.lane];
      for (auto c = lane.calls.begin(); c != lane.calls.end();) {
        if ((*c)->model_id != model_id) {
          ++c;
          continue;
        }
        FinishLocked(*c,
                     absl::FailedPreconditionError(absl::StrCat(
                         "model ", model_id, " was undeployed while the call "
                         "waited")),
                     now, &completions);
        lane.queued_inputs -= (*c)->inputs;
        c = lane.calls.erase(c);
      }
      queue.queued_calls = 0;
    }
    // Every worker that holds it drops it (no reply is awaited).
    RefreshWorkersLocked(now, /*force=*/true);
    for (auto& [id, w] : workers_) {
      if (w.models.erase(model_id) == 0) continue;
      Outgoing out;
      out.worker_id = id;
      out.batch_id = absl::StrCat("unload-", next_batch_++);
      out.message.mutable_infer()->set_request_id(out.batch_id);
      out.message.mutable_infer()->add_unload_model_ids(model_id);
      outgoing.push_back(std::move(out));
    }
  }
  // An unload the worker never gets (it went away) needs no retry.
  for (Outgoing& out : outgoing) scheduler_->SendTo(out.worker_id, out.message);
  Run(std::move(completions));
  return model;
}

void InferenceRouter::RefreshWorkersLocked(absl::Time now, bool force) {
  if (!force && now - workers_refreshed_ < kWorkerRefresh) return;
  workers_refreshed_ = now;
  // Scheduler::Workers takes the scheduler's lock, never ours, so calling
  // it under mu_ cannot deadlock.
  std::set<std::string> seen;
  for (const Scheduler::WorkerSnapshot& w : scheduler_->Workers()) {
    WorkerState& state = workers_[w.id];
    state.models.insert(w.loaded_models.begin(), w.loaded_models.end());
    seen.insert(w.id);
  }
  for (auto it = workers_.begin(); it != workers_.end();) {
    // A worker with batches in flight stays until OnWorkerGone, so its
    // batches are accounted for.
    if (seen.count(it->first) == 0 && it->second.batches == 0) {
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<InferenceRouter::Outgoing> InferenceRouter::DispatchLocked(
    absl::Time now) {
  std::vector<Outgoing> outgoing;
  if (stopping_) return outgoing;
  while (true) {
    // The ready lane whose oldest call has waited longest goes first.
    Lane* next = nullptr;
    int64_t max_batch = 0;
    for (auto& [key, lane] : lanes_) {
      if (lane.calls.empty()) continue;
      const int64_t lane_max = MaxBatch(lane);
      const bool ready = lane.queued_inputs >= lane_max ||
                         now - lane.calls.front()->enqueued >= MaxDelay(lane);
      if (!ready) continue;
      if (next == nullptr ||
          lane.calls.front()->enqueued < next->calls.front()->enqueued) {
        next = &lane;
        max_batch = lane_max;
      }
    }
    if (next == nullptr) return outgoing;
    const std::string& front_model = next->calls.front()->model_id;

    // Least loaded holder (of the oldest call's model) with room; else a
    // worker that does not hold it: any with room when no worker holds it,
    // an idle one otherwise.
    std::string chosen;
    int chosen_batches = std::numeric_limits<int>::max();
    bool held_anywhere = false;
    for (const auto& [id, w] : workers_) {
      const bool holds = w.models.count(front_model) > 0;
      held_anywhere = held_anywhere || holds;
      if (holds && w.batches < options_.max_batches_per_worker &&
          w.batches < chosen_batches) {
        chosen = id;
        chosen_batches = w.batches;
      }
    }
    if (chosen.empty()) {
      for (const auto& [id, w] : workers_) {
        const int limit = held_anywhere ? 1 : options_.max_batches_per_worker;
        if (w.batches < limit && w.batches < chosen_batches) {
          chosen = id;
          chosen_batches = w.batches;
        }
      }
    }
    if (chosen.empty()) {
      // Every suitable worker is busy: this lane waits for a reply. Other
      // lanes might still fit on other workers, but keeping strict oldest-
      // first order is simpler and fair; a reply re-runs dispatch.
      return outgoing;
    }

    Outgoing out;
    out.worker_id = chosen;
    out.batch_id = absl::StrCat("b-", next_batch_++);
    tlserve::v1::InferenceCall* call_msg = out.message.mutable_infer();
    call_msg->set_request_id(out.batch_id);
    Batch batch;
    batch.worker_id = chosen;
    WorkerState& worker = workers_[chosen];
    // The batch's models, each sent once; items point at them.
    absl::flat_hash_map<std::string, int> model_index;
    int64_t inputs = 0;
    int64_t bytes = 0;
    absl::Time latest = now;
    while (!next->calls.empty()) {
      const CallPtr& call = next->calls.front();
      if (!batch.calls.empty() &&
          (inputs + call->inputs > max_batch ||
           bytes + call->bytes > options_.max_batch_bytes)) {
        break;
      }
      ModelQueue& queue = queues_[call->model_id];
      auto [index, added] = model_index.try_emplace(
          call->model_id, static_cast<int>(model_index.size()));
      if (added) {
        *call_msg->add_models() = queue.model;
        worker.models.insert(call->model_id);
      }
      --queue.queued_calls;
      inputs += call->inputs;
      bytes += call->bytes;
      latest = std::max(latest, call->deadline);
      ++call->attempts;
      call->dispatched = now;
      tlserve::v1::InferenceItem* item = call_msg->add_items();
      *item = call->item;
      item->set_model_index(index->second);
      batch.calls.push_back(call);
      next->calls.pop_front();
    }
    next->queued_inputs -= inputs;
    batch.inputs = inputs;
    // The latest deadline: the worker must not drop a batch while any of
    // its callers still waits; the router expires the others itself.
    call_msg->set_timeout_ms(
        std::max<int64_t>(1, absl::ToInt64Milliseconds(latest - now)));
    ++worker.batches;
    in_flight_.emplace(out.batch_id, std::move(batch));
    outgoing.push_back(std::move(out));
  }
}

void InferenceRouter::Send(std::vector<Outgoing> outgoing) {
  for (Outgoing& out : outgoing) {
    if (scheduler_->SendTo(out.worker_id, out.message)) continue;
    // The worker went away between the choice and the send: the same as
    // losing it with the batch in flight.
    tlserve::v1::InferenceReply lost;
    lost.set_request_id(out.batch_id);
    lost.set_code(static_cast<int>(absl::StatusCode::kUnavailable));
    lost.set_message(
        absl::StrCat("worker ", out.worker_id, " disconnected before the batch "
                     "reached it"));
    OnInferenceReply(out.worker_id, lost);
  }
}

void InferenceRouter::RequeueLocked(std::vector<CallPtr> calls,
                                    const std::string& why,
                                    std::vector<Completion>* completions) {
  const absl::Time now = absl::Now();
  // Back to the front of their lanes, in their original order.
  for (auto it = calls.rbegin(); it != calls.rend(); ++it) {
    const CallPtr& call = *it;
    if (call->completed) continue;
    if (call->attempts > options_.max_retries || stopping_) {
      FinishLocked(call,
                   absl::UnavailableError(absl::StrCat(
                       why, "; the call was tried ", call->attempts,
                       " times, retry later")),
                   now, completions);
      continue;
    }
    Lane& lane = lanes_[call->lane];
    lane.calls.push_front(call);
    lane.queued_inputs += call->inputs;
    ++queues_[call->model_id].queued_calls;
  }
}

void InferenceRouter::OnInferenceReply(const std::string& worker_id,
                                       const tlserve::v1::InferenceReply& reply) {
  std::vector<Completion> completions;
  std::vector<Outgoing> outgoing;
  {
    absl::MutexLock lock(&mu_);
    auto it = in_flight_.find(reply.request_id());
    if (it == in_flight_.end() || it->second.worker_id != worker_id) return;
    Batch batch = std::move(it->second);
    in_flight_.erase(it);
    auto w = workers_.find(worker_id);
    if (w != workers_.end()) --w->second.batches;

    const auto code = static_cast<absl::StatusCode>(reply.code());
    if (code == absl::StatusCode::kUnavailable ||
        code == absl::StatusCode::kResourceExhausted) {
      // The worker could not take the batch: another may.
      RequeueLocked(std::move(batch.calls),
                    absl::StrCat("worker ", worker_id, ": ", reply.message()),
                    &completions);
    }
    // Resolve each call.
    const absl::Time now = absl::Now();
    const bool whole_batch_failed = code != absl::StatusCode::kOk;
    const bool sizes_match =
        static_cast<size_t>(reply.results_size()) == batch.calls.size();
    if (!whole_batch_failed && !batch.calls.empty()) {
      // Each model of the batch counts one execution of its own rows (a
      // batch on a shared backbone holds several models).
      std::map<std::string, int64_t> rows;
      for (const CallPtr& call : batch.calls) rows[call->model_id] += call->inputs;
      const absl::Duration compute = absl::Seconds(reply.compute_seconds());
      for (const auto& [model_id, n] : rows) {
        ModelStats& stats = queues_[model_id].stats;
        ++stats.execution_count;
        stats.compute.Add(compute);
        stats.batches[n].Add(compute);
        if (metrics_ != nullptr) metrics_->Batch(model_id, n, compute);
      }
    }
    for (size_t i = 0; i < batch.calls.size(); ++i) {
      const CallPtr& call = batch.calls[i];
      if (call->completed) continue;
      absl::StatusOr<InferenceResult> result;
      if (whole_batch_failed) {
        result = absl::Status(code, reply.message());
      } else if (!sizes_match) {
        result = absl::InternalError(absl::StrFormat(
            "worker %s answered %d results for a batch of %d", worker_id,
            reply.results_size(), batch.calls.size()));
      } else if (reply.results(i).code() != 0) {
        result = absl::Status(
            static_cast<absl::StatusCode>(reply.results(i).code()),
            reply.results(i).message());
      } else {
        result = reply.results(i);
      }
      FinishLocked(call, std::move(result), now, &completions);
    }
    outgoing = DispatchLocked(now);
  }
  Send(std::move(outgoing));
  Run(std::move(completions));
}

void InferenceRouter::OnWorkerGone(const std::string& worker_id) {
  std::vector<Completion> completions;
  std::vector<Outgoing> outgoing;
  {
    absl::MutexLock lock(&mu_);
    workers_.erase(worker_id);
    for (auto it = in_flight_.begin(); it != in_flight_.end();) {
      if (it->second.worker_id != worker_id) {
        ++it;
        continue;
      }
      RequeueLocked(std::move(it->second.calls),
                    absl::StrCat("worker ", worker_id,
                                 " went away while serving the call"),
                    &completions);
      in_flight_.erase(it++);
    }
    RefreshWorkersLocked(absl::Now(), /*force=*/true);
    workers_.erase(worker_id);
    outgoing = DispatchLocked(absl::Now());
  }
  Send(std::move(outgoing));
  Run(std::move(completions));
}

void InferenceRouter::Run(std::vector<Completion> completions) {
  for (Completion& c : completions) c.done(std::move(c.result));
}

void InferenceRouter::Loop() {
  while (true) {
    std::vector<Completion> completions;
    std::vector<Outgoing> outgoing;
    {
      absl::MutexLock lock(&mu_);
      // Wake for the next queue delay to run out, or at the tick.
      // (A queue already past its delay waits for a worker's reply, which
      // dispatches it.)
      const absl::Time before = absl::Now();
      absl::Time wake = before + kTick;
      for (const auto& [key, lane] : lanes_) {
        if (lane.calls.empty()) continue;
        const absl::Duration delay = MaxDelay(lane);
        if (delay <= absl::ZeroDuration()) continue;
        const absl::Time due = lane.calls.front()->enqueued + delay;
        if (due > before) wake = std::min(wake, due);
      }
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithDeadline(absl::Condition(&stop), wake);
      if (stopping_) return;
      const absl::Time now = absl::Now();
      auto expire = [&](const CallPtr& call) {
        if (call->completed || call->deadline > now) return false;
        FinishLocked(call,
                     absl::DeadlineExceededError(absl::StrCat(
                         "the deadline passed after ",
                         absl::FormatDuration(now - call->enqueued),
                         call->attempts == 0 ? " in the queue" : " on a worker",
                         "; raise the deadline or add workers")),
                     now, &completions);
        return true;
      };
      for (auto& [key, lane] : lanes_) {
        for (auto it = lane.calls.begin(); it != lane.calls.end();) {
          if (expire(*it)) {
            lane.queued_inputs -= (*it)->inputs;
            --queues_[(*it)->model_id].queued_calls;
            it = lane.calls.erase(it);
          } else {
            ++it;
          }
        }
      }
      // In flight: answered now; the worker's late reply is dropped.
      for (auto& [id, batch] : in_flight_) {
        for (const CallPtr& call : batch.calls) expire(call);
      }
      RefreshWorkersLocked(now, /*force=*/false);
      outgoing = DispatchLocked(now);
    }
    Send(std::move(outgoing));
    Run(std::move(completions));
  }
}

}  // namespace tlserve
