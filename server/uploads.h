#ifndef TLSERVE_SERVER_UPLOADS_H_
#define TLSERVE_SERVER_UPLOADS_H_

// The cores of the two upload RPCs: each takes the stream's messages in
// order and, at the end, validates what came and stores it. Nothing is
// recorded unless everything checks out; blobs of a refused upload that
// were already complete stay as unreferenced content. Not thread-safe (one
// per upload stream).

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dataset_checks.h"
#include "common/dataset_loader.h"
#include "server/blob_store.h"
#include "server/quotas.h"
#include "server/store.h"
#include "tlserve/v1/dataset.pb.h"
#include "tlserve/v1/model.pb.h"

namespace tlserve {

struct UploadLimits {
  int64_t max_part_bytes = 8LL << 30;
  int64_t max_backbone_bytes = 4LL << 30;
  DatasetLimits dataset;
};

// A dataset upload of one tenant, within its stored-bytes quota (quotas
// may be null: no limit).
class DatasetUpload {
 public:
  DatasetUpload(Store* store, BlobStore* blobs, UploadLimits limits,
                std::string tenant = std::string(kDefaultTenant),
                const Quotas* quotas = nullptr);
  absl::Status OnMessage(const tlserve::v1::UploadDatasetRequest& request);
  // After the last message: decodes every image and label (slow: run it
  // off the reactor thread), then stores the dataset.
  absl::StatusOr<tlserve::v1::Dataset> Finish();

 private:
  absl::Status OnHeader(const tlserve::v1::DatasetUploadHeader& header);
  absl::Status CheckQuota(int64_t adding) const;
  // Finish for TEXT_CSV: parses the CSV files instead of decoding images.
  absl::StatusOr<tlserve::v1::Dataset> FinishText(tlserve::v1::Dataset dataset,
                                                  const DatasetFiles& files);
  // Duplicates, leakage and balance (warnings naming records as `noun`s),
  // then stores the dataset with its index.
  absl::StatusOr<tlserve::v1::Dataset> StoreWithFindings(
      tlserve::v1::Dataset dataset, const std::vector<std::string>& class_names,
      const DatasetImageIndex& index, absl::string_view noun);
  Store* store_;
  BlobStore* blobs_;
  UploadLimits limits_;
  std::string tenant_;
  const Quotas* quotas_;
  bool have_header_ = false;
  tlserve::v1::DatasetUploadHeader header_;
  std::optional<std::string> existing_id_;  // request_id seen before
  std::vector<std::unique_ptr<BlobStore::Writer>> writers_;
};

// Backbones (admins only) are shared by every tenant: stored with no
// tenant, their request ids in one scope. A TorchScript backbone is checked
// as an archive (the worker learns its feature width); word vectors are
// parsed whole, as the worker will, which gives their width and size.
class BackboneUpload {
 public:
  BackboneUpload(Store* store, BlobStore* blobs, UploadLimits limits);
  absl::Status OnMessage(const tlserve::v1::UploadBackboneRequest& request);
  absl::StatusOr<tlserve::v1::Backbone> Finish();

 private:
  Store* store_;
  BlobStore* blobs_;
  UploadLimits limits_;
  bool have_header_ = false;
  tlserve::v1::BackboneUploadHeader header_;
  std::optional<std::string> existing_id_;
  std::unique_ptr<BlobStore::Writer> writer_;
};

// INVALID_ARGUMENT naming the field when the spec cannot describe images.
absl::Status ValidateInputSpec(const tlserve::v1::InputSpec& spec);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_UPLOADS_H_
