#include "server/worker_service.h"

#include <deque>
#include <memory>

#include "absl/synchronization/mutex.h"
#include "common/grpc_status.h"
#include "server/reactors.h"

namespace tlserve {

using tlserve::v1::ServerMessage;
using tlserve::v1::WorkerMessage;

namespace {

class ConnectReactor;

// The Scheduler's handle on one stream. It outlives the reactor (the
// Scheduler may hold it a little longer); once the reactor is done, Send
// returns false.
class StreamChannel : public WorkerChannel {
 public:
  explicit StreamChannel(ConnectReactor* reactor) : reactor_(reactor) {}
  bool Send(const ServerMessage& message) override;
  void Close(const absl::Status& why) override;

  // Reactor side.
  void WriteDone(bool ok);
  void Detach();

 private:
  void StartNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Mutex mu_;
  ConnectReactor* reactor_ ABSL_GUARDED_BY(mu_);
  std::deque<ServerMessage> queue_ ABSL_GUARDED_BY(mu_);
  ServerMessage current_;  // owned by the write in flight
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status close_status_ ABSL_GUARDED_BY(mu_);
};

class ConnectReactor
    : public grpc::ServerBidiReactor<WorkerMessage, ServerMessage> {
 public:
  explicit ConnectReactor(Scheduler* scheduler)
      : scheduler_(scheduler), channel_(std::make_shared<StreamChannel>(this)) {
    StartRead(&incoming_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // The worker closed its side, or the stream broke.
      channel_->Close(absl::OkStatus());
      return;
    }
    if (worker_id_.empty()) {
      if (!incoming_.has_register_()) {
        channel_->Close(absl::InvalidArgumentError(
            "the first message on Connect must be register"));
        return;
      }
      auto registered = scheduler_->Connect(incoming_.register_(), channel_);
      if (!registered.ok()) {
        channel_->Close(registered.status());
        return;
      }
      worker_id_ = incoming_.register_().worker_id();
    } else {
      scheduler_->OnMessage(worker_id_, incoming_);
    }
    StartRead(&incoming_);
  }
  void OnWriteDone(bool ok) override { channel_->WriteDone(ok); }
  void OnDone() override {
    channel_->Detach();
    if (!worker_id_.empty()) {
      scheduler_->Disconnect(worker_id_, channel_.get(), "stream closed");
    }
    delete this;
  }

 private:
  Scheduler* scheduler_;
  std::shared_ptr<StreamChannel> channel_;
  WorkerMessage incoming_;
  std::string worker_id_;  // set once registered; read only by reactor callbacks
};

bool StreamChannel::Send(const ServerMessage& message) {
  absl::MutexLock lock(&mu_);
  if (reactor_ == nullptr || closing_) return false;
  queue_.push_back(message);
  StartNextLocked();
  return true;
}

void StreamChannel::Close(const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  if (reactor_ == nullptr || closing_) return;
  closing_ = true;
  close_status_ = ToGrpcStatus(why);
  StartNextLocked();
}

void StreamChannel::WriteDone(bool ok) {
  absl::MutexLock lock(&mu_);
  writing_ = false;
  if (!ok) {  // The stream is broken: nothing more will be delivered.
    queue_.clear();
    closing_ = true;
  }
  StartNextLocked();
}

void StreamChannel::Detach() {
  absl::MutexLock lock(&mu_);
  reactor_ = nullptr;
  queue_.clear();
}

// Starts the next write, or finishes the stream once closing and drained.
// Finish is called only with no write in flight.
void StreamChannel::StartNextLocked() {
  if (writing_ || finished_ || reactor_ == nullptr) return;
  if (!queue_.empty() && !closing_) {
    current_ = std::move(queue_.front());
    queue_.pop_front();
    writing_ = true;
    reactor_->StartWrite(&current_);
    return;
  }
  if (closing_) {
    finished_ = true;
    reactor_->Finish(close_status_);
  }
}

}  // namespace

grpc::ServerBidiReactor<WorkerMessage, ServerMessage>* WorkerServiceImpl::Connect(
    grpc::CallbackServerContext* context) {
  if (auto caller = auth_->Check(*context, Role::kAdmin, "connecting a worker");
      !caller.ok()) {
    return new FinishedReactor<
        grpc::ServerBidiReactor<WorkerMessage, ServerMessage>>(caller.status());
  }
  return new ConnectReactor(scheduler_);
}

grpc::ServerWriteReactor<tlserve::v1::BlobChunk>* WorkerServiceImpl::FetchBlob(
    grpc::CallbackServerContext* context,
    const tlserve::v1::FetchBlobRequest* request) {
  if (auto caller =
          auth_->Check(*context, Role::kAdmin, "a worker fetching a blob");
      !caller.ok()) {
    return new FinishedReactor<
        grpc::ServerWriteReactor<tlserve::v1::BlobChunk>>(caller.status());
  }
  auto path = blobs_->PathOf(request->sha256());
  std::string file = path.ok() ? *path : "";
  if (!path.ok()) {
    struct Refuse : grpc::ServerWriteReactor<tlserve::v1::BlobChunk> {
      explicit Refuse(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Refuse(path.status());
  }
  return new FileStreamReactor<tlserve::v1::BlobChunk>(
      file, [](tlserve::v1::BlobChunk* chunk, std::string data, bool) {
        chunk->set_data(std::move(data));
      });
}

grpc::ServerReadReactor<tlserve::v1::BlobChunk>* WorkerServiceImpl::PutBlob(
    grpc::CallbackServerContext* context, tlserve::v1::PutBlobResponse* response) {
  if (auto caller =
          auth_->Check(*context, Role::kAdmin, "a worker storing a blob");
      !caller.ok()) {
    return new FinishedReactor<grpc::ServerReadReactor<tlserve::v1::BlobChunk>>(
        caller.status());
  }
  auto writer =
      std::make_shared<absl::StatusOr<std::unique_ptr<BlobStore::Writer>>>(
          blobs_->NewWriter(max_blob_bytes_));
  return new UploadReactor<tlserve::v1::BlobChunk, tlserve::v1::PutBlobResponse>(
      response, pool_,
      [writer](const tlserve::v1::BlobChunk& chunk) -> absl::Status {
        if (!writer->ok()) return writer->status();
        return (**writer)->Append(chunk.data());
      },
      [writer]() -> absl::StatusOr<tlserve::v1::PutBlobResponse> {
        if (!writer->ok()) return writer->status();
        const int64_t size = (**writer)->size();
        auto sha = (**writer)->Commit();
        if (!sha.ok()) return sha.status();
        tlserve::v1::PutBlobResponse out;
        out.mutable_blob()->set_sha256(*sha);
        out.mutable_blob()->set_size_bytes(size);
        return out;
      });
}

}  // namespace tlserve
