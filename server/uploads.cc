#include "server/uploads.h"

#include <set>

#include "absl/strings/str_format.h"
#include "common/dataset_checks.h"
#include "common/file_util.h"
#include "common/input_fit.h"
#include "common/proto_time.h"
#include "common/text_dataset.h"
#include "common/word_vectors.h"
#include "common/status_macros.h"
#include "common/torchscript_archive.h"
#include "server/ids.h"

namespace tlserve {

using tlserve::v1::DatasetPartRole;
using tlserve::v1::DatasetPartRole_Name;

namespace {

constexpr size_t kMaxNameBytes = 256;
constexpr int kMaxClasses = 100000;

absl::Status CheckName(const std::string& name, const char* field) {
  if (name.empty() || name.size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s must have 1 to %d bytes, got %d", field, kMaxNameBytes, name.size()));
  }
  return absl::OkStatus();
}

bool RoleFitsFormat(tlserve::v1::DatasetFormat format, DatasetPartRole role) {
  if (format == tlserve::v1::IDX) {
    return role == tlserve::v1::TRAIN_IMAGES || role == tlserve::v1::TRAIN_LABELS ||
           role == tlserve::v1::TEST_IMAGES || role == tlserve::v1::TEST_LABELS;
  }
  if (format == tlserve::v1::TEXT_CSV) {
    return role == tlserve::v1::TRAIN_CSV || role == tlserve::v1::TEST_CSV;
  }
  return role == tlserve::v1::TRAIN_ARCHIVE || role == tlserve::v1::TEST_ARCHIVE;
}

// Class names, per-class counts and sizes of both splits (labels are in
// range: the loaders checked them).
void SetClassesAndCounts(const std::vector<std::string>& class_names,
                         const std::vector<int32_t>& train_labels,
                         const std::vector<int32_t>& test_labels,
                         tlserve::v1::Dataset* dataset) {
  *dataset->mutable_class_names() = {class_names.begin(), class_names.end()};
  std::vector<int64_t> train_counts(class_names.size(), 0);
  std::vector<int64_t> test_counts(class_names.size(), 0);
  for (int32_t label : train_labels) ++train_counts[label];
  for (int32_t label : test_labels) ++test_counts[label];
  *dataset->mutable_train_class_counts() = {train_counts.begin(),
                                            train_counts.end()};
  *dataset->mutable_test_class_counts() = {test_counts.begin(),
                                           test_counts.end()};
  dataset->set_train_count(static_cast<int64_t>(train_labels.size()));
  dataset->set_test_count(static_cast<int64_t>(test_labels.size()));
}

}  // namespace

absl::Status ValidateInputSpec(const tlserve::v1::InputSpec& spec) {
  if (spec.channels() != 1 && spec.channels() != 3) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input_spec.channels must be 1 or 3, got %d", spec.channels()));
  }
  if (spec.height() < 8 || spec.height() > 2048 || spec.width() < 8 ||
      spec.width() > 2048) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input_spec height and width must be in [8, 2048], got %dx%d",
        spec.height(), spec.width()));
  }
  if (spec.mean_size() != spec.channels() || spec.std_size() != spec.channels()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "input_spec.mean and input_spec.std need %d values each (one per "
        "channel), got %d and %d",
        spec.channels(), spec.mean_size(), spec.std_size()));
  }
  for (float s : spec.std()) {
    if (!(s > 0)) {
      return absl::InvalidArgumentError("input_spec.std values must be > 0");
    }
  }
  return ValidateInputFit(spec.fit(), spec.height(), spec.width(),
                          "input_spec.fit");
}

DatasetUpload::DatasetUpload(Store* store, BlobStore* blobs, UploadLimits limits,
                             std::string tenant, const Quotas* quotas)
    : store_(store), blobs_(blobs), limits_(limits), tenant_(std::move(tenant)),
      quotas_(quotas) {}

