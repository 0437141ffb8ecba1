#include "worker/blob_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <utility>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/grpc_status.h"
#include "common/sha256.h"
#include "common/file_util.h"
#include "grpcpp/support/sync_stream.h"

namespace tlserve::worker {
namespace {

namespace fs = std::filesystem;
using ::tlserve::v1::BlobChunk;
using ::tlserve::v1::BlobRef;
using ::tlserve::v1::FetchBlobRequest;
using ::tlserve::v1::PutBlobResponse;

constexpr absl::string_view kTempPrefix = ".tmp-";

absl::Status Annotate(const absl::Status& status, absl::string_view prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, status.message()));
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  absl::StatusCode code = err == ENOENT ? absl::StatusCode::kNotFound
                                        : absl::StatusCode::kInternal;
  return absl::Status(code, absl::StrCat(what, ": ", std::strerror(err)));
}

std::chrono::system_clock::time_point DeadlineAfter(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

// Removes downloads a crashed run left behind.
void RemoveStaleTempFiles(const std::string& dir) {
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (absl::StartsWith(it->path().filename().string(), kTempPrefix)) {
      std::error_code ignored;
      fs::remove(it->path(), ignored);
    }
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<BlobCache>> BlobCache::Create(
    Options options, tlserve::v1::WorkerService::StubInterface* stub) {
  if (options.cache_dir.empty()) {
    return absl::InvalidArgumentError("BlobCache needs a cache_dir");
  }
  if (stub == nullptr) {
    return absl::InvalidArgumentError("BlobCache needs a WorkerService stub");
  }
  if (options.chunk_bytes <= 0) options.chunk_bytes = 1 << 20;
  if (options.max_attempts < 1) options.max_attempts = 1;
  std::unique_ptr<BlobCache> cache(new BlobCache(std::move(options), stub));
  absl::Status made = MakeDirs(cache->blob_dir_);
  if (!made.ok()) {
    return Annotate(made, absl::StrCat("creating blob cache folder ",
                                       cache->blob_dir_, ": "));
  }
  RemoveStaleTempFiles(cache->blob_dir_);
  return cache;
}

BlobCache::BlobCache(Options options,
                     tlserve::v1::WorkerService::StubInterface* stub)
    : options_(std::move(options)),
      blob_dir_((fs::path(options_.cache_dir) / "blobs").string()),
      stub_(stub) {}

BlobCache::~BlobCache() { Shutdown(); }

std::string BlobCache::PathFor(const std::string& sha256) const {
  return (fs::path(blob_dir_) / sha256).string();
}

void BlobCache::Shutdown() {
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
  for (grpc::ClientContext* context : calls_) context->TryCancel();
  download_done_.SignalAll();
}

bool BlobCache::Track(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return false;
  calls_.insert(context);
  return true;
}

void BlobCache::Untrack(grpc::ClientContext* context) {
  absl::MutexLock lock(&mu_);
  calls_.erase(context);
}

template <typename T, typename Fn>
absl::StatusOr<T> BlobCache::WithRetries(Fn fn) {
  absl::Duration backoff = options_.retry_backoff;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<T> result = fn();
    if (result.ok() || result.status().code() != absl::StatusCode::kUnavailable ||
        attempt >= options_.max_attempts) {
      return result;
    }
    absl::MutexLock lock(&mu_);
    // Wakes early on Shutdown; the next try then fails with CANCELLED.
    mu_.AwaitWithTimeout(absl::Condition(&shut_down_), backoff);
    backoff *= 2;
  }
}

absl::StatusOr<std::string> BlobCache::Fetch(const std::string& sha256) {
  if (!IsSha256Hex(sha256)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "blob name '", sha256, "' is not 64 lowercase hex digits"));
  }
  const std::string path = PathFor(sha256);
  {
    absl::MutexLock lock(&mu_);
    while (downloading_.count(sha256) > 0 && !shut_down_) {
      download_done_.Wait(&mu_);
    }
    if (shut_down_) return absl::CancelledError("worker is shutting down");
    std::error_code ec;
    if (fs::is_regular_file(path, ec)) return path;
    downloading_.insert(sha256);
  }
  absl::StatusOr<std::string> result =
      WithRetries<std::string>([&] { return FetchOnce(sha256); });
  {
    absl::MutexLock lock(&mu_);
    downloading_.erase(sha256);
  }
  download_done_.SignalAll();
  return result;
}

