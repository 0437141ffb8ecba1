#include "server/store.h"

#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using tlserve::v1::Backbone;
using tlserve::v1::CheckpointInfo;
using tlserve::v1::Dataset;
using tlserve::v1::Job;
using tlserve::v1::JobEvent;
using tlserve::v1::Model;

const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

#define ASSERT_OK(expr)                                  \
  do {                                                   \
    const auto& assert_ok_result_ = (expr);              \
    ASSERT_TRUE(StatusOf(assert_ok_result_).ok())        \
        << #expr << ": " << StatusOf(assert_ok_result_); \
  } while (0)

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL_(TLSERVE_TEST_CONCAT_(sor_, __LINE__), lhs, expr)
#define TLSERVE_TEST_CONCAT_INNER_(a, b) a##b
#define TLSERVE_TEST_CONCAT_(a, b) TLSERVE_TEST_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr)        \
  auto tmp = (expr);                                      \
  ASSERT_TRUE(tmp.ok()) << #expr << ": " << tmp.status(); \
  lhs = std::move(tmp).value()

Dataset MakeDataset(const std::string& id) {
  Dataset d;
  d.set_id(id);
  d.set_name(absl::StrCat("name of ", id));
  d.set_format(tlserve::v1::IDX);
  d.add_class_names("cat");
  d.add_class_names("dog");
  d.set_train_count(60000);
  d.set_channels(1);
  d.set_height(28);
  d.set_width(28);
  d.mutable_create_time()->set_seconds(1700000000);
  d.set_tenant("default");  // what the store gives a row without one
  return d;
}

Job MakeJob(const std::string& id, int priority,
            tlserve::v1::JobState state = tlserve::v1::QUEUED) {
  Job job;
  job.set_id(id);
  job.set_state(state);
  job.mutable_spec()->set_priority(priority);
  job.mutable_spec()->set_display_name(absl::StrCat("job ", id));
  job.mutable_spec()->set_epochs(3);
  job.set_tenant("default");
  return job;
}

JobEvent MessageEvent(const std::string& text) {
  JobEvent event;
  event.set_message(text);
  event.mutable_time()->set_seconds(1700000000);
  return event;
}

std::vector<std::string> Ids(const std::vector<Job>& jobs) {
  std::vector<std::string> ids;
  for (const auto& job : jobs) ids.push_back(job.id());
  return ids;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = testing::TempDir() + "/store_test_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/tlserve.db";
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Closes the store (if open) and opens the same file again.
  void Reopen() {
    store_.reset();
    auto store = Store::Open(path_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(store).value();
  }

  // A query through a second, independent connection: what is on disk.
  std::string QueryText(const std::string& sql) {
    sqlite3* db = nullptr;
    EXPECT_EQ(
        sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr),
        SQLITE_OK);
    std::string result;
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(db);
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      const unsigned char* text = sqlite3_column_text(stmt, 0);
      if (text != nullptr) result = reinterpret_cast<const char*>(text);
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return result;
  }

  // A write through a second connection, e.g. to damage a record.
  void Exec(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error),
              SQLITE_OK)
        << (error != nullptr ? error : "");
    sqlite3_free(error);
    sqlite3_close(db);
  }

  std::string dir_;
  std::string path_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, AppliesMigrationsOnceAndReopenKeepsData) {
  const int version = store_->schema_version();
  EXPECT_GE(version, 1);
  EXPECT_EQ(QueryText("SELECT COUNT(*) FROM schema_migrations"),
            absl::StrCat(version));
  ASSERT_OK(store_->PutDataset(MakeDataset("ds-1")));

  Reopen();
  EXPECT_EQ(store_->schema_version(), version);
  // Reopening applied nothing: still one row per version.
  EXPECT_EQ(QueryText("SELECT COUNT(*) FROM schema_migrations"),
            absl::StrCat(version));
  ASSERT_OK_AND_ASSIGN(Dataset d, store_->GetDataset("ds-1"));
  EXPECT_EQ(d.DebugString(), MakeDataset("ds-1").DebugString());
}

TEST_F(StoreTest, UsesWriteAheadLog) {
  EXPECT_EQ(QueryText("PRAGMA journal_mode"), "wal");
}

TEST_F(StoreTest, OpensAnInMemoryDatabase) {
  auto memory = Store::Open(":memory:");
  ASSERT_TRUE(memory.ok()) << memory.status();
  ASSERT_OK((*memory)->PutDataset(MakeDataset("ds-1")));
  ASSERT_OK((*memory)->GetDataset("ds-1").status());
}

