#include "client/client.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string_view>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/channel_security.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace tlserve {
namespace {

constexpr size_t kChunkBytes = 1 << 20;
// List responses and predictions can exceed gRPC's 4 MiB default.
constexpr int kMaxReceiveBytes = 64 << 20;
constexpr int32_t kListPageSize = 100;


// A failed call's status, with the request id the server logged it under
// (sent back in the trailers) added, so that a user can quote it.
absl::Status CallStatus(const grpc::ClientContext& ctx,
                        const grpc::Status& status) {
  absl::Status out = FromGrpcStatus(status);
  if (out.ok()) return out;
  const auto& trailers = ctx.GetServerTrailingMetadata();
  auto it = trailers.find("x-request-id");
  if (it == trailers.end()) return out;
  return absl::Status(
      out.code(), absl::StrCat(out.message(), " (request id ",
                               std::string(it->second.data(), it->second.size()),
                               ")"));
}

absl::Status ErrnoStatus(const char* what, const std::string& path) {
  int err = errno;
  std::string message = absl::StrCat(what, " '", path, "': ", strerror(err));
  return err == ENOENT ? absl::NotFoundError(message)
                       : absl::UnknownError(message);
}

// Calls `fn` with consecutive chunks of up to kChunkBytes of the file.
absl::Status ForEachChunk(
    const std::string& path,
    const std::function<absl::Status(std::string_view)>& fn) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus("cannot open", path);
  std::string buffer(kChunkBytes, '\0');
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    std::streamsize n = in.gcount();
    if (n > 0) RETURN_IF_ERROR(fn(std::string_view(buffer.data(), n)));
  }
  if (in.bad()) return ErrnoStatus("cannot read", path);
  return absl::OkStatus();
}

struct FileDigest {
  int64_t size = 0;
  std::string sha256;
};

// The header of an upload names every part's size and hash before any byte
// follows, so each file is read twice: once here, once to stream it.
absl::StatusOr<FileDigest> DigestFile(const std::string& path) {
  Sha256 hasher;
  FileDigest digest;
  RETURN_IF_ERROR(ForEachChunk(path, [&](std::string_view chunk) {
    hasher.Update(chunk);
    digest.size += static_cast<int64_t>(chunk.size());
    return absl::OkStatus();
  }));
  digest.sha256 = hasher.FinalHex();
  return digest;
}

// Sends requests on a client stream, then collects the response. A Write
// that fails means the server ended the call: Finish says why.
template <typename Writer>
absl::Status FinishUpload(const grpc::ClientContext& ctx, Writer& writer) {
  writer->WritesDone();
  return CallStatus(ctx, writer->Finish());
}

template <typename Page, typename Item, typename Fetch, typename Items>
absl::StatusOr<std::vector<Item>> AllPages(Fetch fetch, Items items) {
  std::vector<Item> out;
  std::string token;
  do {
    ASSIGN_OR_RETURN(Page page, fetch(kListPageSize, token));
    for (const auto& item : items(page)) out.push_back(item);
    token = page.next_page_token();
  } while (!token.empty());
  return out;
}

// A file written beside the target and renamed over it, so readers never
// see a partial export. Removes the temp file unless committed.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path)
      : path_(std::move(path)),
        temp_path_(absl::StrCat(path_, ".tmp.", getpid())) {}
  ~AtomicFileWriter() {
    if (fd_ >= 0) close(fd_);
    if (!committed_) unlink(temp_path_.c_str());
  }

  absl::Status Open() {
    fd_ = open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
               0644);
    if (fd_ < 0) return ErrnoStatus("cannot create", temp_path_);
    return absl::OkStatus();
  }

  absl::Status Write(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("cannot write", temp_path_);
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  absl::Status Commit() {
    if (fsync(fd_) != 0) return ErrnoStatus("cannot fsync", temp_path_);
    int fd = fd_;
    fd_ = -1;
    if (close(fd) != 0) return ErrnoStatus("cannot close", temp_path_);
    if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
      return ErrnoStatus("cannot rename to", path_);
    }
    committed_ = true;
    // Make the rename itself durable.
    size_t slash = path_.find_last_of('/');
    std::string dir = slash == std::string::npos ? std::string(".")
                                                 : path_.substr(0, slash + 1);
    int dir_fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
      fsync(dir_fd);
      close(dir_fd);
    }
    return absl::OkStatus();
  }

 private:
  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

}  // namespace

