#ifndef TLSERVE_SERVER_BLOB_STORE_H_
#define TLSERVE_SERVER_BLOB_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/sha256.h"

namespace tlserve {

// Content-addressed files under <root>/sha256/<hex>. A blob appears only
// complete: it is written to <root>/tmp, fsynced, then renamed into place,
// so a crash leaves either the whole blob or nothing (plus a temp file that
// Open() sweeps away). Thread-safe; identical content is stored once.
class BlobStore {
 public:
  // Streams one blob in. Not thread-safe; one per upload.
  class Writer {
   public:
    ~Writer();  // Abandons (deletes the temp file) unless Commit succeeded.
    absl::Status Append(std::string_view data);
    int64_t size() const { return size_; }
    // Makes the blob durable and visible. When expected_sha256 is not empty
    // and differs from the content's hash, fails with INVALID_ARGUMENT and
    // stores nothing. Returns the hex sha256.
    absl::StatusOr<std::string> Commit(std::string_view expected_sha256 = "");

   private:
    friend class BlobStore;
    Writer(BlobStore* store, std::string temp_path, int fd, int64_t max_bytes);
    BlobStore* store_;
    std::string temp_path_;
    int fd_;
    int64_t max_bytes_;
    int64_t size_ = 0;
    Sha256 hasher_;
    bool committed_ = false;
  };

  // Creates the folders when missing and removes stale temp files.
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(std::string root);

  // max_bytes: Append fails with RESOURCE_EXHAUSTED past it (0: no limit).
  absl::StatusOr<std::unique_ptr<Writer>> NewWriter(int64_t max_bytes = 0);
  // Convenience for small blobs.
  absl::StatusOr<std::string> Put(std::string_view data);

  bool Has(std::string_view sha256) const;
  // Path of a stored blob; NOT_FOUND when absent. Rejects names that are not
  // 64 lowercase hex digits with INVALID_ARGUMENT.
  absl::StatusOr<std::string> PathOf(std::string_view sha256) const;
  absl::StatusOr<int64_t> SizeOf(std::string_view sha256) const;
  // Re-hashes a stored blob and compares it with its name.
  absl::Status Verify(std::string_view sha256) const;
  absl::Status Remove(std::string_view sha256);
  // Bytes of all stored blobs (uploads in progress not counted). Walks the
  // folder: call it at scrape rate, not per request.
  absl::StatusOr<int64_t> TotalBytes() const;
  const std::string& root() const { return root_; }

  struct BlobInfo {
    std::string sha256;
    int64_t size_bytes = 0;
    // Last written, or last committed again (identical content).
    absl::Time modified;
  };
  // Every stored blob: a snapshot, as blobs come and go meanwhile.
  absl::StatusOr<std::vector<BlobInfo>> List() const;
  // Removes the blob unless it was written or committed again at or after
  // `cutoff`; true when it removed it. A Commit of the same content cannot
  // slip in between the check and the removal.
  absl::StatusOr<bool> RemoveIfOlderThan(std::string_view sha256,
                                         absl::Time cutoff);

 private:
  explicit BlobStore(std::string root) : root_(std::move(root)) {}
  std::string root_;
  // Orders a Commit that finds its content already stored (and refreshes
  // its time) against RemoveIfOlderThan.
  absl::Mutex mu_;
};

}  // namespace tlserve

#endif  // TLSERVE_SERVER_BLOB_STORE_H_