TEST_F(StoreTest, DamagedRecordIsDataLossNamingIt) {
  ASSERT_OK(store_->PutJob(MakeJob("job-1", 0)));
  Exec("UPDATE jobs SET proto = x'ffffffff' WHERE id = 'job-1'");
  auto job = store_->GetJob("job-1");
  EXPECT_EQ(job.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(job.status().message(), HasSubstr("job 'job-1'"));
  EXPECT_EQ(store_->QueuedJobs().status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(StoreTest, OpenFailsForAFolderThatDoesNotExist) {
  auto store = Store::Open(dir_ + "/missing/sub/tlserve.db");
  EXPECT_FALSE(store.ok());
}

TEST_F(StoreTest, DatasetRoundTripAndReplace) {
  Dataset d = MakeDataset("ds-1");
  ASSERT_OK(store_->PutDataset(d));
  ASSERT_OK(store_->PutDataset(MakeDataset("ds-2")));
  ASSERT_OK_AND_ASSIGN(Dataset got, store_->GetDataset("ds-1"));
  EXPECT_EQ(got.DebugString(), d.DebugString());

  // Replacing keeps the dataset's place in the listing.
  d.set_name("renamed");
  ASSERT_OK(store_->PutDataset(d));
  ASSERT_OK_AND_ASSIGN(got, store_->GetDataset("ds-1"));
  EXPECT_EQ(got.name(), "renamed");
  ASSERT_OK_AND_ASSIGN(auto page, store_->ListDatasets(0, ""));
  ASSERT_EQ(page.items.size(), 2u);
  EXPECT_EQ(page.items[0].id(), "ds-1");
  EXPECT_EQ(page.items[1].id(), "ds-2");
  EXPECT_EQ(page.next_page_token, "");
}

TEST_F(StoreTest, DeleteDatasetRemovesItAndItsRequestId) {
  ASSERT_OK(store_->PutDataset(MakeDataset("ds-1"), "req-1"));
  ASSERT_OK(store_->DeleteDataset("ds-1"));
  EXPECT_EQ(store_->GetDataset("ds-1").status().code(),
            absl::StatusCode::kNotFound);
  // A retried upload must not be pointed at the deleted dataset.
  ASSERT_OK_AND_ASSIGN(auto found, store_->LookupRequest("dataset", kDefaultTenant, "req-1"));
  EXPECT_FALSE(found.has_value());
  absl::Status again = store_->DeleteDataset("ds-1");
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(again.message(), HasSubstr("dataset 'ds-1'"));
}

TEST_F(StoreTest, BackboneAndModelRoundTrip) {
  Backbone b;
  b.set_id("bb-1");
  b.set_name("resnet18");
  b.set_sha256(std::string(64, 'a'));
  b.set_feature_dim(512);
  b.add_blocks("layer4");
  ASSERT_OK(store_->PutBackbone(b, "req-b"));
  ASSERT_OK_AND_ASSIGN(Backbone got_b, store_->GetBackbone("bb-1"));
  EXPECT_EQ(got_b.DebugString(), b.DebugString());

  Model m;
  m.set_id("model-1");
  m.set_job_id("job-1");
  m.set_backbone_id("bb-1");
  m.add_class_names("cat");
  m.set_tenant("default");
  ASSERT_OK(store_->PutModel(m));
  ASSERT_OK_AND_ASSIGN(Model got_m, store_->GetModel("model-1"));
  EXPECT_EQ(got_m.DebugString(), m.DebugString());

  ASSERT_OK_AND_ASSIGN(auto backbones, store_->ListBackbones(10, ""));
  ASSERT_EQ(backbones.items.size(), 1u);
  EXPECT_EQ(backbones.items[0].id(), "bb-1");
  ASSERT_OK_AND_ASSIGN(auto models, store_->ListModels(10, ""));
  ASSERT_EQ(models.items.size(), 1u);
  EXPECT_EQ(models.items[0].id(), "model-1");
}

TEST_F(StoreTest, RejectsResourcesWithoutId) {
  EXPECT_EQ(store_->PutDataset(Dataset()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->PutJob(Job()).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, ListPagesCoverEveryItemOnceOldestFirst) {
  for (int i = 0; i < 25; ++i) {
    ASSERT_OK(store_->PutDataset(MakeDataset(absl::StrCat("ds-", i))));
    Model m;
    m.set_id(absl::StrCat("m-", i));
    ASSERT_OK(store_->PutModel(m));
  }
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    ASSERT_OK_AND_ASSIGN(auto page, store_->ListDatasets(7, token));
    for (const auto& d : page.items) seen.push_back(d.id());
    token = page.next_page_token;
    ++pages;
    ASSERT_LT(pages, 10);
  } while (!token.empty());
  EXPECT_EQ(pages, 4);
  ASSERT_EQ(seen.size(), 25u);
  for (int i = 0; i < 25; ++i) EXPECT_EQ(seen[i], absl::StrCat("ds-", i));

  // An exact multiple of the page size ends without an empty extra page.
  ASSERT_OK_AND_ASSIGN(auto first, store_->ListModels(5, ""));
  token = first.next_page_token;
  pages = 1;
  while (!token.empty()) {
    ASSERT_OK_AND_ASSIGN(auto page, store_->ListModels(5, token));
    EXPECT_EQ(page.items.size(), 5u);
    token = page.next_page_token;
    ++pages;
  }
  EXPECT_EQ(pages, 5);
}

TEST_F(StoreTest, PageSizeDefaultsAndCaps) {
  for (int i = 0; i < 120; ++i) {
    ASSERT_OK(store_->PutJob(MakeJob(absl::StrCat("job-", i), 0)));
  }
  ASSERT_OK_AND_ASSIGN(auto page, store_->ListJobs({}, 0, ""));
  EXPECT_EQ(page.items.size(), 100u);
  EXPECT_NE(page.next_page_token, "");
  ASSERT_OK_AND_ASSIGN(page, store_->ListJobs({}, 1000000, ""));
  EXPECT_EQ(page.items.size(), 120u);
  EXPECT_EQ(page.next_page_token, "");
}

TEST_F(StoreTest, ListJobsIsNewestFirstAndFiltersByState) {
  for (int i = 0; i < 10; ++i) {
    ASSERT_OK(store_->PutJob(
        MakeJob(absl::StrCat("job-", i), 0,
                i % 2 == 0 ? tlserve::v1::QUEUED : tlserve::v1::SUCCEEDED)));
  }
  std::vector<std::string> seen;
  std::string token;
  do {
    ASSERT_OK_AND_ASSIGN(auto page, store_->ListJobs({}, 3, token));
    for (const auto& job : page.items) seen.push_back(job.id());
    token = page.next_page_token;
  } while (!token.empty());
  ASSERT_EQ(seen.size(), 10u);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(seen[i], absl::StrCat("job-", 9 - i));

  seen.clear();
  do {
    ASSERT_OK_AND_ASSIGN(auto page,
                         store_->ListJobs(tlserve::v1::QUEUED, 2, token));
    for (const auto& job : page.items) seen.push_back(job.id());
    token = page.next_page_token;
  } while (!token.empty());
  EXPECT_THAT(seen, ElementsAre("job-8", "job-6", "job-4", "job-2", "job-0"));
}

TEST_F(StoreTest, RejectsMalformedPageToken) {
  for (const std::string token : {"garbage", "!!", "LTE", "MTIz\n"}) {
    auto page = store_->ListDatasets(10, token);
    EXPECT_EQ(page.status().code(), absl::StatusCode::kInvalidArgument)
        << token;
    auto jobs = store_->ListJobs({}, 10, token);
    EXPECT_EQ(jobs.status().code(), absl::StatusCode::kInvalidArgument)
        << token;
  }
  auto page = store_->ListBackbones(10, "garbage");
  EXPECT_THAT(page.status().message(),
              HasSubstr("page_token 'garbage' is not valid"));
}

TEST_F(StoreTest, MissingResourcesAreNotFound) {
  auto job = store_->GetJob("abc");
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(job.status().message(), HasSubstr("job 'abc' not found"));
  auto dataset = store_->GetDataset("abc");
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(dataset.status().message(), HasSubstr("dataset 'abc'"));
  auto backbone = store_->GetBackbone("abc");
  EXPECT_EQ(backbone.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(backbone.status().message(), HasSubstr("backbone 'abc'"));
  auto model = store_->GetModel("abc");
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(model.status().message(), HasSubstr("model 'abc'"));

  std::vector<JobEvent> events = {MessageEvent("x")};
  EXPECT_EQ(store_->AppendEvents("abc", &events).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->AddCheckpoint("abc", CheckpointInfo()).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, RequestIdsMapToTheFirstResourcePerScope) {
  ASSERT_OK(store_->PutDataset(MakeDataset("ds-1"), "req-1"));
  ASSERT_OK(store_->PutJob(MakeJob("job-1", 0), nullptr, true, "req-1"));
  Backbone backbone_proto;
  backbone_proto.set_id("bb-1");
  ASSERT_OK(store_->PutBackbone(backbone_proto, "req-1"));

  ASSERT_OK_AND_ASSIGN(auto dataset, store_->LookupRequest("dataset", kDefaultTenant, "req-1"));
  EXPECT_EQ(dataset, std::optional<std::string>("ds-1"));
  ASSERT_OK_AND_ASSIGN(auto job, store_->LookupRequest("job", kDefaultTenant, "req-1"));
  EXPECT_EQ(job, std::optional<std::string>("job-1"));
  ASSERT_OK_AND_ASSIGN(auto backbone,
                       store_->LookupRequest("backbone", "", "req-1"));
  EXPECT_EQ(backbone, std::optional<std::string>("bb-1"));
  ASSERT_OK_AND_ASSIGN(auto unknown, store_->LookupRequest("job", kDefaultTenant, "req-2"));
  EXPECT_FALSE(unknown.has_value());

  // A second resource under the same key does not steal it.
  ASSERT_OK(store_->PutJob(MakeJob("job-2", 0), nullptr, true, "req-1"));
  ASSERT_OK_AND_ASSIGN(job, store_->LookupRequest("job", kDefaultTenant, "req-1"));
  EXPECT_EQ(job, std::optional<std::string>("job-1"));
}

TEST_F(StoreTest, QueuedJobsRunByPriorityThenFifo) {
  ASSERT_OK(store_->PutJob(MakeJob("a", 0), nullptr, true));
  ASSERT_OK(store_->PutJob(MakeJob("b", 5), nullptr, true));
  ASSERT_OK(store_->PutJob(MakeJob("c", 0), nullptr, true));
  ASSERT_OK(store_->PutJob(MakeJob("d", 5), nullptr, true));
  ASSERT_OK(
      store_->PutJob(MakeJob("e", 1, tlserve::v1::RUNNING), nullptr, true));
  ASSERT_OK_AND_ASSIGN(auto queued, store_->QueuedJobs());
  EXPECT_THAT(Ids(queued), ElementsAre("b", "d", "a", "c"));

  // b runs, then re-enters the queue: behind d, its equal.
  ASSERT_OK(store_->PutJob(MakeJob("b", 5, tlserve::v1::RUNNING)));
  ASSERT_OK_AND_ASSIGN(queued, store_->QueuedJobs());
  EXPECT_THAT(Ids(queued), ElementsAre("d", "a", "c"));
  ASSERT_OK(store_->PutJob(MakeJob("b", 5), nullptr, /*enter_queue=*/true));
  // An update without enter_queue keeps a's place ahead of c.
  Job a = MakeJob("a", 0);
  a.set_error("touched");
  ASSERT_OK(store_->PutJob(a, nullptr, /*enter_queue=*/false));
  ASSERT_OK_AND_ASSIGN(queued, store_->QueuedJobs());
  EXPECT_THAT(Ids(queued), ElementsAre("d", "b", "a", "c"));
  EXPECT_EQ(queued[2].error(), "touched");

  // A job sent back to QUEUED without enter_queue keeps its old place.
  ASSERT_OK(store_->PutJob(MakeJob("d", 5, tlserve::v1::RUNNING)));
  ASSERT_OK(store_->PutJob(MakeJob("d", 5), nullptr, /*enter_queue=*/false));
  ASSERT_OK_AND_ASSIGN(queued, store_->QueuedJobs());
  EXPECT_THAT(Ids(queued), ElementsAre("d", "b", "a", "c"));

  ASSERT_OK_AND_ASSIGN(auto running, store_->JobsInState(tlserve::v1::RUNNING));
  EXPECT_THAT(Ids(running), ElementsAre("e"));

  // The head of the queue, and each job's place in it, agree with the
  // whole list.
  ASSERT_OK_AND_ASSIGN(auto head, store_->QueuedJobs(2));
  EXPECT_THAT(Ids(head), ElementsAre("d", "b"));
  for (size_t i = 0; i < queued.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(int64_t position, store_->QueuePosition(queued[i].id()));
    EXPECT_EQ(position, static_cast<int64_t>(i)) << queued[i].id();
  }
  EXPECT_EQ(store_->QueuePosition("e").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->QueuePosition("nope").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, EventsGetIncreasingSequencesAndResume) {
  ASSERT_OK(store_->PutJob(MakeJob("other", 0)));
  std::vector<JobEvent> first = {MessageEvent("one"), MessageEvent("two")};
  ASSERT_OK(store_->PutJob(MakeJob("job-1", 0), &first, true));
  EXPECT_EQ(first[0].job_id(), "job-1");
  EXPECT_GT(first[0].sequence(), 0);
  EXPECT_GT(first[1].sequence(), first[0].sequence());

  std::vector<JobEvent> noise = {MessageEvent("noise")};
  ASSERT_OK(store_->AppendEvents("other", &noise));
  std::vector<JobEvent> more = {MessageEvent("three"), MessageEvent("four"),
                                MessageEvent("five")};
  ASSERT_OK(store_->AppendEvents("job-1", &more));
  EXPECT_GT(more[0].sequence(), noise[0].sequence());
  EXPECT_GT(noise[0].sequence(), first[1].sequence());

  ASSERT_OK_AND_ASSIGN(auto all, store_->ListEvents("job-1", 0, 100));
  ASSERT_EQ(all.size(), 5u);
  std::vector<std::string> texts;
  for (size_t i = 0; i < all.size(); ++i) {
    texts.push_back(all[i].message());
    EXPECT_EQ(all[i].job_id(), "job-1");
    if (i > 0) {
      EXPECT_GT(all[i].sequence(), all[i - 1].sequence());
    }
  }
  EXPECT_THAT(texts, ElementsAre("one", "two", "three", "four", "five"));
  // The stored event carries the sequence the caller got back.
  EXPECT_EQ(all[0].DebugString(), first[0].DebugString());
  EXPECT_EQ(all[4].DebugString(), more[2].DebugString());

  // Resume after the second event, in pages of two.
  ASSERT_OK_AND_ASSIGN(auto page,
                       store_->ListEvents("job-1", first[1].sequence(), 2));
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[0].message(), "three");
  EXPECT_EQ(page[1].message(), "four");
  ASSERT_OK_AND_ASSIGN(page,
                       store_->ListEvents("job-1", page[1].sequence(), 2));
  ASSERT_EQ(page.size(), 1u);
  EXPECT_EQ(page[0].message(), "five");
  ASSERT_OK_AND_ASSIGN(page,
                       store_->ListEvents("job-1", page[0].sequence(), 2));
  EXPECT_TRUE(page.empty());
}

TEST_F(StoreTest, CheckpointsListOldestFirst) {
  ASSERT_OK(store_->PutJob(MakeJob("job-1", 0)));
  for (int epoch = 1; epoch <= 3; ++epoch) {
    CheckpointInfo c;
    c.set_epoch(epoch);
    c.set_attempt(1);
    c.set_sha256(std::string(64, 'a' + epoch));
    ASSERT_OK(store_->AddCheckpoint("job-1", c));
  }
  ASSERT_OK_AND_ASSIGN(auto checkpoints, store_->ListCheckpoints("job-1"));
  ASSERT_EQ(checkpoints.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(checkpoints[i].epoch(), i + 1);
  ASSERT_OK_AND_ASSIGN(auto none, store_->ListCheckpoints("no-such-job"));
  EXPECT_TRUE(none.empty());
}

TEST_F(StoreTest, EverythingSurvivesReopen) {
  ASSERT_OK(store_->PutDataset(MakeDataset("ds-1"), "req-d"));
  std::vector<JobEvent> events = {MessageEvent("hello")};
  ASSERT_OK(store_->PutJob(MakeJob("job-1", 3), &events, true, "req-j"));
  ASSERT_OK(store_->PutJob(MakeJob("job-2", 3), nullptr, true));
  CheckpointInfo c;
  c.set_epoch(2);
  ASSERT_OK(store_->AddCheckpoint("job-1", c));

  Reopen();
  ASSERT_OK_AND_ASSIGN(Job job, store_->GetJob("job-1"));
  EXPECT_EQ(job.DebugString(), MakeJob("job-1", 3).DebugString());
  ASSERT_OK_AND_ASSIGN(auto stored, store_->ListEvents("job-1", 0, 10));
  ASSERT_EQ(stored.size(), 1u);
  EXPECT_EQ(stored[0].DebugString(), events[0].DebugString());
  ASSERT_OK_AND_ASSIGN(auto checkpoints, store_->ListCheckpoints("job-1"));
  ASSERT_EQ(checkpoints.size(), 1u);
  ASSERT_OK_AND_ASSIGN(auto req, store_->LookupRequest("job", kDefaultTenant, "req-j"));
  EXPECT_EQ(req, std::optional<std::string>("job-1"));
  ASSERT_OK(store_->GetDataset("ds-1").status());

  // Counters continue where they were: the order holds across restarts.
  ASSERT_OK(store_->PutJob(MakeJob("job-3", 3), nullptr, true));
  ASSERT_OK_AND_ASSIGN(auto queued, store_->QueuedJobs());
  EXPECT_THAT(Ids(queued), ElementsAre("job-1", "job-2", "job-3"));
  std::vector<JobEvent> later = {MessageEvent("again")};
  ASSERT_OK(store_->AppendEvents("job-1", &later));
  EXPECT_GT(later[0].sequence(), events[0].sequence());
  ASSERT_OK(store_->PutDataset(MakeDataset("ds-2")));
  ASSERT_OK_AND_ASSIGN(auto datasets, store_->ListDatasets(10, ""));
  ASSERT_EQ(datasets.items.size(), 2u);
  EXPECT_EQ(datasets.items[1].id(), "ds-2");
}

TEST_F(StoreTest, MeanRunSecondsAveragesTheLatestSucceededJobs) {
  ASSERT_OK_AND_ASSIGN(auto none, store_->MeanRunSeconds(10));
  EXPECT_FALSE(none.has_value());

  // Durations 10, 20, 30, 40 s, finishing in that order.
  for (int i = 1; i <= 4; ++i) {
    Job job = MakeJob(absl::StrCat("ok-", i), 0, tlserve::v1::SUCCEEDED);
    job.mutable_start_time()->set_seconds(1000 * i);
    job.mutable_end_time()->set_seconds(1000 * i + 10 * i);
    ASSERT_OK(store_->PutJob(job));
  }
  // Neither a failed job nor one that never started counts.
  Job failed = MakeJob("failed", 0, tlserve::v1::FAILED);
  failed.mutable_start_time()->set_seconds(100);
  failed.mutable_end_time()->set_seconds(100000);
  ASSERT_OK(store_->PutJob(failed));
  Job unstarted = MakeJob("unstarted", 0, tlserve::v1::SUCCEEDED);
  unstarted.mutable_end_time()->set_seconds(99999);
  ASSERT_OK(store_->PutJob(unstarted));

  ASSERT_OK_AND_ASSIGN(auto mean, store_->MeanRunSeconds(2));
  ASSERT_TRUE(mean.has_value());
  EXPECT_DOUBLE_EQ(*mean, 35.0);
  ASSERT_OK_AND_ASSIGN(mean, store_->MeanRunSeconds(100));
  ASSERT_TRUE(mean.has_value());
  EXPECT_DOUBLE_EQ(*mean, 25.0);

  // Sub-second precision is kept.
  Job quick = MakeJob("quick", 0, tlserve::v1::SUCCEEDED);
  quick.mutable_start_time()->set_seconds(200000);
  quick.mutable_end_time()->set_seconds(200000);
  quick.mutable_end_time()->set_nanos(500000000);
  ASSERT_OK(store_->PutJob(quick));
  ASSERT_OK_AND_ASSIGN(mean, store_->MeanRunSeconds(1));
  ASSERT_TRUE(mean.has_value());
  EXPECT_DOUBLE_EQ(*mean, 0.5);
}

TEST_F(StoreTest, ConcurrentWritersGetUniqueSequences) {
  constexpr int kThreads = 4;
  constexpr int kJobsPerThread = 10;
  std::vector<std::thread> threads;
  std::vector<std::vector<int64_t>> sequences(kThreads);
  std::vector<absl::Status> errors(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kJobsPerThread; ++i) {
        std::vector<JobEvent> events = {MessageEvent("a"), MessageEvent("b")};
        absl::Status s = store_->PutJob(
            MakeJob(absl::StrCat("job-", t, "-", i), t), &events, true);
        if (!s.ok()) {
          errors[t] = s;
          return;
        }
        for (const auto& e : events) sequences[t].push_back(e.sequence());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::set<int64_t> unique;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_OK(errors[t]);
    unique.insert(sequences[t].begin(), sequences[t].end());
  }
  EXPECT_EQ(unique.size(), static_cast<size_t>(kThreads * kJobsPerThread * 2));
  ASSERT_OK_AND_ASSIGN(auto queued, store_->QueuedJobs());
  EXPECT_EQ(queued.size(), static_cast<size_t>(kThreads * kJobsPerThread));
}

TEST_F(StoreTest, TenantsSeeTheirOwnRowsAndSharedBackbonesOnly) {
  Dataset a = MakeDataset("ds-a");
  a.set_tenant("team-a");
  ASSERT_OK(store_->PutDataset(a));
  Dataset b = MakeDataset("ds-b");
  b.set_tenant("team-b");
  ASSERT_OK(store_->PutDataset(b));
  Job job = MakeJob("job-a", 0);
  job.set_tenant("team-a");
  ASSERT_OK(store_->PutJob(job));
  Model model;
  model.set_id("model-a");
  model.set_tenant("team-a");
  ASSERT_OK(store_->PutModel(model));
  Backbone shared;  // an admin's upload: no tenant
  shared.set_id("bb-shared");
  ASSERT_OK(store_->PutBackbone(shared));
  Backbone own;  // a PRETRAIN job's
  own.set_id("bb-a");
  own.set_tenant("team-a");
  ASSERT_OK(store_->PutBackbone(own));

  // Another tenant's row is not found, word for word like a missing one.
  auto hidden = store_->GetDataset("ds-a", "team-b");
  auto missing = store_->GetDataset("ds-zzz", "team-b");
  EXPECT_EQ(hidden.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(std::string(hidden.status().message()), "dataset 'ds-a' not found");
  EXPECT_EQ(std::string(missing.status().message()), "dataset 'ds-zzz' not found");
  EXPECT_EQ(store_->GetJob("job-a", "team-b").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetModel("model-a", "team-b").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetBackbone("bb-a", "team-b").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteDataset("ds-a", "team-b").code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->DeleteModel("model-a", "team-b").code(),
            absl::StatusCode::kNotFound);
  // A read naming no tenant is the default tenant's.
  EXPECT_EQ(store_->GetDataset("ds-a").status().code(),
            absl::StatusCode::kNotFound);

  ASSERT_OK_AND_ASSIGN(Dataset got, store_->GetDataset("ds-a", "team-a"));
  EXPECT_EQ(got.tenant(), "team-a");
  ASSERT_OK_AND_ASSIGN(Job got_job, store_->GetJob("job-a", "team-a"));
  EXPECT_EQ(got_job.tenant(), "team-a");
  ASSERT_OK(store_->GetBackbone("bb-shared", "team-b").status());
  ASSERT_OK(store_->GetBackbone("bb-a", "team-a").status());
  ASSERT_OK(store_->GetJob("job-a", kEveryTenant).status());

  ASSERT_OK_AND_ASSIGN(auto datasets_b, store_->ListDatasets(0, "", "team-b"));
  ASSERT_EQ(datasets_b.items.size(), 1u);
  EXPECT_EQ(datasets_b.items[0].id(), "ds-b");
  EXPECT_EQ(datasets_b.items[0].tenant(), "team-b");
  ASSERT_OK_AND_ASSIGN(auto jobs_b,
                       store_->ListJobs(tlserve::v1::JOB_STATE_UNSPECIFIED, 0,
                                        "", "team-b"));
  EXPECT_TRUE(jobs_b.items.empty());
  ASSERT_OK_AND_ASSIGN(auto models_b, store_->ListModels(0, "", "team-b"));
  EXPECT_TRUE(models_b.items.empty());
  ASSERT_OK_AND_ASSIGN(auto backbones_b, store_->ListBackbones(0, "", "team-b"));
  ASSERT_EQ(backbones_b.items.size(), 1u);
  EXPECT_EQ(backbones_b.items[0].id(), "bb-shared");
  ASSERT_OK_AND_ASSIGN(auto backbones_a, store_->ListBackbones(0, "", "team-a"));
  EXPECT_EQ(backbones_a.items.size(), 2u);
  ASSERT_OK_AND_ASSIGN(auto everything, store_->ListDatasets(0, "", kEveryTenant));
  EXPECT_EQ(everything.items.size(), 2u);

  ASSERT_OK(store_->DeleteDataset("ds-a", "team-a"));
}

TEST_F(StoreTest, RequestIdsAreScopedByTenant) {
  Dataset a = MakeDataset("ds-a");
  a.set_tenant("team-a");
  ASSERT_OK(store_->PutDataset(a, "req-1"));
  Dataset b = MakeDataset("ds-b");
  b.set_tenant("team-b");
  ASSERT_OK(store_->PutDataset(b, "req-1"));  // the same key, another tenant
  ASSERT_OK_AND_ASSIGN(auto for_a, store_->LookupRequest("dataset", "team-a", "req-1"));
  ASSERT_OK_AND_ASSIGN(auto for_b, store_->LookupRequest("dataset", "team-b", "req-1"));
  ASSERT_TRUE(for_a.has_value());
  ASSERT_TRUE(for_b.has_value());
  EXPECT_EQ(*for_a, "ds-a");
  EXPECT_EQ(*for_b, "ds-b");
  ASSERT_OK_AND_ASSIGN(auto for_c, store_->LookupRequest("dataset", "team-c", "req-1"));
  EXPECT_FALSE(for_c.has_value());
}

TEST_F(StoreTest, CountsATenantsQueuedJobsAndStoredBytes) {
  Dataset d = MakeDataset("ds-a");
  d.set_tenant("team-a");
  d.add_parts()->set_size_bytes(1000);
  d.add_parts()->set_size_bytes(200);
  ASSERT_OK(store_->PutDataset(d));
  for (auto [id, state] : {std::pair{"job-1", tlserve::v1::QUEUED},
                           std::pair{"job-2", tlserve::v1::QUEUED},
                           std::pair{"job-3", tlserve::v1::RUNNING}}) {
    Job job = MakeJob(id, 0, state);
    job.set_tenant("team-a");
    ASSERT_OK(store_->PutJob(job));
  }
  CheckpointInfo checkpoint;
  checkpoint.set_size_bytes(30);
  ASSERT_OK(store_->AddCheckpoint("job-3", checkpoint));
  Model model;
  model.set_id("model-a");
  model.set_tenant("team-a");
  model.set_size_bytes(4);
  ASSERT_OK(store_->PutModel(model));
  Backbone shared;  // nobody's: counted against no tenant
  shared.set_id("bb-shared");
  shared.set_size_bytes(1 << 20);
  ASSERT_OK(store_->PutBackbone(shared));
  Job other = MakeJob("job-b", 0);
  other.set_tenant("team-b");
  ASSERT_OK(store_->PutJob(other));

  EXPECT_EQ(store_->QueuedJobsOf("team-a").value_or(-1), 2);
  EXPECT_EQ(store_->QueuedJobsOf("team-b").value_or(-1), 1);
  EXPECT_EQ(store_->StoredBytesOf("team-a").value_or(-1), 1000 + 200 + 30 + 4);
  EXPECT_EQ(store_->StoredBytesOf("team-b").value_or(-1), 0);
}

TEST_F(StoreTest, MigrationFourGivesEarlierRowsTheDefaultTenant) {
  // Take the database back to schema 3 and write rows as it did.
  Exec("DROP INDEX datasets_by_tenant; DROP INDEX models_by_tenant;"
       "DROP INDEX backbones_by_tenant; DROP INDEX jobs_by_tenant_state;"
       "ALTER TABLE datasets DROP COLUMN tenant;"
       "ALTER TABLE models DROP COLUMN tenant;"
       "ALTER TABLE jobs DROP COLUMN tenant;"
       "ALTER TABLE backbones DROP COLUMN tenant;"
       "DELETE FROM schema_migrations WHERE version >= 4;");
  Dataset old = MakeDataset("ds-old");
  old.clear_tenant();
  Job old_job = MakeJob("job-old", 0);
  old_job.clear_tenant();
  Exec(absl::StrCat("INSERT INTO datasets (id, create_seq, proto) VALUES "
                    "('ds-old', 1, x'", absl::BytesToHexString(old.SerializeAsString()),
                    "');"
                    "INSERT INTO jobs (id, state, priority, attempt, queue_seq, "
                    "create_seq, proto) VALUES ('job-old', 2, 0, 0, 1, 2, x'",
                    absl::BytesToHexString(old_job.SerializeAsString()), "');"
                    "INSERT INTO backbones (id, create_seq, proto) VALUES "
                    "('bb-old', 3, x'');"
                    "INSERT INTO request_ids VALUES ('dataset', 'r1', 'ds-old'),"
                    "('backbone', 'r2', 'bb-old');"));
  Reopen();
  EXPECT_EQ(store_->schema_version(), 4);
  ASSERT_OK_AND_ASSIGN(Dataset d, store_->GetDataset("ds-old", "default"));
  EXPECT_EQ(d.tenant(), "default");
  ASSERT_OK_AND_ASSIGN(Job j, store_->GetJob("job-old", "default"));
  EXPECT_EQ(j.tenant(), "default");
  EXPECT_EQ(store_->QueuedJobsOf("default").value_or(-1), 1);
  // Old backbones were uploaded by admins: shared.
  ASSERT_OK(store_->GetBackbone("bb-old", "team-x").status());
  ASSERT_OK_AND_ASSIGN(auto r1, store_->LookupRequest("dataset", "default", "r1"));
  EXPECT_EQ(r1.value_or(""), "ds-old");
  ASSERT_OK_AND_ASSIGN(auto r2, store_->LookupRequest("backbone", "", "r2"));
  EXPECT_EQ(r2.value_or(""), "bb-old");
}

}  // namespace
}  // namespace tlserve
