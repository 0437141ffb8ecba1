#ifndef TLSERVE_SERVER_REACTORS_H_
#define TLSERVE_SERVER_REACTORS_H_

// Reusable callback-API reactors: the services stay a few lines per method.

#include <fstream>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "server/work_pool.h"

namespace tlserve {

// Client-streaming upload: on_message for each message (an error ends the
// call at once), on_end on the pool after the client's last message.
template <typename Request, typename Response>
class UploadReactor : public grpc::ServerReadReactor<Request> {
 public:
  using OnMessage = std::function<absl::Status(const Request&)>;
  using OnEnd = std::function<absl::StatusOr<Response>()>;

  UploadReactor(Response* response, WorkPool* pool, OnMessage on_message,
                OnEnd on_end)
      : response_(response), pool_(pool), on_message_(std::move(on_message)),
        on_end_(std::move(on_end)) {
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      pool_->Submit([this] {
        absl::StatusOr<Response> result = on_end_();
        if (result.ok()) *response_ = *std::move(result);
        this->Finish(ToGrpcStatus(result.status()));
      });
      return;
    }
    absl::Status status = on_message_(request_);
    if (!status.ok()) {
      this->Finish(ToGrpcStatus(status));
      return;
    }
    this->StartRead(&request_);
  }
  void OnDone() override { delete this; }

 private:
  Request request_;
  Response* response_;
  WorkPool* pool_;
  OnMessage on_message_;
  OnEnd on_end_;
};

// Server-streaming download of a file in 1 MiB chunks. `fill(message,
// data, first)` puts a chunk into a message.
template <typename Message>
class FileStreamReactor : public grpc::ServerWriteReactor<Message> {
 public:
  using Fill = std::function<void(Message*, std::string data, bool first)>;

  FileStreamReactor(const std::string& path, Fill fill)
      : in_(path, std::ios::binary), fill_(std::move(fill)) {
    if (!in_) {
      this->Finish(grpc::Status(grpc::StatusCode::DATA_LOSS,
                                "stored file is missing: " + path));
      return;
    }
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    std::string data(kChunkBytes, '\0');
    in_.read(data.data(), kChunkBytes);
    data.resize(static_cast<size_t>(in_.gcount()));
    if (data.empty() && !first_) {
      this->Finish(grpc::Status::OK);
      return;
    }
    message_.Clear();
    fill_(&message_, std::move(data), first_);
    first_ = false;
    this->StartWrite(&message_);
  }
  static constexpr size_t kChunkBytes = 1 << 20;
  std::ifstream in_;
  Fill fill_;
  Message message_;
  bool first_ = true;
};

// A streaming reactor (read, write or bidi) that ends its call at once with
// `status`: how a handler refuses a caller before any message moves.
template <typename Base>
class FinishedReactor : public Base {
 public:
  explicit FinishedReactor(const absl::Status& status) {
    this->Finish(ToGrpcStatus(status));
  }
  void OnDone() override { delete this; }
};

// The same for a unary call.
inline grpc::ServerUnaryReactor* Refuse(grpc::CallbackServerContext* context,
                                        const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Runs a blocking unary handler on the pool and finishes the reactor.
template <typename Response>
grpc::ServerUnaryReactor* RunOnPool(grpc::CallbackServerContext* context,
                                    WorkPool* pool, Response* response,
                                    std::function<absl::StatusOr<Response>()> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  pool->Submit([reactor, response, work = std::move(work)] {
    absl::StatusOr<Response> result = work();
    if (result.ok()) *response = *std::move(result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

}  // namespace tlserve

#endif  // TLSERVE_SERVER_REACTORS_H_