bool IsFinalJobState(v1::JobState state) {
  return state == v1::SUCCEEDED || state == v1::FAILED ||
         state == v1::CANCELLED;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(Options options) {
  if (options.target.empty()) {
    return absl::InvalidArgumentError(
        "no server address: pass --server=host:port or set TLSERVE_SERVER");
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("Client::Options::timeout must be > 0");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxReceiveBytes);
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                   ClientChannelCredentials(options.tls_ca_file));
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel(options.target, credentials, args);
  if (channel == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot make a channel to '", options.target, "'"));
  }
  return std::unique_ptr<Client>(new Client(std::move(options), channel));
}

Client::Client(Options options, std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      datasets_(v1::DatasetService::NewStub(channel_)),
      models_(v1::ModelService::NewStub(channel_)),
      jobs_(v1::JobService::NewStub(channel_)),
      inference_(v1::InferenceService::NewStub(channel_)),
      health_(grpc::health::v1::Health::NewStub(channel_)) {}

void Client::Prepare(grpc::ClientContext* ctx, absl::Time deadline) const {
  if (deadline != absl::InfiniteFuture()) {
    ctx->set_deadline(absl::ToChronoTime(deadline));
  }
  if (!options_.token.empty()) {
    ctx->AddMetadata("authorization", "Bearer " + options_.token);
  }
}

// Unary calls share one shape: a context with the unary deadline, the call,
// one status conversion.
#define TLSERVE_UNARY_(stub, method, request, Response)           \
  do {                                                            \
    grpc::ClientContext ctx;                                      \
    Prepare(&ctx, absl::Now() + options_.timeout);            \
    Response response;                                            \
    grpc::Status status = stub->method(&ctx, request, &response); \
    if (!status.ok()) return CallStatus(ctx, status);             \
    return response;                                              \
  } while (0)

absl::StatusOr<v1::Dataset> Client::UploadDatasetFiles(
    const std::string& name, v1::DatasetFormat format,
    const std::vector<std::pair<v1::DatasetPartRole, std::string>>& parts,
    const std::vector<std::string>& class_names,
    const std::string& request_id) {
  v1::UploadDatasetRequest header_request;
  v1::DatasetUploadHeader* header = header_request.mutable_header();
  header->set_name(name);
  header->set_format(format);
  header->set_request_id(request_id);
  for (const std::string& class_name : class_names) {
    header->add_class_names(class_name);
  }
  for (const auto& [role, path] : parts) {
    ASSIGN_OR_RETURN(FileDigest digest, DigestFile(path));
    v1::DatasetPart* part = header->add_parts();
    part->set_role(role);
    part->set_size_bytes(digest.size);
    part->set_sha256(digest.sha256);
  }

  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + options_.stream_timeout);
  v1::Dataset dataset;
  auto writer = datasets_->UploadDataset(&ctx, &dataset);
  bool open = writer->Write(header_request);
  for (size_t i = 0; open && i < parts.size(); ++i) {
    v1::UploadDatasetRequest request;
    request.mutable_chunk()->set_part_index(static_cast<int32_t>(i));
    absl::Status read = ForEachChunk(parts[i].second, [&](std::string_view b) {
      request.mutable_chunk()->set_data(b.data(), b.size());
      open = writer->Write(request);
      // Stop reading; Finish below reports the server's reason.
      return open ? absl::OkStatus() : absl::CancelledError();
    });
    if (!read.ok() && open) {
      ctx.TryCancel();
      writer->Finish();
      return read;
    }
  }
  RETURN_IF_ERROR(FinishUpload(ctx, writer));
  return dataset;
}

absl::StatusOr<v1::Dataset> Client::GetDataset(const std::string& id) {
  v1::GetDatasetRequest request;
  request.set_id(id);
  TLSERVE_UNARY_(datasets_, GetDataset, request, v1::Dataset);
}

absl::StatusOr<v1::ListDatasetsResponse> Client::ListDatasetsPage(
    int32_t page_size, const std::string& page_token) {
  v1::ListDatasetsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  TLSERVE_UNARY_(datasets_, ListDatasets, request, v1::ListDatasetsResponse);
}

absl::StatusOr<std::vector<v1::Dataset>> Client::ListDatasets() {
  return AllPages<v1::ListDatasetsResponse, v1::Dataset>(
      [this](int32_t size, const std::string& token) {
        return ListDatasetsPage(size, token);
      },
      [](const v1::ListDatasetsResponse& page) -> const auto& {
        return page.datasets();
      });
}

