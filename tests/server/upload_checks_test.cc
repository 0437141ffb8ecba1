// Dataset checks at upload (duplicates, leakage, imbalance, per-record
// errors) and the job's own split checks at VALIDATING.

#include <cstdlib>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/dataset_checks.h"
#include "common/image.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/blob_store.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/job_spec_validator.h"
#include "server/store.h"
#include "server/uploads.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using tlserve::v1::DatasetPartRole;

void PutBe32(uint32_t v, std::string* out) {
  for (int shift = 24; shift >= 0; shift -= 8) {
    out->push_back(static_cast<char>((v >> shift) & 0xff));
  }
}

// IDX images [N, 4, 4]: image i is filled with values[i].
std::string IdxImages(const std::vector<int>& values) {
  std::string out("\0\0\x08\x03", 4);
  PutBe32(values.size(), &out);
  PutBe32(4, &out);
  PutBe32(4, &out);
  for (int v : values) out.append(16, static_cast<char>(v));
  return out;
}

std::string IdxLabels(const std::vector<int>& labels) {
  std::string out("\0\0\x08\x01", 4);
  PutBe32(labels.size(), &out);
  for (int l : labels) out.push_back(static_cast<char>(l));
  return out;
}

// A minimal ustar archive of regular files.
std::string Tar(const std::vector<std::pair<std::string, std::string>>& files) {
  std::string out;
  for (const auto& [name, data] : files) {
    std::string header(512, '\0');
    header.replace(0, name.size(), name);
    header.replace(100, 7, "0000644");
    header.replace(108, 7, "0000000");
    header.replace(116, 7, "0000000");
    char size[13];
    std::snprintf(size, sizeof(size), "%011o", static_cast<unsigned>(data.size()));
    header.replace(124, 11, size);
    header.replace(136, 11, "00000000000");
    header[156] = '0';
    header.replace(257, 6, std::string("ustar\0", 6));
    header.replace(263, 2, "00");
    header.replace(148, 8, "        ");
    unsigned sum = 0;
    for (char c : header) sum += static_cast<unsigned char>(c);
    char chk[8];
    std::snprintf(chk, sizeof(chk), "%06o", sum);
    header.replace(148, 7, std::string(chk, 6) + '\0');
    out += header;
    out += data;
    out.append((512 - data.size() % 512) % 512, '\0');
  }
  out.append(1024, '\0');
  return out;
}

std::string Png(uint8_t value) {
  Image image;
  image.height = 4;
  image.width = 4;
  image.channels = 1;
  image.pixels.assign(16, value);
  return *EncodePng(image);
}

std::string MakeTempDir() {
  std::string tmpl = testing::TempDir() + "/uc_XXXXXX";
  char* dir = mkdtemp(tmpl.data());
  EXPECT_NE(dir, nullptr);
  return tmpl;
}

