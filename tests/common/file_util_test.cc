#include "common/file_util.h"

#include <dirent.h>
#include <sys/stat.h>

#include <string>

#include "gtest/gtest.h"

namespace tlserve {
namespace {

std::string TestDir(const std::string& name) {
  std::string dir = ::testing::TempDir() + "/file_util_test_" + name;
  EXPECT_TRUE(MakeDirs(dir).ok());
  return dir;
}

int CountEntries(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  int n = 0;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(d);
  return n;
}

TEST(FileUtilTest, AtomicWriteCreatesAndReplacesContent) {
  std::string dir = TestDir("replace");
  std::string path = dir + "/f.txt";
  ASSERT_TRUE(WriteFileAtomic(path, "first version, longer").ok());
  ASSERT_TRUE(WriteFileAtomic(path, "second").ok());
  absl::StatusOr<std::string> got = ReadFile(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "second");
  EXPECT_EQ(*FileSize(path), 6);
  // No temp files are left beside the target.
  EXPECT_EQ(CountEntries(dir), 1);
}

TEST(FileUtilTest, RoundTripsBinaryData) {
  std::string data;
  for (int i = 0; i < 300000; ++i) data.push_back(static_cast<char>(i * 7));
  std::string path = TestDir("binary") + "/blob";
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  EXPECT_EQ(*ReadFile(path), data);
}

TEST(FileUtilTest, MissingFileIsNotFound) {
  std::string dir = TestDir("missing");
  absl::StatusOr<std::string> got = ReadFile(dir + "/nope");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find("No such file"),
            absl::string_view::npos)
      << got.status();
  EXPECT_EQ(FileSize(dir + "/nope").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(FileUtilTest, AtomicWriteIntoMissingFolderFails) {
  std::string dir = TestDir("nofolder");
  EXPECT_FALSE(WriteFileAtomic(dir + "/no/such/f", "x").ok());
}

TEST(FileUtilTest, MakeDirsIsLikeMkdirP) {
  std::string dir = TestDir("mkdirs") + "/a/b/c";
  ASSERT_TRUE(MakeDirs(dir).ok());
  ASSERT_TRUE(MakeDirs(dir).ok());  // exists already
  ASSERT_TRUE(MakeDirs(dir + "/").ok());
  struct stat st;
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_TRUE(SyncDir(dir).ok());

  std::string file = dir + "/file";
  ASSERT_TRUE(WriteFileAtomic(file, "x").ok());
  EXPECT_FALSE(MakeDirs(file).ok());
  EXPECT_FALSE(MakeDirs(file + "/sub").ok());
}

}  // namespace
}  // namespace tlserve
