#ifndef TLSERVE_SERVER_BLOB_COLLECTOR_H_
#define TLSERVE_SERVER_BLOB_COLLECTOR_H_

// Frees the blobs nothing refers to any more (a deleted dataset's parts,
// pruned checkpoints), by mark and sweep:
//   1. the cutoff is fixed: now - grace;
//   2. mark: every sha256 a row refers to (Store::ReferencedBlobs, one
//      snapshot);
//   3. sweep: each stored blob not marked is removed if it was written, or
//      committed again, before the cutoff (BlobStore::RemoveIfOlderThan).
// A row is only ever written after its blob was committed, and a commit
// dates the blob (a re-commit of the same content too). So a row written
// after the mark refers to a blob younger than the cutoff, as long as no
// writer takes longer than `grace` from commit to row: nothing a row
// refers to is removed. Only files are removed, never rows, so a crash in
// the middle leaves unreferenced files behind for the next collection,
// never a row without its file.

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/blob_store.h"
#include "server/store.h"

namespace tlserve {

struct BlobCollection {
  int64_t blobs = 0;        // stored when the collection started
  int64_t referenced = 0;   // of them, referred to by a row
  int64_t spared = 0;       // unreferenced but younger than the cutoff
  int64_t removed = 0;
  int64_t removed_bytes = 0;
};

absl::StatusOr<BlobCollection> CollectBlobs(Store* store, BlobStore* blobs,
                                            absl::Duration grace,
                                            absl::Time now);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_BLOB_COLLECTOR_H_
