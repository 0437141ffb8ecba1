// Retention: pruning a finished job's checkpoints and collecting the blobs
// nothing refers to (server/blob_collector.h), never one that something
// does.

#include "server/blob_collector.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using tlserve::v1::CheckpointInfo;

#define ASSERT_OK(expr)                          \
  do {                                           \
    auto _s = (expr);                            \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

class BlobCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/blob_collector_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto store = Store::Open(dir_ + "/tlserve.db");
    ASSERT_OK(store.status());
    store_ = *std::move(store);
    auto blobs = BlobStore::Open(dir_ + "/blobs");
    ASSERT_OK(blobs.status());
    blobs_ = *std::move(blobs);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Put(const std::string& content) {
    auto sha = blobs_->Put(content);
    EXPECT_TRUE(sha.ok()) << sha.status();
    return sha.ok() ? *sha : "";
  }

  // Dates a blob `age` in the past, as if written then.
  void Age(const std::string& sha, absl::Duration age) {
    const absl::Time then = absl::Now() - age;
    timespec times[2] = {absl::ToTimespec(then), absl::ToTimespec(then)};
    ASSERT_EQ(utimensat(AT_FDCWD, blobs_->PathOf(sha)->c_str(), times, 0), 0);
  }

  void AddJob(const std::string& id) {
    tlserve::v1::Job job;
    job.set_id(id);
    job.set_state(tlserve::v1::RUNNING);
    ASSERT_OK(store_->PutJob(job));
  }

  absl::Status AddCheckpoint(const std::string& job, int epoch,
                             const std::string& sha, bool best = false) {
    CheckpointInfo c;
    c.set_epoch(epoch);
    c.set_sha256(sha);
    c.set_best(best);
    return store_->AddCheckpoint(job, c);
  }

  std::string dir_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<BlobStore> blobs_;
};

TEST_F(BlobCollectorTest, KeepsEveryKindOfReferenceAndRemovesOnlyOldOrphans) {
  const std::string part = Put("dataset part");
  const std::string backbone_blob = Put("backbone");
  const std::string model_blob = Put("model");
  const std::string checkpoint = Put("checkpoint");
  const std::string old_orphan = Put("old orphan");
  const std::string young_orphan = Put("young orphan");
  tlserve::v1::Dataset dataset;
  dataset.set_id("ds-1");
  dataset.set_name("d");
  dataset.add_parts()->set_sha256(part);
  ASSERT_OK(store_->PutDataset(dataset, ""));
  tlserve::v1::Backbone backbone;
  backbone.set_id("bb-1");
  backbone.set_sha256(backbone_blob);
  ASSERT_OK(store_->PutBackbone(backbone, ""));
  tlserve::v1::Model model;
  model.set_id("model-1");
  model.set_sha256(model_blob);
  ASSERT_OK(store_->PutModel(model));
  AddJob("job-1");
  ASSERT_OK(AddCheckpoint("job-1", 1, checkpoint));
  // Everything old but one orphan: age alone never removes a referenced blob.
  for (const std::string& sha :
       {part, backbone_blob, model_blob, checkpoint, old_orphan}) {
    Age(sha, absl::Hours(3));
  }

  auto done = CollectBlobs(store_.get(), blobs_.get(), absl::Hours(1), absl::Now());
  ASSERT_OK(done.status());
  EXPECT_EQ(done->blobs, 6);
  EXPECT_EQ(done->referenced, 4);
  EXPECT_EQ(done->removed, 1);
  EXPECT_EQ(done->removed_bytes, 10);
  EXPECT_EQ(done->spared, 1);
  for (const std::string& sha : {part, backbone_blob, model_blob, checkpoint, young_orphan}) {
    EXPECT_TRUE(blobs_->Has(sha)) << sha;
  }
  EXPECT_FALSE(blobs_->Has(old_orphan));

  // A deleted dataset's part is an orphan for the next collection.
  ASSERT_OK(store_->DeleteDataset("ds-1"));
  done = CollectBlobs(store_.get(), blobs_.get(), absl::Hours(1), absl::Now());
  ASSERT_OK(done.status());
  EXPECT_EQ(done->removed, 1);
  EXPECT_FALSE(blobs_->Has(part));
}

// Content stored again while it is old (a re-upload of the same file) is
// dated anew, so a collection that runs before its row is written spares
// it.
TEST_F(BlobCollectorTest, StoringExistingContentAgainProtectsIt) {
  const std::string sha = Put("the same bytes");
  Age(sha, absl::Hours(3));
  ASSERT_EQ(Put("the same bytes"), sha);
  auto done = CollectBlobs(store_.get(), blobs_.get(), absl::Hours(1), absl::Now());
  ASSERT_OK(done.status());
  EXPECT_EQ(done->removed, 0);
  EXPECT_TRUE(blobs_->Has(sha));
  // And content whose blob was collected is simply stored again.
  Age(sha, absl::Hours(3));
  done = CollectBlobs(store_.get(), blobs_.get(), absl::Hours(1), absl::Now());
  ASSERT_OK(done.status());
  EXPECT_FALSE(blobs_->Has(sha));
  EXPECT_EQ(Put("the same bytes"), sha);
  EXPECT_TRUE(blobs_->Has(sha));
}

