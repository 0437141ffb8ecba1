#include "common/sha256.h"

#include <unistd.h>

#include <cstdlib>
#include <string>

#include "common/file_util.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

constexpr char kEmpty[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr char kAbc[] =
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST(Sha256Test, MatchesKnownVectors) {
  EXPECT_EQ(Sha256Hex(""), kEmpty);
  EXPECT_EQ(Sha256Hex("abc"), kAbc);
}

TEST(Sha256Test, IncrementalEqualsOneShot) {
  Sha256 hasher;
  hasher.Update("a");
  hasher.Update("");
  hasher.Update("bc");
  EXPECT_EQ(hasher.FinalHex(), kAbc);
}

TEST(Sha256Test, MovedHasherKeepsState) {
  Sha256 a;
  a.Update("ab");
  Sha256 b = std::move(a);
  b.Update("c");
  EXPECT_EQ(b.FinalHex(), kAbc);
}

TEST(Sha256Test, HashesFile) {
  std::string dir = ::testing::TempDir() + "/sha256_test";
  ASSERT_TRUE(MakeDirs(dir).ok());
  std::string path = dir + "/abc";
  ASSERT_TRUE(WriteFileAtomic(path, "abc").ok());
  absl::StatusOr<std::string> hex = Sha256OfFile(path);
  ASSERT_TRUE(hex.ok()) << hex.status();
  EXPECT_EQ(*hex, kAbc);
  EXPECT_EQ(Sha256OfFile(dir + "/missing").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(Sha256Test, RecognisesHex) {
  EXPECT_TRUE(IsSha256Hex(kAbc));
  EXPECT_FALSE(IsSha256Hex(""));
  EXPECT_FALSE(IsSha256Hex(std::string(kAbc).substr(1)));
  std::string upper = kAbc;
  upper[0] = 'B';
  EXPECT_FALSE(IsSha256Hex(upper));
  std::string bad = kAbc;
  bad[5] = 'g';
  EXPECT_FALSE(IsSha256Hex(bad));
}

}  // namespace
}  // namespace tlserve