absl::Status Client::DeleteDataset(const std::string& id) {
  v1::DeleteDatasetRequest request;
  request.set_id(id);
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + options_.timeout);
  google::protobuf::Empty response;
  return CallStatus(ctx, datasets_->DeleteDataset(&ctx, request, &response));
}

absl::Status Client::DeleteJob(const std::string& id) {
  v1::DeleteJobRequest request;
  request.set_id(id);
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + options_.timeout);
  google::protobuf::Empty response;
  return CallStatus(ctx, jobs_->DeleteJob(&ctx, request, &response));
}

absl::Status Client::DeleteModel(const std::string& id) {
  v1::DeleteModelRequest request;
  request.set_id(id);
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + options_.timeout);
  google::protobuf::Empty response;
  return CallStatus(ctx, models_->DeleteModel(&ctx, request, &response));
}

absl::StatusOr<v1::Backbone> Client::UploadBackbone(
    const std::string& name, const std::string& path,
    const v1::InputSpec& input_spec, const std::string& request_id) {
  v1::BackboneUploadHeader header;
  header.set_kind(v1::IMAGE_TORCHSCRIPT);
  *header.mutable_input_spec() = input_spec;
  return UploadBackboneFile(name, path, std::move(header), request_id);
}

absl::StatusOr<v1::Backbone> Client::UploadWordVectors(
    const std::string& name, const std::string& path,
    const std::string& request_id) {
  v1::BackboneUploadHeader header;
  header.set_kind(v1::WORD_VECTORS);
  return UploadBackboneFile(name, path, std::move(header), request_id);
}

absl::StatusOr<v1::Backbone> Client::UploadBackboneFile(
    const std::string& name, const std::string& path,
    v1::BackboneUploadHeader kind_and_spec, const std::string& request_id) {
  ASSIGN_OR_RETURN(FileDigest digest, DigestFile(path));
  v1::UploadBackboneRequest header_request;
  v1::BackboneUploadHeader* header = header_request.mutable_header();
  *header = std::move(kind_and_spec);
  header->set_name(name);
  header->set_size_bytes(digest.size);
  header->set_sha256(digest.sha256);
  header->set_request_id(request_id);

  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + options_.stream_timeout);
  v1::Backbone backbone;
  auto writer = models_->UploadBackbone(&ctx, &backbone);
  bool open = writer->Write(header_request);
  if (open) {
    v1::UploadBackboneRequest request;
    absl::Status read = ForEachChunk(path, [&](std::string_view bytes) {
      request.set_chunk(bytes.data(), bytes.size());
      open = writer->Write(request);
      return open ? absl::OkStatus() : absl::CancelledError();
    });
    if (!read.ok() && open) {
      ctx.TryCancel();
      writer->Finish();
      return read;
    }
  }
  RETURN_IF_ERROR(FinishUpload(ctx, writer));
  return backbone;
}

absl::StatusOr<v1::Backbone> Client::GetBackbone(const std::string& id) {
  v1::GetBackboneRequest request;
  request.set_id(id);
  TLSERVE_UNARY_(models_, GetBackbone, request, v1::Backbone);
}

absl::StatusOr<v1::ListBackbonesResponse> Client::ListBackbonesPage(
    int32_t page_size, const std::string& page_token) {
  v1::ListBackbonesRequest request;
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  TLSERVE_UNARY_(models_, ListBackbones, request, v1::ListBackbonesResponse);
}

absl::StatusOr<std::vector<v1::Backbone>> Client::ListBackbones() {
  return AllPages<v1::ListBackbonesResponse, v1::Backbone>(
      [this](int32_t size, const std::string& token) {
        return ListBackbonesPage(size, token);
      },
      [](const v1::ListBackbonesResponse& page) -> const auto& {
        return page.backbones();
      });
}

absl::StatusOr<v1::Model> Client::GetModel(const std::string& id) {
  v1::GetModelRequest request;
  request.set_id(id);
  TLSERVE_UNARY_(models_, GetModel, request, v1::Model);
}

absl::StatusOr<v1::Model> Client::DeployModel(const std::string& id,
                                              const v1::ServingConfig& serving) {
  v1::DeployModelRequest request;
  request.set_id(id);
  *request.mutable_serving() = serving;
  TLSERVE_UNARY_(models_, DeployModel, request, v1::Model);
}