absl::Status DatasetUpload::CheckQuota(int64_t adding) const {
  if (quotas_ == nullptr || !quotas_->limits_stored_bytes()) {
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(int64_t stored, store_->StoredBytesOf(tenant_));
  return quotas_->CheckStore(tenant_, stored, adding);
}

absl::Status DatasetUpload::OnHeader(const tlserve::v1::DatasetUploadHeader& h) {
  RETURN_IF_ERROR(CheckName(h.name(), "header.name"));
  if (h.format() != tlserve::v1::IDX &&
      h.format() != tlserve::v1::IMAGE_FOLDER_TAR &&
      h.format() != tlserve::v1::TEXT_CSV) {
    return absl::InvalidArgumentError(
        "header.format must be IDX, IMAGE_FOLDER_TAR or TEXT_CSV");
  }
  if (h.parts_size() == 0 || h.parts_size() > 4) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "header.parts must list 1 to 4 files, got %d", h.parts_size()));
  }
  std::set<int> roles;
  for (int i = 0; i < h.parts_size(); ++i) {
    const auto& part = h.parts(i);
    if (!RoleFitsFormat(h.format(), part.role())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "header.parts[%d]: role %s does not belong to format %s", i,
          DatasetPartRole_Name(part.role()),
          tlserve::v1::DatasetFormat_Name(h.format())));
    }
    if (!roles.insert(part.role()).second) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "header.parts[%d]: role %s is given twice", i,
          DatasetPartRole_Name(part.role())));
    }
    if (part.size_bytes() < 0 || part.size_bytes() > limits_.max_part_bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "header.parts[%d].size_bytes must be in [0, %d]", i,
          limits_.max_part_bytes));
    }
    if (!part.sha256().empty() && !IsSha256Hex(part.sha256())) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "header.parts[%d].sha256 must be 64 lowercase hex digits", i));
    }
  }
  if (h.class_names_size() > kMaxClasses) {
    return absl::InvalidArgumentError(
        absl::StrFormat("header.class_names has %d entries; the most is %d",
                        h.class_names_size(), kMaxClasses));
  }
  for (const std::string& name : h.class_names()) {
    RETURN_IF_ERROR(CheckName(name, "header.class_names[]"));
  }
  RETURN_IF_ERROR(ValidateRequestId(h.request_id(), "header.request_id"));
  if (!h.request_id().empty()) {
    ASSIGN_OR_RETURN(existing_id_,
                     store_->LookupRequest("dataset", tenant_, h.request_id()));
  }
  header_ = h;
  have_header_ = true;
  if (existing_id_.has_value()) return absl::OkStatus();  // chunks are dropped
  // Refused before any byte is stored when the declared sizes already pass
  // the quota; checked again on the bytes received at the end.
  int64_t declared_bytes = 0;
  for (const auto& part : h.parts()) declared_bytes += part.size_bytes();
  RETURN_IF_ERROR(CheckQuota(declared_bytes));
  for (int i = 0; i < h.parts_size(); ++i) {
    ASSIGN_OR_RETURN(auto writer, blobs_->NewWriter(limits_.max_part_bytes));
    writers_.push_back(std::move(writer));
  }
  return absl::OkStatus();
}

absl::Status DatasetUpload::OnMessage(
    const tlserve::v1::UploadDatasetRequest& request) {
  if (request.has_header()) {
    if (have_header_) {
      return absl::InvalidArgumentError("the header was sent twice");
    }
    return OnHeader(request.header());
  }
  if (!have_header_) {
    return absl::InvalidArgumentError(
        "the first message of UploadDataset must be the header");
  }
  if (existing_id_.has_value()) return absl::OkStatus();
  const auto& chunk = request.chunk();
  if (chunk.part_index() < 0 || chunk.part_index() >= header_.parts_size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk.part_index %d is outside [0, %d)", chunk.part_index(),
        header_.parts_size()));
  }
  // Refused at the first byte past the declared size, not after storing
  // however much more the client sends.
  const auto& declared = header_.parts(chunk.part_index());
  BlobStore::Writer& writer = *writers_[chunk.part_index()];
  if (declared.size_bytes() != 0 &&
      writer.size() + static_cast<int64_t>(chunk.data().size()) >
          declared.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: received more than the %d bytes header.parts[%d].size_bytes "
        "declared",
        DatasetPartRole_Name(declared.role()), declared.size_bytes(),
        chunk.part_index()));
  }
  return writer.Append(chunk.data());
}