class UploadChecksTest : public testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir();
    store_ = *Store::Open(dir_ + "/tlserve.db");
    blobs_ = *BlobStore::Open(dir_ + "/blobs");
  }
  void TearDown() override {
    manager_.reset();
    store_.reset();
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }

  absl::StatusOr<tlserve::v1::Dataset> Upload(
      tlserve::v1::DatasetFormat format,
      const std::vector<std::pair<DatasetPartRole, std::string>>& parts,
      const std::vector<std::string>& class_names = {}) {
    DatasetUpload upload(store_.get(), blobs_.get(), UploadLimits{});
    tlserve::v1::UploadDatasetRequest request;
    auto* header = request.mutable_header();
    header->set_name("test");
    header->set_format(format);
    for (const auto& [role, bytes] : parts) {
      auto* part = header->add_parts();
      part->set_role(role);
      part->set_size_bytes(bytes.size());
    }
    for (const std::string& name : class_names) header->add_class_names(name);
    absl::Status status = upload.OnMessage(request);
    if (!status.ok()) return status;
    for (size_t i = 0; i < parts.size(); ++i) {
      tlserve::v1::UploadDatasetRequest chunk;
      chunk.mutable_chunk()->set_part_index(static_cast<int>(i));
      chunk.mutable_chunk()->set_data(parts[i].second);
      status = upload.OnMessage(chunk);
      if (!status.ok()) return status;
    }
    return upload.Finish();
  }

  absl::StatusOr<tlserve::v1::Dataset> UploadIdx(
      const std::vector<int>& train_values, const std::vector<int>& train_labels,
      const std::vector<int>& test_values = {},
      const std::vector<int>& test_labels = {},
      const std::vector<std::string>& class_names = {}) {
    std::vector<std::pair<DatasetPartRole, std::string>> parts = {
        {tlserve::v1::TRAIN_IMAGES, IdxImages(train_values)},
        {tlserve::v1::TRAIN_LABELS, IdxLabels(train_labels)}};
    if (!test_values.empty()) {
      parts.push_back({tlserve::v1::TEST_IMAGES, IdxImages(test_values)});
      parts.push_back({tlserve::v1::TEST_LABELS, IdxLabels(test_labels)});
    }
    return Upload(tlserve::v1::IDX, parts, class_names);
  }

  JobManager& Manager() {
    if (manager_ == nullptr) {
      manager_ = std::make_unique<JobManager>(JobManager::Options{},
                                              store_.get(), blobs_.get(), &hub_);
    }
    return *manager_;
  }

  tlserve::v1::JobSpec PretrainSpec(const std::string& dataset_id) {
    tlserve::v1::JobSpec spec;
    spec.set_kind(tlserve::v1::PRETRAIN);
    spec.mutable_pretrain()->set_backbone_name("bb");
    spec.mutable_data()->set_dataset_id(dataset_id);
    spec.set_seed(3);
    return spec;
  }

  // The free-text events of a job, in order.
  std::vector<std::string> Messages(const std::string& job_id) {
    std::vector<std::string> out;
    auto events = store_->ListEvents(job_id, 0, 1000);
    EXPECT_TRUE(events.ok()) << events.status();
    if (!events.ok()) return out;
    for (const auto& event : *events) {
      if (event.has_message()) out.push_back(event.message());
    }
    return out;
  }

  absl::StatusOr<tlserve::v1::Backbone> UploadVectors(const std::string& bytes,
                                                      bool with_input_spec = false) {
    BackboneUpload upload(store_.get(), blobs_.get(), UploadLimits{});
    tlserve::v1::UploadBackboneRequest request;
    auto* header = request.mutable_header();
    header->set_name("vectors");
    header->set_kind(tlserve::v1::WORD_VECTORS);
    header->set_size_bytes(bytes.size());
    if (with_input_spec) header->mutable_input_spec()->set_channels(3);
    absl::Status status = upload.OnMessage(request);
    if (!status.ok()) return status;
    tlserve::v1::UploadBackboneRequest chunk;
    chunk.set_chunk(bytes);
    status = upload.OnMessage(chunk);
    if (!status.ok()) return status;
    return upload.Finish();
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
  EventHub hub_;
  std::unique_ptr<JobManager> manager_;
};

TEST_F(UploadChecksTest, CleanDatasetHasNoWarningsAndKeepsAnIndex) {
  auto dataset = UploadIdx({1, 2, 3, 4}, {0, 1, 0, 1}, {5, 6}, {0, 1});
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->duplicate_train_images(), 0);
  EXPECT_EQ(dataset->test_images_in_train(), 0);
  EXPECT_THAT(dataset->warnings(), IsEmpty());
  auto bytes = store_->GetDatasetImageIndex(dataset->id());
  ASSERT_TRUE(bytes.ok() && bytes->has_value());
  auto index = DecodeDatasetImageIndex(**bytes);
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_THAT(index->train_labels, ElementsAre(0, 1, 0, 1));
  EXPECT_EQ(index->test_hashes.size(), 2u);
  // The stored dataset says the same; the index goes with the dataset.
  EXPECT_EQ(store_->GetDataset(dataset->id())->warnings_size(), 0);
  ASSERT_TRUE(store_->DeleteDataset(dataset->id()).ok());
  EXPECT_FALSE(store_->GetDatasetImageIndex(dataset->id())->has_value());
}

