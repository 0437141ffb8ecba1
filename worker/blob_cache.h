#ifndef TLSERVE_WORKER_BLOB_CACHE_H_
#define TLSERVE_WORKER_BLOB_CACHE_H_

// The worker's local copy of the server's content-addressed blobs
// (datasets, backbones, checkpoints, models): <cache_dir>/blobs/<sha256>.
// Blobs move over WorkerService.FetchBlob / PutBlob.
//
// Thread-safe. Concurrent fetches of the same blob share one download; other
// blobs download in parallel. The stub is not owned and must outlive the
// cache. Files in the cache are never evicted (the cache dir is per worker).

#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/client_context.h"
#include "tlserve/v1/worker.grpc.pb.h"
#include "tlserve/v1/worker.pb.h"

namespace tlserve::worker {

class BlobCache {
 public:
  struct Options {
    // Root folder; blobs go to <cache_dir>/blobs. Created if missing.
    std::string cache_dir;
    // Deadline of one FetchBlob or PutBlob call: generous, blobs can be
    // hundreds of MB over a slow link.
    absl::Duration call_timeout = absl::Minutes(10);
    // Tries per blob when the server is UNAVAILABLE (content addressing
    // makes a retry harmless), with backoff doubling from retry_backoff.
    int max_attempts = 4;
    absl::Duration retry_backoff = absl::Seconds(1);
    // PutBlob chunk size.
    int64_t chunk_bytes = 1 << 20;
  };

  static absl::StatusOr<std::unique_ptr<BlobCache>> Create(
      Options options, tlserve::v1::WorkerService::StubInterface* stub);
  ~BlobCache();

  BlobCache(const BlobCache&) = delete;
  BlobCache& operator=(const BlobCache&) = delete;

  // The local path of blob `sha256`, downloading it first when missing.
  // The download is hashed and renamed into place only when the hash
  // matches (DATA_LOSS otherwise), so a cached file is always whole.
  // INVALID_ARGUMENT when sha256 is not 64 lowercase hex digits.
  absl::StatusOr<std::string> Fetch(const std::string& sha256);

  // Uploads the file at `path` (hashing it on the way) and returns its ref
  // once the server's sha256 and size equal the local ones (DATA_LOSS
  // otherwise). With move_into_cache the file is then renamed into the
  // cache, so a later Fetch of it is free; use it only for files nobody
  // writes again (e.g. a job's exported model).
  absl::StatusOr<tlserve::v1::BlobRef> Put(const std::string& path,
                                           bool move_into_cache = false);

  // Where blob `sha256` lives (or would live) in the cache.
  std::string PathFor(const std::string& sha256) const;

  // Cancels calls in flight and makes later calls fail with CANCELLED.
  // For a quick worker shutdown.
  void Shutdown();

 private:
  BlobCache(Options options, tlserve::v1::WorkerService::StubInterface* stub);

  absl::StatusOr<std::string> FetchOnce(const std::string& sha256);
  absl::StatusOr<tlserve::v1::BlobRef> PutOnce(const std::string& path);
  // Retries `fn` while it returns UNAVAILABLE, up to max_attempts.
  template <typename T, typename Fn>
  absl::StatusOr<T> WithRetries(Fn fn);

  // Registers a call's context so Shutdown can cancel it; false once shut
  // down.
  bool Track(grpc::ClientContext* context);
  void Untrack(grpc::ClientContext* context);

  const Options options_;
  const std::string blob_dir_;
  tlserve::v1::WorkerService::StubInterface* const stub_;

  mutable absl::Mutex mu_;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // Blobs being downloaded; other fetchers of them wait.
  std::set<std::string> downloading_ ABSL_GUARDED_BY(mu_);
  // Signalled when a download ends or on Shutdown.
  absl::CondVar download_done_;
  std::set<grpc::ClientContext*> calls_ ABSL_GUARDED_BY(mu_);
  int64_t temp_counter_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_BLOB_CACHE_H_
