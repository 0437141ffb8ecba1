#include "server/blob_store.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

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

std::vector<std::string> FilesIn(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  return names;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class BlobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = testing::TempDir() + "/blob_store_test_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    root_ = dir_ + "/blobs";
    Reopen();
  }
  void TearDown() override {
    blobs_.reset();
    std::filesystem::remove_all(dir_);
  }

  void Reopen() {
    blobs_.reset();
    auto blobs = BlobStore::Open(root_);
    ASSERT_TRUE(blobs.ok()) << blobs.status();
    blobs_ = std::move(blobs).value();
  }

  std::string BlobDir() const { return root_ + "/sha256"; }
  std::string TempDir() const { return root_ + "/tmp"; }

  std::string dir_;
  std::string root_;
  std::unique_ptr<BlobStore> blobs_;
};

TEST_F(BlobStoreTest, StoresContentUnderItsHash) {
  const std::string data = "hello, blobs";
  ASSERT_OK_AND_ASSIGN(std::string sha, blobs_->Put(data));
  EXPECT_EQ(sha, Sha256Hex(data));
  EXPECT_TRUE(blobs_->Has(sha));
  ASSERT_OK_AND_ASSIGN(std::string path, blobs_->PathOf(sha));
  EXPECT_EQ(path, BlobDir() + "/" + sha);
  EXPECT_EQ(ReadAll(path), data);
  ASSERT_OK_AND_ASSIGN(int64_t size, blobs_->SizeOf(sha));
  EXPECT_EQ(size, static_cast<int64_t>(data.size()));
  ASSERT_OK(blobs_->Verify(sha));
  EXPECT_THAT(FilesIn(TempDir()), IsEmpty());
}

TEST_F(BlobStoreTest, StreamsLargeBlobsInChunks) {
  std::string data;
  for (int i = 0; i < (1 << 20); ++i) data.push_back(static_cast<char>(i * 7));
  ASSERT_OK_AND_ASSIGN(auto writer, blobs_->NewWriter());
  for (size_t at = 0; at < data.size(); at += 65536) {
    ASSERT_OK(writer->Append(std::string_view(data).substr(at, 65536)));
  }
  EXPECT_EQ(writer->size(), static_cast<int64_t>(data.size()));
  ASSERT_OK_AND_ASSIGN(std::string sha, writer->Commit(Sha256Hex(data)));
  EXPECT_EQ(sha, Sha256Hex(data));
  ASSERT_OK_AND_ASSIGN(std::string path, blobs_->PathOf(sha));
  EXPECT_EQ(ReadAll(path), data);
}

TEST_F(BlobStoreTest, StoresIdenticalContentOnce) {
  ASSERT_OK_AND_ASSIGN(std::string first, blobs_->Put("same bytes"));
  ASSERT_OK_AND_ASSIGN(auto writer, blobs_->NewWriter());
  ASSERT_OK(writer->Append("same "));
  ASSERT_OK(writer->Append("bytes"));
  ASSERT_OK_AND_ASSIGN(std::string second, writer->Commit());
  EXPECT_EQ(first, second);
  EXPECT_THAT(FilesIn(BlobDir()), UnorderedElementsAre(first));
  EXPECT_THAT(FilesIn(TempDir()), IsEmpty());
}

TEST_F(BlobStoreTest, AcceptsExpectedHashInEitherCase) {
  ASSERT_OK_AND_ASSIGN(auto writer, blobs_->NewWriter());
  ASSERT_OK(writer->Append("abc"));
  ASSERT_OK_AND_ASSIGN(std::string sha,
                       writer->Commit(absl::AsciiStrToUpper(Sha256Hex("abc"))));
  EXPECT_EQ(sha, Sha256Hex("abc"));
}