TEST_F(UploadChecksTest, ReportsDuplicatesLeakageAndImbalance) {
  // Class 0: 22 images, records 0 and 5 identical (value 7). Class 1: 2.
  std::vector<int> values, labels;
  for (int i = 0; i < 22; ++i) {
    values.push_back(i == 5 ? 7 : 7 + i);
    labels.push_back(0);
  }
  values.push_back(100);
  labels.push_back(1);
  values.push_back(101);
  labels.push_back(1);
  // Test record 1 is train record 23's image.
  auto dataset = UploadIdx(values, labels, {200, 101}, {0, 1},
                           {"shirt", "bag", "hat"});
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->duplicate_train_images(), 2);
  EXPECT_EQ(dataset->test_images_in_train(), 1);
  EXPECT_THAT(
      dataset->warnings(),
      ElementsAre(
          "duplicates: 2 training images are exact copies of another training "
          "image (1 distinct images repeated), e.g. records 0, 5 are identical",
          "test-in-train leakage: 1 of 2 test images also occur in the "
          "training split (e.g. test record 1 = train record 23); test "
          "accuracy will be optimistic",
          "class 2 ('hat') has no training images; leave it out of "
          "spec.data.class_subset",
          "class imbalance: class 0 ('shirt') has 22 training images but "
          "class 1 ('bag') has only 2 (11.0x, above 10x); consider "
          "spec.data.samples_per_class or more images of the small class"));
  // What GetDataset returns.
  auto stored = store_->GetDataset(dataset->id());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->warnings_size(), 4);
  EXPECT_EQ(stored->duplicate_train_images(), 2);
}

TEST_F(UploadChecksTest, IdxLabelOutOfRangeNamesTheRecord) {
  auto dataset = UploadIdx({1, 2, 3}, {0, 1, 5}, {}, {}, {"a", "b"});
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dataset.status().message(),
            "TRAIN_LABELS: label 5 at record 2 is outside [0, 2)");
  dataset = UploadIdx({1, 2}, {0, 1}, {3, 4}, {1, 9}, {"a", "b"});
  EXPECT_EQ(dataset.status().message(),
            "TEST_LABELS: label 9 at record 1 is outside [0, 2)");
}

TEST_F(UploadChecksTest, ArchiveErrorsNameTheEntry) {
  const std::string train = Tar(
      {{"cat/a.png", Png(1)}, {"cat/bad.png", "not a png"}, {"dog/b.png", Png(2)}});
  auto dataset = Upload(tlserve::v1::IMAGE_FOLDER_TAR,
                        {{tlserve::v1::TRAIN_ARCHIVE, train}});
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dataset.status().message(),
              HasSubstr("TRAIN_ARCHIVE: entry 'cat/bad.png': "));

  // A test image in a folder that is no class (its label would be out of
  // range) names the entry too.
  const std::string good =
      Tar({{"cat/a.png", Png(1)}, {"dog/b.png", Png(2)}});
  const std::string test =
      Tar({{"cat/x.png", Png(3)}, {"bird/y.png", Png(4)}});
  dataset = Upload(tlserve::v1::IMAGE_FOLDER_TAR,
                   {{tlserve::v1::TRAIN_ARCHIVE, good},
                    {tlserve::v1::TEST_ARCHIVE, test}});
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(dataset.status().message(),
            "TEST_ARCHIVE: class folder 'bird' is not a class of TRAIN_ARCHIVE "
            "(classes: cat, dog); entry 'bird/y.png' is in it");

  // Duplicates are found in archives as well (same pixels, other files).
  const std::string dup = Tar({{"cat/a.png", Png(1)},
                               {"cat/a_copy.png", Png(1)},
                               {"dog/b.png", Png(2)}});
  dataset = Upload(tlserve::v1::IMAGE_FOLDER_TAR,
                   {{tlserve::v1::TRAIN_ARCHIVE, dup}});
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->duplicate_train_images(), 2);
}

