// A JobSpec as a client could send it (binary protobuf; inputs that do not
// parse are skipped) through what CreateJob does with it: ApplyJobDefaults,
// ValidateJobSpec against a small dataset and backbone, then CheckJobSplit
// on that dataset's image index. Each spec meets every pairing of an image
// or text dataset with an image or word-vector backbone.

#include <cstddef>
#include <cstdint>
#include <string>

#include "google/protobuf/stubs/logging.h"
#include "google/protobuf/util/field_comparator.h"
#include "google/protobuf/util/message_differencer.h"
#include "common/recipe_validation.h"
#include "server/job_spec_validator.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

using tlserve::fuzz::Require;

// 4 classes: class 2 with a single training image (a split warning), class
// 3 with none in the test split; records 0 and 4 share pixels, as do
// train record 1 and test record 0 (overlap warnings).
struct World {
  tlserve::v1::Dataset dataset;
  tlserve::v1::Backbone backbone;
  tlserve::DatasetImageIndex index;
  // The same records as TEXT_CSV, and word vectors.
  tlserve::v1::Dataset text_dataset;
  tlserve::v1::Backbone vectors;

  World() {
    dataset.set_id("ds-fuzz");
    for (const char* name : {"cat", "dog", "owl", "yak"}) {
      dataset.add_class_names(name);
    }
    index.train_labels = {0, 1, 0, 1, 0, 1, 3, 3, 2, 0, 1, 3};
    index.test_labels = {1, 0, 1, 2};
    for (size_t i = 0; i < index.train_labels.size(); ++i) {
      index.train_hashes.push_back(1000 + i);
    }
    index.train_hashes[4] = index.train_hashes[0];
    for (size_t i = 0; i < index.test_labels.size(); ++i) {
      index.test_hashes.push_back(2000 + i);
    }
    index.test_hashes[0] = index.train_hashes[1];
    std::vector<int64_t> train_counts(4, 0);
    std::vector<int64_t> test_counts(4, 0);
    for (int32_t label : index.train_labels) ++train_counts[label];
    for (int32_t label : index.test_labels) ++test_counts[label];
    for (int64_t c : train_counts) dataset.add_train_class_counts(c);
    for (int64_t c : test_counts) dataset.add_test_class_counts(c);
    dataset.set_train_count(static_cast<int64_t>(index.train_labels.size()));
    dataset.set_test_count(static_cast<int64_t>(index.test_labels.size()));
    dataset.set_channels(1);
    dataset.set_height(28);
    dataset.set_width(28);

    backbone.set_id("bb-fuzz");
    auto* in = backbone.mutable_input_spec();
    in->set_channels(3);
    in->set_height(32);
    in->set_width(32);
    for (const char* block : {"layer1", "layer2", "layer3", "fc"}) {
      backbone.add_blocks(block);
    }
    backbone.set_kind(tlserve::v1::IMAGE_TORCHSCRIPT);

    text_dataset = dataset;
    text_dataset.set_id("ds-fuzz-text");
    text_dataset.set_format(tlserve::v1::TEXT_CSV);
    text_dataset.clear_channels();
    text_dataset.clear_height();
    text_dataset.clear_width();
    vectors.set_id("bb-fuzz-vectors");
    vectors.set_kind(tlserve::v1::WORD_VECTORS);
    vectors.set_feature_dim(50);
    vectors.set_vocab_size(1000);
  }
};

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs every string field that is not UTF-8 (the parse then
  // fails and the input is skipped): noise that hides the fuzzer's output.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const World* world = new World();
  tlserve::v1::JobSpec spec;
  if (!spec.ParseFromArray(data, static_cast<int>(size))) return 0;

  tlserve::ApplyJobDefaults(&spec);
  // Defaults fill only unset fields: a second pass changes nothing.
  tlserve::v1::JobSpec twice = spec;
  tlserve::ApplyJobDefaults(&twice);
  // Compared field by field: map fields (freeze.block_lr_scales) serialize
  // in no fixed order; a NaN the client sent stays NaN.
  google::protobuf::util::DefaultFieldComparator comparator;
  comparator.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer differencer;
  differencer.set_field_comparator(&comparator);
  Require(differencer.Compare(twice, spec), "ApplyJobDefaults is idempotent");

  for (const tlserve::v1::Dataset* dataset :
       {&world->dataset, &world->text_dataset}) {
    for (const tlserve::v1::Backbone* candidate :
         {&world->backbone, &world->vectors}) {
      const tlserve::v1::Backbone* backbone =
          tlserve::ReusesBackbone(spec.kind()) ? candidate : nullptr;
      const absl::Status valid =
          tlserve::ValidateJobSpec(spec, *dataset, backbone);
      if (!valid.ok()) {
        Require(valid.code() == absl::StatusCode::kInvalidArgument,
                "ValidateJobSpec fails with INVALID_ARGUMENT");
        continue;
      }
      // A text dataset takes word vectors and an image dataset does not.
      Require(backbone == nullptr ||
                  (dataset->format() == tlserve::v1::TEXT_CSV) ==
                      (backbone->kind() == tlserve::v1::WORD_VECTORS),
              "datasets and backbones pair by kind");
      absl::StatusOr<std::vector<std::string>> warnings =
          tlserve::CheckJobSplit(spec, *dataset, world->index);
      Require(warnings.ok() || warnings.status().code() ==
                                   absl::StatusCode::kInvalidArgument,
              "CheckJobSplit fails with INVALID_ARGUMENT");
      // The stored-bytes overload must agree with the in-memory index.
      const std::string stored = tlserve::EncodeDatasetImageIndex(world->index);
      absl::StatusOr<std::vector<std::string>> from_bytes =
          tlserve::CheckJobSplit(spec, *dataset, stored);
      Require(from_bytes.status() == warnings.status() &&
                  (!warnings.ok() || *from_bytes == *warnings),
              "CheckJobSplit from stored bytes agrees");
    }
  }
  return 0;
}