absl::StatusOr<tlserve::v1::Dataset> DatasetUpload::Finish() {
  if (!have_header_) {
    return absl::InvalidArgumentError("the upload stream was empty");
  }
  if (existing_id_.has_value()) return store_->GetDataset(*existing_id_, tenant_);
  int64_t received = 0;
  for (const auto& writer : writers_) received += writer->size();
  RETURN_IF_ERROR(CheckQuota(received));

  tlserve::v1::Dataset dataset;
  DatasetFiles files;
  files.format = header_.format();
  files.class_names = {header_.class_names().begin(), header_.class_names().end()};
  for (int i = 0; i < header_.parts_size(); ++i) {
    const auto& declared = header_.parts(i);
    BlobStore::Writer& writer = *writers_[i];
    const std::string role = DatasetPartRole_Name(declared.role());
    if (declared.size_bytes() != 0 && writer.size() != declared.size_bytes()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: received %d bytes but the header said %d; the upload was cut "
          "short, send it again",
          role, writer.size(), declared.size_bytes()));
    }
    if (writer.size() == 0) {
      return absl::InvalidArgumentError(absl::StrFormat("%s is empty", role));
    }
    auto sha = writer.Commit(declared.sha256());
    if (!sha.ok()) {
      return absl::Status(sha.status().code(),
                          absl::StrFormat("%s: %s", role, sha.status().message()));
    }
    auto* part = dataset.add_parts();
    part->set_role(declared.role());
    part->set_size_bytes(writer.size());
    part->set_sha256(*sha);
    ASSIGN_OR_RETURN(files.paths[declared.role()], blobs_->PathOf(*sha));
  }

  dataset.set_id(NewId("ds"));
  dataset.set_tenant(tenant_);
  dataset.set_name(header_.name());
  dataset.set_format(header_.format());
  if (files.format == tlserve::v1::TEXT_CSV) {
    return FinishText(std::move(dataset), files);
  }
  ASSIGN_OR_RETURN(DecodedDataset decoded, LoadDataset(files, limits_.dataset));

  SetClassesAndCounts(decoded.class_names, decoded.train.labels,
                      decoded.test.labels, &dataset);
  // Geometry is recorded when every image shares it.
  const Image& first = decoded.train.images.front();
  bool same = true;
  for (const auto* split : {&decoded.train, &decoded.test}) {
    for (const Image& image : split->images) {
      same &= image.height == first.height && image.width == first.width &&
              image.channels == first.channels;
    }
  }
  if (same) {
    dataset.set_channels(first.channels);
    dataset.set_height(first.height);
    dataset.set_width(first.width);
  }
  // Duplicates, leakage and balance, while every image is in memory.
  return StoreWithFindings(std::move(dataset), decoded.class_names,
                           IndexDatasetImages(decoded), "image");
}

absl::StatusOr<tlserve::v1::Dataset> DatasetUpload::StoreWithFindings(
    tlserve::v1::Dataset dataset, const std::vector<std::string>& class_names,
    const DatasetImageIndex& index, absl::string_view noun) {
  DatasetFindings findings = CheckDatasetImages(class_names, index, noun);
  dataset.set_duplicate_train_images(findings.duplicate_train_images);
  dataset.set_test_images_in_train(findings.test_images_in_train);
  for (std::string& warning : findings.warnings) {
    dataset.add_warnings(std::move(warning));
  }
  *dataset.mutable_create_time() = ToProtoTime(absl::Now());
  // The per-record index lets job validation check each job's split later.
  RETURN_IF_ERROR(store_->PutDatasetWithIndex(
      dataset, EncodeDatasetImageIndex(index), header_.request_id()));
  return dataset;
}

absl::StatusOr<tlserve::v1::Dataset> DatasetUpload::FinishText(
    tlserve::v1::Dataset dataset, const DatasetFiles& files) {
  auto path_of = [&](DatasetPartRole role) {
    auto it = files.paths.find(role);
    return it == files.paths.end() ? std::string() : it->second;
  };
  const std::string train_path = path_of(tlserve::v1::TRAIN_CSV);
  if (train_path.empty()) {
    return absl::InvalidArgumentError(
        "a TEXT_CSV dataset needs a TRAIN_CSV part (TEST_CSV is optional)");
  }
  TextCsvLimits limits;
  limits.max_records = limits_.dataset.max_images;
  ASSIGN_OR_RETURN(TextDatasetSplits text,
                   LoadTextDatasetFiles(train_path,
                                        path_of(tlserve::v1::TEST_CSV),
                                        files.class_names, limits));
  SetClassesAndCounts(text.class_names, text.train.labels, text.test.labels,
                      &dataset);
  return StoreWithFindings(
      std::move(dataset), text.class_names,
      IndexTextDataset(text.train.labels, text.train.texts, text.test.labels,
                       text.test.texts),
      "text");
}