absl::StatusOr<v1::Model> Client::UndeployModel(const std::string& id) {
  v1::UndeployModelRequest request;
  request.set_id(id);
  TLSERVE_UNARY_(models_, UndeployModel, request, v1::Model);
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModelsPage(
    int32_t page_size, const std::string& page_token) {
  v1::ListModelsRequest request;
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  TLSERVE_UNARY_(models_, ListModels, request, v1::ListModelsResponse);
}

absl::StatusOr<std::vector<v1::Model>> Client::ListModels() {
  return AllPages<v1::ListModelsResponse, v1::Model>(
      [this](int32_t size, const std::string& token) {
        return ListModelsPage(size, token);
      },
      [](const v1::ListModelsResponse& page) -> const auto& {
        return page.models();
      });
}

absl::StatusOr<std::string> Client::ExportModel(const std::string& id,
                                                const std::string& out_path) {
  v1::ExportModelRequest request;
  request.set_id(id);
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + options_.stream_timeout);
  auto reader = models_->ExportModel(&ctx, request);

  AtomicFileWriter file(out_path);
  RETURN_IF_ERROR(file.Open());
  Sha256 hasher;
  int64_t received = 0;
  int64_t expected_bytes = -1;
  std::string expected_sha256;
  v1::ExportModelChunk chunk;
  absl::Status write_status;
  while (reader->Read(&chunk)) {
    if (expected_bytes < 0) {
      expected_bytes = chunk.total_bytes();
      expected_sha256 = chunk.sha256();
    }
    hasher.Update(chunk.data());
    received += static_cast<int64_t>(chunk.data().size());
    write_status = file.Write(chunk.data());
    if (!write_status.ok()) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status status = reader->Finish();
  RETURN_IF_ERROR(write_status);
  if (!status.ok()) return CallStatus(ctx, status);
  if (expected_bytes < 0) {
    return absl::DataLossError(
        absl::StrCat("export of model '", id, "' sent no data"));
  }
  if (received != expected_bytes) {
    return absl::DataLossError(
        absl::StrCat("export of model '", id, "': got ", received,
                     " bytes, the server "
                     "announced ",
                     expected_bytes, "; retry the export"));
  }
  std::string actual = hasher.FinalHex();
  if (!expected_sha256.empty() && actual != expected_sha256) {
    return absl::DataLossError(
        absl::StrCat("export of model '", id, "': sha256 ", actual,
                     " does not match the "
                     "server's ",
                     expected_sha256, "; retry the export"));
  }
  RETURN_IF_ERROR(file.Commit());
  return actual;
}

absl::StatusOr<v1::Job> Client::CreateJob(const v1::JobSpec& spec,
                                          const std::string& request_id) {
  v1::CreateJobRequest request;
  *request.mutable_spec() = spec;
  request.set_request_id(request_id);
  TLSERVE_UNARY_(jobs_, CreateJob, request, v1::Job);
}

absl::StatusOr<v1::Job> Client::GetJob(const std::string& id) {
  v1::GetJobRequest request;
  request.set_id(id);
  TLSERVE_UNARY_(jobs_, GetJob, request, v1::Job);
}

absl::StatusOr<v1::ListJobsResponse> Client::ListJobs(
    v1::JobState state, int32_t page_size, const std::string& page_token) {
  v1::ListJobsRequest request;
  request.set_state(state);
  request.set_page_size(page_size);
  request.set_page_token(page_token);
  TLSERVE_UNARY_(jobs_, ListJobs, request, v1::ListJobsResponse);
}

absl::StatusOr<std::vector<v1::Job>> Client::ListAllJobs(v1::JobState state) {
  return AllPages<v1::ListJobsResponse, v1::Job>(
      [this, state](int32_t size, const std::string& token) {
        return ListJobs(state, size, token);
      },
      [](const v1::ListJobsResponse& page) -> const auto& {
        return page.jobs();
      });
}

absl::StatusOr<v1::Job> Client::CancelJob(const std::string& id) {
  v1::CancelJobRequest request;
  request.set_id(id);
  TLSERVE_UNARY_(jobs_, CancelJob, request, v1::Job);
}

absl::StatusOr<v1::ListCheckpointsResponse> Client::ListCheckpoints(
    const std::string& job_id) {
  v1::ListCheckpointsRequest request;
  request.set_job_id(job_id);
  TLSERVE_UNARY_(jobs_, ListCheckpoints, request, v1::ListCheckpointsResponse);
}

absl::StatusOr<v1::Job> Client::WatchJob(
    const std::string& id, int64_t after_sequence,
    const std::function<bool(const v1::JobEvent&)>& on_event,
    absl::Time deadline) {
  int64_t last_sequence = after_sequence;
  int failures = 0;
  absl::Duration backoff = options_.watch_backoff;
  while (true) {
    v1::WatchJobRequest request;
    request.set_id(id);
    request.set_after_sequence(last_sequence);
    grpc::ClientContext ctx;
    Prepare(&ctx, deadline);
    auto reader = jobs_->WatchJob(&ctx, request);
    v1::JobEvent event;
    bool stopped = false;
    bool got_event = false;
    while (reader->Read(&event)) {
      got_event = true;
      last_sequence = std::max(last_sequence, event.sequence());
      if (!on_event(event)) {
        stopped = true;
        ctx.TryCancel();
        break;
      }
    }
    grpc::Status status = reader->Finish();
    if (stopped) return GetJob(id);
    if (status.ok()) {
      ASSIGN_OR_RETURN(v1::Job job, GetJob(id));
      if (IsFinalJobState(job.state())) return job;
      // The server closed the stream cleanly before the end (e.g. while
      // draining for a restart): treat it like a broken stream.
      status = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                            "watch stream ended before the job did");
    }
    // This client cancels a watch only when on_event stops it (returned
    // above), so CANCELLED here came from the other side: a server that
    // was shutting down when the call reached it. Like UNAVAILABLE, the
    // next server may answer.
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE &&
        status.error_code() != grpc::StatusCode::CANCELLED) {
      return FromGrpcStatus(status);
    }
    // Retries are bounded per outage, not per watch: a long job may see
    // several server restarts.
    if (got_event) {
      failures = 0;
      backoff = options_.watch_backoff;
    }
    if (++failures > options_.watch_max_retries) {
      return absl::UnavailableError(
          absl::StrCat("watching job '", id, "': gave up after ", failures - 1,
                       " reconnects: ", status.error_message()));
    }
    if (absl::Now() + backoff >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "watching job '", id,
          "': deadline passed while reconnecting: ", status.error_message()));
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
}