absl::StatusOr<std::string> BlobCache::FetchOnce(const std::string& sha256) {
  const std::string what = absl::StrCat("fetching blob ", sha256, ": ");
  int64_t counter;
  {
    absl::MutexLock lock(&mu_);
    counter = temp_counter_++;
  }
  const std::string temp =
      (fs::path(blob_dir_) /
       absl::StrCat(kTempPrefix, sha256, "-", getpid(), "-", counter))
          .string();
  FILE* file = std::fopen(temp.c_str(), "wb");
  if (file == nullptr) return ErrnoStatus(errno, absl::StrCat(what, temp));
  absl::Cleanup remove_temp = [&temp] {
    std::error_code ignored;
    fs::remove(temp, ignored);
  };

  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(options_.call_timeout));
  if (!Track(&context)) {
    std::fclose(file);
    return absl::CancelledError("worker is shutting down");
  }
  absl::Cleanup untrack = [this, &context] { Untrack(&context); };

  FetchBlobRequest request;
  request.set_sha256(sha256);
  std::unique_ptr<grpc::ClientReaderInterface<BlobChunk>> reader =
      stub_->FetchBlob(&context, request);
  Sha256 hasher;
  int64_t size = 0;
  int write_errno = 0;
  BlobChunk chunk;
  while (reader->Read(&chunk)) {
    const std::string& data = chunk.data();
    if (std::fwrite(data.data(), 1, data.size(), file) != data.size()) {
      write_errno = errno;
      context.TryCancel();  // Finish would otherwise wait for the rest.
      break;
    }
    hasher.Update(data);
    size += static_cast<int64_t>(data.size());
  }
  absl::Status rpc_status = FromGrpcStatus(reader->Finish());
  if (write_errno == 0 &&
      (std::fflush(file) != 0 || fsync(fileno(file)) != 0)) {
    write_errno = errno;
  }
  if (std::fclose(file) != 0 && write_errno == 0) write_errno = errno;
  if (write_errno != 0) return ErrnoStatus(write_errno, absl::StrCat(what, temp));
  if (!rpc_status.ok()) return Annotate(rpc_status, what);

  const std::string got = hasher.FinalHex();
  if (got != sha256) {
    return absl::DataLossError(absl::StrCat(
        what, "received ", size, " bytes whose sha256 is ", got,
        "; the server's copy or the transfer is corrupt"));
  }
  if (std::rename(temp.c_str(), PathFor(sha256).c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat(what, "renaming ", temp));
  }
  std::move(remove_temp).Cancel();
  return PathFor(sha256);
}

absl::StatusOr<BlobRef> BlobCache::Put(const std::string& path,
                                       bool move_into_cache) {
  absl::StatusOr<BlobRef> ref =
      WithRetries<BlobRef>([&] { return PutOnce(path); });
  if (!ref.ok() || !move_into_cache) return ref;
  const std::string cached = PathFor(ref->sha256());
  std::error_code ec;
  if (!fs::exists(cached, ec)) {
    // Best effort: a failed move only costs a later download.
    fs::rename(path, cached, ec);
  }
  return ref;
}

absl::StatusOr<BlobRef> BlobCache::PutOnce(const std::string& path) {
  const std::string what = absl::StrCat("storing ", path, ": ");
  FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return ErrnoStatus(errno, absl::StrCat("storing ", path));
  absl::Cleanup close_file = [file] { std::fclose(file); };

  grpc::ClientContext context;
  context.set_deadline(DeadlineAfter(options_.call_timeout));
  if (!Track(&context)) return absl::CancelledError("worker is shutting down");
  absl::Cleanup untrack = [this, &context] { Untrack(&context); };

  PutBlobResponse response;
  std::unique_ptr<grpc::ClientWriterInterface<BlobChunk>> writer =
      stub_->PutBlob(&context, &response);
  std::string buffer(static_cast<size_t>(options_.chunk_bytes), '\0');
  Sha256 hasher;
  int64_t size = 0;
  bool stream_ok = true;
  BlobChunk chunk;
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), file)) > 0) {
    hasher.Update(std::string_view(buffer.data(), n));
    size += static_cast<int64_t>(n);
    chunk.set_data(buffer.data(), n);
    if (!writer->Write(chunk)) {
      stream_ok = false;  // Finish says why.
      break;
    }
  }
  const int read_errno = std::ferror(file) ? errno : 0;
  if (read_errno != 0) {
    context.TryCancel();
  } else if (stream_ok) {
    writer->WritesDone();
  }
  absl::Status rpc_status = FromGrpcStatus(writer->Finish());
  if (read_errno != 0) return ErrnoStatus(read_errno, absl::StrCat("reading ", path));
  if (!rpc_status.ok()) return Annotate(rpc_status, what);

  const std::string local = hasher.FinalHex();
  if (response.blob().sha256() != local || response.blob().size_bytes() != size) {
    return absl::DataLossError(absl::StrCat(
        what, "the server stored ", response.blob().size_bytes(),
        " bytes with sha256 ", response.blob().sha256(), " but ", size,
        " bytes with sha256 ", local, " were sent"));
  }
  return response.blob();
}

}  // namespace tlserve::worker
