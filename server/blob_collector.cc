#include "server/blob_collector.h"

#include <set>
#include <string>
#include <vector>

#include "common/status_macros.h"

namespace tlserve {

absl::StatusOr<BlobCollection> CollectBlobs(Store* store, BlobStore* blobs,
                                            absl::Duration grace,
                                            absl::Time now) {
  const absl::Time cutoff = now - grace;
  ASSIGN_OR_RETURN(std::vector<BlobStore::BlobInfo> stored, blobs->List());
  ASSIGN_OR_RETURN(std::set<std::string> referenced, store->ReferencedBlobs());
  BlobCollection result;
  result.blobs = static_cast<int64_t>(stored.size());
  for (const BlobStore::BlobInfo& blob : stored) {
    if (referenced.count(blob.sha256) > 0) {
      ++result.referenced;
      continue;
    }
    ASSIGN_OR_RETURN(bool removed, blobs->RemoveIfOlderThan(blob.sha256, cutoff));
    if (removed) {
      ++result.removed;
      result.removed_bytes += blob.size_bytes;
    } else {
      ++result.spared;
    }
  }
  return result;
}

}  // namespace tlserve