TEST_F(BlobStoreTest, RejectsHashMismatchAndStoresNothing) {
  ASSERT_OK_AND_ASSIGN(auto writer, blobs_->NewWriter());
  ASSERT_OK(writer->Append("abc"));
  const std::string wrong = Sha256Hex("not abc");
  auto result = writer->Commit(wrong);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(),
              HasSubstr(absl::StrCat("sha256 mismatch: expected ", wrong,
                                     ", got ", Sha256Hex("abc"))));
  // Nothing stored, and the temp file is gone already, not just at
  // destruction.
  EXPECT_THAT(FilesIn(BlobDir()), IsEmpty());
  EXPECT_THAT(FilesIn(TempDir()), IsEmpty());
  EXPECT_FALSE(blobs_->Has(Sha256Hex("abc")));
  EXPECT_EQ(writer->Append("more").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(BlobStoreTest, EnforcesMaxBytes) {
  ASSERT_OK_AND_ASSIGN(auto writer, blobs_->NewWriter(/*max_bytes=*/10));
  ASSERT_OK(writer->Append("123456"));
  absl::Status over = writer->Append("78901");
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.message(), HasSubstr("blob exceeds the limit of 10 bytes"));
  // Exactly at the limit is fine.
  ASSERT_OK(writer->Append("7890"));
  ASSERT_OK_AND_ASSIGN(std::string sha, writer->Commit());
  EXPECT_EQ(sha, Sha256Hex("1234567890"));
}

TEST_F(BlobStoreTest, AbandonedWriterLeavesNothing) {
  {
    ASSERT_OK_AND_ASSIGN(auto writer, blobs_->NewWriter());
    ASSERT_OK(writer->Append("half an upload"));
    EXPECT_THAT(FilesIn(TempDir()).size(), 1u);
  }
  EXPECT_THAT(FilesIn(BlobDir()), IsEmpty());
  EXPECT_THAT(FilesIn(TempDir()), IsEmpty());
}

TEST_F(BlobStoreTest, OpenSweepsStaleTempFilesAndKeepsBlobs) {
  ASSERT_OK_AND_ASSIGN(std::string sha, blobs_->Put("kept"));
  // What a crash mid-upload leaves behind.
  { std::ofstream(TempDir() + "/upload-crashed") << "partial"; }
  std::filesystem::create_directory(TempDir() + "/stray-dir");
  Reopen();
  EXPECT_THAT(FilesIn(TempDir()), IsEmpty());
  EXPECT_TRUE(blobs_->Has(sha));
  ASSERT_OK(blobs_->Verify(sha));
}

TEST_F(BlobStoreTest, PathOfValidatesNames) {
  const std::vector<std::string> bad_names = {"../etc/passwd",
                                              "",
                                              "abc",
                                              std::string(64, 'A'),
                                              std::string(63, 'a') + "/",
                                              "../" + std::string(61, 'a')};
  for (const std::string& bad : bad_names) {
    auto path = blobs_->PathOf(bad);
    EXPECT_EQ(path.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(blobs_->Has(bad));
  }
  auto absent = blobs_->PathOf(Sha256Hex("never stored"));
  EXPECT_EQ(absent.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(blobs_->Has(Sha256Hex("never stored")));
}

TEST_F(BlobStoreTest, VerifyDetectsCorruption) {
  ASSERT_OK_AND_ASSIGN(std::string sha, blobs_->Put("precious data"));
  ASSERT_OK(blobs_->Verify(sha));
  ASSERT_OK_AND_ASSIGN(std::string path, blobs_->PathOf(sha));
  {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << "precious dat4";
  }
  absl::Status status = blobs_->Verify(sha);
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(status.message(), HasSubstr(sha));
}

TEST_F(BlobStoreTest, RemoveDeletesTheBlob) {
  ASSERT_OK_AND_ASSIGN(std::string sha, blobs_->Put("short-lived"));
  ASSERT_OK(blobs_->Remove(sha));
  EXPECT_FALSE(blobs_->Has(sha));
  EXPECT_EQ(blobs_->Remove(sha).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(blobs_->Remove("../x").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(BlobStoreTest, CommitTwiceFails) {
  ASSERT_OK_AND_ASSIGN(auto writer, blobs_->NewWriter());
  ASSERT_OK(writer->Append("once"));
  ASSERT_OK(writer->Commit());
  EXPECT_EQ(writer->Commit().status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The committed blob outlives its writer.
  std::string sha = Sha256Hex("once");
  writer.reset();
  EXPECT_TRUE(blobs_->Has(sha));
}

}  // namespace
}  // namespace tlserve