BackboneUpload::BackboneUpload(Store* store, BlobStore* blobs, UploadLimits limits)
    : store_(store), blobs_(blobs), limits_(limits) {}

absl::Status BackboneUpload::OnMessage(
    const tlserve::v1::UploadBackboneRequest& request) {
  if (request.has_header()) {
    if (have_header_) return absl::InvalidArgumentError("the header was sent twice");
    const auto& h = request.header();
    RETURN_IF_ERROR(CheckName(h.name(), "header.name"));
    if (h.kind() == tlserve::v1::WORD_VECTORS) {
      if (h.has_input_spec()) {
        return absl::InvalidArgumentError(
            "header.input_spec is for image backbones; leave it out for "
            "WORD_VECTORS");
      }
    } else if (h.kind() == tlserve::v1::BACKBONE_KIND_UNSPECIFIED ||
               h.kind() == tlserve::v1::IMAGE_TORCHSCRIPT) {
      RETURN_IF_ERROR(ValidateInputSpec(h.input_spec()));
    } else {
      return absl::InvalidArgumentError(
          "header.kind must be IMAGE_TORCHSCRIPT (the default) or WORD_VECTORS");
    }
    if (h.size_bytes() < 0 || h.size_bytes() > limits_.max_backbone_bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "header.size_bytes must be in [0, %d]", limits_.max_backbone_bytes));
    }
    if (!h.sha256().empty() && !IsSha256Hex(h.sha256())) {
      return absl::InvalidArgumentError(
          "header.sha256 must be 64 lowercase hex digits");
    }
    RETURN_IF_ERROR(ValidateRequestId(h.request_id(), "header.request_id"));
    if (!h.request_id().empty()) {
      ASSIGN_OR_RETURN(existing_id_,
                       store_->LookupRequest("backbone", "", h.request_id()));
    }
    header_ = h;
    have_header_ = true;
    if (!existing_id_.has_value()) {
      ASSIGN_OR_RETURN(writer_, blobs_->NewWriter(limits_.max_backbone_bytes));
    }
    return absl::OkStatus();
  }
  if (!have_header_) {
    return absl::InvalidArgumentError(
        "the first message of UploadBackbone must be the header");
  }
  if (existing_id_.has_value()) return absl::OkStatus();
  if (header_.size_bytes() != 0 &&
      writer_->size() + static_cast<int64_t>(request.chunk().size()) >
          header_.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "received more than the %d bytes header.size_bytes declared",
        header_.size_bytes()));
  }
  return writer_->Append(request.chunk());
}

absl::StatusOr<tlserve::v1::Backbone> BackboneUpload::Finish() {
  if (!have_header_) return absl::InvalidArgumentError("the upload stream was empty");
  if (existing_id_.has_value()) {
    return store_->GetBackbone(*existing_id_, kEveryTenant);
  }
  if (header_.size_bytes() != 0 && writer_->size() != header_.size_bytes()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "received %d bytes but the header said %d; send the file again",
        writer_->size(), header_.size_bytes()));
  }
  const int64_t size = writer_->size();
  ASSIGN_OR_RETURN(std::string sha, writer_->Commit(header_.sha256()));
  ASSIGN_OR_RETURN(std::string path, blobs_->PathOf(sha));
  tlserve::v1::Backbone backbone;
  if (header_.kind() == tlserve::v1::WORD_VECTORS) {
    ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
    absl::StatusOr<WordVectors> vectors = ParseWordVectors(bytes);
    if (!vectors.ok()) {
      return vectors.status();  // its messages start "word vectors: "
    }
    backbone.set_kind(tlserve::v1::WORD_VECTORS);
    backbone.set_feature_dim(vectors->dim);
    backbone.set_vocab_size(vectors->size());
  } else {
    RETURN_IF_ERROR(CheckTorchScriptArchive(path));
    backbone.set_kind(tlserve::v1::IMAGE_TORCHSCRIPT);
    *backbone.mutable_input_spec() = header_.input_spec();
  }
  backbone.set_id(NewId("bb"));
  backbone.set_name(header_.name());
  backbone.set_sha256(sha);
  backbone.set_size_bytes(size);
  *backbone.mutable_create_time() = ToProtoTime(absl::Now());
  RETURN_IF_ERROR(store_->PutBackbone(backbone, header_.request_id()));
  return backbone;
}

}  // namespace tlserve