absl::StatusOr<v1::Job> Client::WaitForJob(const std::string& id,
                                           absl::Duration timeout) {
  absl::StatusOr<v1::Job> job = WatchJob(
      id, 0, [](const v1::JobEvent&) { return true; }, absl::Now() + timeout);
  if (absl::IsDeadlineExceeded(job.status())) {
    return absl::DeadlineExceededError(
        absl::StrCat("job '", id, "' did not finish within ",
                     absl::FormatDuration(timeout)));
  }
  return job;
}

absl::StatusOr<v1::PredictResponse> Client::Predict(
    const v1::PredictRequest& request, absl::Duration deadline) {
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + deadline);
  v1::PredictResponse response;
  grpc::Status status = inference_->Predict(&ctx, request, &response);
  if (!status.ok()) return CallStatus(ctx, status);
  return response;
}

absl::StatusOr<v1::EmbedResponse> Client::Embed(const v1::EmbedRequest& request,
                                                absl::Duration deadline) {
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + deadline);
  v1::EmbedResponse response;
  grpc::Status status = inference_->Embed(&ctx, request, &response);
  if (!status.ok()) return CallStatus(ctx, status);
  return response;
}

absl::Status Client::CheckHealth() {
  grpc::health::v1::HealthCheckRequest request;
  grpc::ClientContext ctx;
  Prepare(&ctx, absl::Now() + std::min(options_.timeout, absl::Seconds(5)));
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = health_->Check(&ctx, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(
        absl::StrCat("server at ", options_.target, " is ",
                     grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                         response.status())));
  }
  return absl::OkStatus();
}

absl::Status Client::WaitUntilHealthy(absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  absl::Status last;
  while (true) {
    last = CheckHealth();
    if (last.ok()) return last;
    if (absl::Now() >= deadline) break;
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("server at ", options_.target, " not healthy after ",
                   absl::FormatDuration(timeout), ": ", last.message()));
}

#undef TLSERVE_UNARY_

}  // namespace tlserve