TEST_F(BlobCollectorTest, PruningKeepsTheNewestAndTheBestAndDeletingFreesAll) {
  AddJob("job-1");
  std::vector<std::string> shas;
  for (int epoch = 1; epoch <= 5; ++epoch) {
    shas.push_back(Put(absl::StrCat("epoch ", epoch)));
    ASSERT_OK(AddCheckpoint("job-1", epoch, shas.back(), /*best=*/epoch == 2));
  }
  ASSERT_OK(store_->PruneCheckpoints("job-1", 2));
  auto left = store_->ListCheckpoints("job-1");
  ASSERT_OK(left.status());
  std::vector<int> epochs;
  for (const CheckpointInfo& c : *left) epochs.push_back(c.epoch());
  EXPECT_EQ(epochs, (std::vector<int>{2, 4, 5}));
  EXPECT_EQ(store_->PruneCheckpoints("job-1", 0).code(),
            absl::StatusCode::kInvalidArgument);

  for (const std::string& sha : shas) Age(sha, absl::Hours(3));
  auto done = CollectBlobs(store_.get(), blobs_.get(), absl::Hours(1), absl::Now());
  ASSERT_OK(done.status());
  EXPECT_EQ(done->removed, 2);
  EXPECT_FALSE(blobs_->Has(shas[0]));
  EXPECT_TRUE(blobs_->Has(shas[1]));
  EXPECT_FALSE(blobs_->Has(shas[2]));
  EXPECT_TRUE(blobs_->Has(shas[3]));
  EXPECT_TRUE(blobs_->Has(shas[4]));

  // A deleted job's checkpoints all go.
  ASSERT_OK(store_->DeleteJob("job-1"));
  done = CollectBlobs(store_.get(), blobs_.get(), absl::Hours(1), absl::Now());
  ASSERT_OK(done.status());
  EXPECT_EQ(done->removed, 3);
  for (const std::string& sha : shas) EXPECT_FALSE(blobs_->Has(sha));
}

// Writers store blobs and then record them, as uploads and workers do,
// while collections with a short grace run back to back; others delete
// rows. Nothing a row refers to is ever missing, and orphans do go.
TEST_F(BlobCollectorTest, ConcurrentCollectionsNeverRemoveAReferencedBlob) {
  constexpr int kWriters = 3;
  constexpr int kPerWriter = 150;
  for (int w = 0; w < kWriters; ++w) AddJob(absl::StrCat("job-", w));
  std::atomic<bool> writing{true};
  std::atomic<int64_t> removed{0};
  std::atomic<int> collections{0};
  std::thread collector([&] {
    while (writing.load()) {
      // The grace only has to outlast store-then-record, microseconds here.
      auto done = CollectBlobs(store_.get(), blobs_.get(),
                               absl::Milliseconds(200), absl::Now());
      ASSERT_TRUE(done.ok()) << done.status();
      removed += done->removed;
      ++collections;
    }
  });
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      const std::string job = absl::StrCat("job-", w);
      for (int i = 0; i < kPerWriter; ++i) {
        const std::string sha = Put(absl::StrCat("writer ", w, " blob ", i));
        // Some content is shared between writers and stored again.
        Put(absl::StrCat("shared ", i % 7));
        ASSERT_TRUE(AddCheckpoint(job, i, sha).ok());
        if (i % 10 == 9) {
          ASSERT_TRUE(store_->PruneCheckpoints(job, 3).ok());
        }
      }
    });
  }
  for (std::thread& t : writers) t.join();
  // Let the pruned and shared orphans age past the grace and go.
  absl::SleepFor(absl::Milliseconds(400));
  writing = false;
  collector.join();
  auto last = CollectBlobs(store_.get(), blobs_.get(), absl::Milliseconds(200),
                           absl::Now());
  ASSERT_OK(last.status());
  removed += last->removed;

  auto referenced = store_->ReferencedBlobs();
  ASSERT_OK(referenced.status());
  EXPECT_EQ(referenced->size(), static_cast<size_t>(kWriters) * 3);
  for (const std::string& sha : *referenced) {
    EXPECT_TRUE(blobs_->Has(sha)) << "referenced blob " << sha << " was removed";
  }
  auto stored = blobs_->List();
  ASSERT_OK(stored.status());
  EXPECT_EQ(stored->size(), referenced->size());
  EXPECT_GT(collections.load(), 1);
  // Every pruned checkpoint and every shared blob went (stored == referenced
  // above). A shared blob may go more than once: on a loaded machine a
  // writer can store it again after a collection took it.
  EXPECT_GE(removed.load(), kWriters * (kPerWriter - 3) + 7);
}

}  // namespace
}  // namespace tlserve