TEST_F(UploadChecksTest, JobWarnsWhenValidationImagesAreInTraining) {
  // Class 0: ten copies of one image; class 1: ten distinct images. With
  // validation_fraction 0.2 each class gives 2 validation images; class
  // 0's are copies of its training images, whatever the seed.
  std::vector<int> values, labels;
  for (int i = 0; i < 10; ++i) {
    values.push_back(1);
    labels.push_back(0);
    values.push_back(50 + i);
    labels.push_back(1);
  }
  auto dataset = UploadIdx(values, labels);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  tlserve::v1::JobSpec spec = PretrainSpec(dataset->id());
  spec.mutable_data()->set_validation_fraction(0.2f);
  auto job = Manager().CreateJob(spec, "");
  ASSERT_TRUE(job.ok()) << job.status();
  std::vector<std::string> messages = Messages(job->id());
  ASSERT_EQ(messages.size(), 1u);
  EXPECT_THAT(messages[0],
              HasSubstr("warning: train/validation overlap: 2 of 4 validation "
                        "images are identical to training images (validation "
                        "record "));
  EXPECT_THAT(messages[0], HasSubstr("validation metrics will be optimistic"));

  // The named records are the job's own split, as the worker will draw it.
  auto index = DecodeDatasetImageIndex(**store_->GetDatasetImageIndex(dataset->id()));
  ASSERT_TRUE(index.ok());
  auto warnings = CheckJobSplit(job->spec(), *dataset, *index);
  ASSERT_TRUE(warnings.ok());
  EXPECT_THAT(*warnings, ElementsAre(messages[0].substr(9)));

  // The events sit between VALIDATING and QUEUED.
  auto events = *store_->ListEvents(job->id(), 0, 100);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].state_change().to(), tlserve::v1::VALIDATING);
  EXPECT_TRUE(events[1].has_message());
  EXPECT_EQ(events[2].state_change().to(), tlserve::v1::QUEUED);
}

TEST_F(UploadChecksTest, JobWarnsAboutClassesWithOneTrainingSample) {
  auto dataset = UploadIdx({1, 2, 3, 4, 5, 6}, {0, 0, 0, 1, 1, 1}, {}, {},
                           {"a", "b"});
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  tlserve::v1::JobSpec spec = PretrainSpec(dataset->id());
  spec.mutable_data()->set_samples_per_class(2);
  spec.mutable_data()->set_validation_fraction(0.5f);
  auto job = Manager().CreateJob(spec, "");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_THAT(
      Messages(job->id()),
      ElementsAre("warning: class 0 ('a') has only 1 training sample after "
                  "the split (samples_per_class 2, validation_fraction 0.5, "
                  "seed 3); the model will hardly learn it: raise "
                  "samples_per_class or add images",
                  "warning: class 1 ('b') has only 1 training sample after "
                  "the split (samples_per_class 2, validation_fraction 0.5, "
                  "seed 3); the model will hardly learn it: raise "
                  "samples_per_class or add images"));
}

TEST_F(UploadChecksTest, CleanJobHasNoWarningsAndOldDatasetsSkipTheChecks) {
  auto dataset = UploadIdx({1, 2, 3, 4, 5, 6}, {0, 0, 0, 1, 1, 1});
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  auto job = Manager().CreateJob(PretrainSpec(dataset->id()), "");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_THAT(Messages(job->id()), IsEmpty());

  // A dataset stored without an index (before schema version 2).
  tlserve::v1::Dataset old = *dataset;
  old.set_id("ds-old");
  ASSERT_TRUE(store_->PutDataset(old).ok());
  job = Manager().CreateJob(PretrainSpec("ds-old"), "");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_THAT(Messages(job->id()), IsEmpty());
}

TEST_F(UploadChecksTest, SplitCheckRefusesAClassWithoutTrainingSamples) {
  // The dataset's counts say class 1 has images, its index says not (a
  // split that cannot train must be refused, naming the field).
  tlserve::v1::Dataset dataset;
  dataset.set_id("ds-x");
  dataset.add_class_names("a");
  dataset.add_class_names("b");
  dataset.set_train_count(3);
  DatasetImageIndex index;
  index.train_labels = {0, 0, 0};
  index.train_hashes = {1, 2, 3};
  tlserve::v1::JobSpec spec = PretrainSpec("ds-x");
  auto warnings = CheckJobSplit(spec, dataset, index);
  EXPECT_EQ(warnings.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(warnings.status().message(),
              HasSubstr("spec.data.class_subset: class 1 ('b') has no "
                        "training samples after the split"));

  // A damaged index only skips the checks, with a warning.
  auto skipped = CheckJobSplit(spec, dataset, std::optional<std::string>("junk"));
  ASSERT_TRUE(skipped.ok());
  ASSERT_EQ(skipped->size(), 1u);
  EXPECT_THAT((*skipped)[0], HasSubstr("split checks skipped"));
}

TEST_F(UploadChecksTest, TextCsvUploadCountsClassesAndFindsRepeatedTexts) {
  auto dataset = Upload(
      tlserve::v1::TEXT_CSV,
      {{tlserve::v1::TRAIN_CSV,
        "text,label\ngood film,pos\nbad film,neg\ngood film,pos\nfine,pos\n"},
       {tlserve::v1::TEST_CSV, "text,label\nbad film,neg\nnew one,pos\n"}});
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ(dataset->format(), tlserve::v1::TEXT_CSV);
  EXPECT_THAT(dataset->class_names(), ElementsAre("neg", "pos"));
  EXPECT_THAT(dataset->train_class_counts(), ElementsAre(1, 3));
  EXPECT_THAT(dataset->test_class_counts(), ElementsAre(1, 1));
  EXPECT_EQ(dataset->train_count(), 4);
  EXPECT_EQ(dataset->test_count(), 2);
  EXPECT_EQ(dataset->height(), 0);
  EXPECT_EQ(dataset->duplicate_train_images(), 2);
  EXPECT_EQ(dataset->test_images_in_train(), 1);
  std::string warnings;
  for (const std::string& w : dataset->warnings()) warnings += w + "\n";
  EXPECT_THAT(warnings, HasSubstr("2 training texts are exact copies"));
  EXPECT_THAT(warnings, HasSubstr("1 of 2 test texts also occur"));
  // The index makes the job-time split checks work for text too.
  auto index = store_->GetDatasetImageIndex(dataset->id());
  ASSERT_TRUE(index.ok() && index->has_value());
}

TEST_F(UploadChecksTest, TextCsvUploadErrorsNameThePartAndTheRecord) {
  auto no_train = Upload(tlserve::v1::TEXT_CSV,
                         {{tlserve::v1::TEST_CSV, "text,label\nx,a\n"}});
  EXPECT_THAT(no_train.status().message(), HasSubstr("needs a TRAIN_CSV part"));
  auto wrong_role = Upload(tlserve::v1::TEXT_CSV,
                           {{tlserve::v1::TRAIN_IMAGES, "text,label\nx,a\n"}});
  EXPECT_THAT(wrong_role.status().message(),
              HasSubstr("role TRAIN_IMAGES does not belong to format TEXT_CSV"));
  auto broken = Upload(tlserve::v1::TEXT_CSV,
                       {{tlserve::v1::TRAIN_CSV, "text,label\nx,a\n\"y,b\n"}});
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(broken.status().message(), HasSubstr("the training file: text CSV"));
  auto listed = store_->ListDatasets(10, "");
  ASSERT_TRUE(listed.ok());
  EXPECT_THAT(listed->items, IsEmpty());
}

TEST_F(UploadChecksTest, WordVectorsBackboneKnowsItsWidthAndWords) {
  auto backbone = UploadVectors("cat 1 0 0\ndog 0 1 0\ncar 0 0 1\n");
  ASSERT_TRUE(backbone.ok()) << backbone.status();
  EXPECT_EQ(backbone->kind(), tlserve::v1::WORD_VECTORS);
  EXPECT_EQ(backbone->feature_dim(), 3);
  EXPECT_EQ(backbone->vocab_size(), 3);
  EXPECT_FALSE(backbone->has_input_spec());

  auto short_row = UploadVectors("cat 1 0 0\ndog 0 1\n");
  EXPECT_EQ(short_row.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(short_row.status().message(), HasSubstr("word vectors: "));
  EXPECT_THAT(short_row.status().message(), HasSubstr("line 2"));
  auto with_spec = UploadVectors("cat 1\n", /*with_input_spec=*/true);
  EXPECT_THAT(with_spec.status().message(),
              HasSubstr("leave it out for WORD_VECTORS"));
}

TEST_F(UploadChecksTest, TextJobsAreCheckedBeforeTheyQueue) {
  auto text = Upload(tlserve::v1::TEXT_CSV,
                     {{tlserve::v1::TRAIN_CSV,
                       "text,label\na cat,animal\na dog,animal\nmy car,vehicle\n"
                       "a bus,vehicle\nthe cow,animal\nthe van,vehicle\n"}});
  ASSERT_TRUE(text.ok()) << text.status();
  auto images = UploadIdx({1, 2, 3, 4, 5, 6}, {0, 0, 0, 1, 1, 1});
  ASSERT_TRUE(images.ok()) << images.status();
  auto vectors = UploadVectors("cat 1 0\ndog 1 0\ncar 0 1\nbus 0 1\n");
  ASSERT_TRUE(vectors.ok()) << vectors.status();

  auto spec = [&](const std::string& dataset_id) {
    tlserve::v1::JobSpec s;
    s.set_kind(tlserve::v1::FINE_TUNE);
    s.mutable_data()->set_dataset_id(dataset_id);
    s.set_backbone_id(vectors->id());
    s.mutable_text()->set_pooling("max");
    return s;
  };
  auto refused = [&](tlserve::v1::JobSpec s) {
    auto job = Manager().CreateJob(s, "");
    EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(job.status().message());
  };
  auto job = Manager().CreateJob(spec(text->id()), "");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec().freeze().mode(), tlserve::v1::FreezePolicy::FROZEN);

  tlserve::v1::JobSpec s = spec(text->id());
  s.mutable_freeze()->set_mode(tlserve::v1::FreezePolicy::LAST_N_BLOCKS);
  s.mutable_freeze()->set_n_blocks(1);
  EXPECT_THAT(refused(s), HasSubstr("does not apply to text jobs"));
  s = spec(text->id());
  s.set_kind(tlserve::v1::MULTITASK);
  EXPECT_THAT(refused(s), HasSubstr("text datasets train FINE_TUNE jobs only"));
  s = spec(text->id());
  s.mutable_text()->set_pooling("avg");
  EXPECT_THAT(refused(s), HasSubstr("spec.text.pooling must be"));
  s = spec(text->id());
  s.mutable_text()->set_max_tokens(100000);
  EXPECT_THAT(refused(s), HasSubstr("spec.text.max_tokens must be in [0, 65536]"));
  s = spec(text->id());
  s.mutable_text()->set_conv_channels(64);
  EXPECT_THAT(refused(s), HasSubstr("conv_channels is for pooling \"conv\" only"));
  s = spec(text->id());
  s.mutable_augment()->set_horizontal_flip(true);
  EXPECT_THAT(refused(s), HasSubstr("image augmentations"));
  // Word vectors do not fit images, and text settings do not fit them.
  s = spec(images->id());
  s.clear_text();
  EXPECT_THAT(refused(s), HasSubstr("is word vectors, for text datasets"));
  EXPECT_THAT(refused(spec(images->id())), HasSubstr("spec.text is for text datasets"));
}

}  // namespace
}  // namespace tlserve
