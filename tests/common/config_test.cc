#include "common/config.h"

#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

// The test's own flags: what a binary's flags look like to the sources.
ABSL_FLAG(std::string, t_from_default, "default", "test flag");
ABSL_FLAG(std::string, t_from_file, "default", "test flag");
ABSL_FLAG(std::string, t_from_env, "default", "test flag");
ABSL_FLAG(std::string, t_from_argv, "default", "test flag");
ABSL_FLAG(int, t_count, 7, "test flag");
ABSL_FLAG(bool, t_switch, false, "test flag");

namespace tlserve {
namespace {

using ::testing::HasSubstr;

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

// Sources with a fake environment; nothing comes from the real one.
FlagSources FakeSources(std::map<std::string, std::string> env) {
  FlagSources s;
  s.env = [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  return s;
}

// Runs Abseil's own argv parser, which records what the command line set.
void ParseArgv(std::vector<std::string> args) {
  args.insert(args.begin(), "config_test");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

class ConfigTest : public ::testing::Test {
 protected:
  absl::FlagSaver saver_;  // every test starts from the defaults
};

TEST_F(ConfigTest, EachSourceBeatsTheOneBelow) {
  const std::string file = WriteFile("precedence.conf", R"(# all but the default
t_from_file = file
t_from_env = file
t_from_argv = file
)");
  ParseArgv({"--config=" + file, "--t_from_argv=argv"});
  ASSERT_TRUE(ApplyFlagSources(FakeSources({{"TLSERVE_T_FROM_ENV", "env"},
                                            {"TLSERVE_T_FROM_ARGV", "env"}}))
                  .ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_t_from_default), "default");
  EXPECT_EQ(absl::GetFlag(FLAGS_t_from_file), "file");
  EXPECT_EQ(absl::GetFlag(FLAGS_t_from_env), "env");
  EXPECT_EQ(absl::GetFlag(FLAGS_t_from_argv), "argv");
}

TEST_F(ConfigTest, ArgvWinsEvenWhenItRepeatsTheDefault) {
  ParseArgv({"--t_count=7"});
  ASSERT_TRUE(ApplyFlagSources(FakeSources({{"TLSERVE_T_COUNT", "9"}})).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_t_count), 7);
}

TEST_F(ConfigTest, ConfigFileCanComeFromTheEnvironment) {
  const std::string file = WriteFile("from_env.conf", "t_count = 3\nt_switch = true\n");
  ParseArgv({});
  ASSERT_TRUE(ApplyFlagSources(FakeSources({{"TLSERVE_CONFIG", file}})).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_t_count), 3);
  EXPECT_TRUE(absl::GetFlag(FLAGS_t_switch));
}

TEST_F(ConfigTest, CommandLineConfigBeatsTheEnvironmentsConfig) {
  const std::string mine = WriteFile("mine.conf", "t_count = 1\n");
  const std::string theirs = WriteFile("theirs.conf", "t_count = 2\n");
  ParseArgv({"--config=" + mine});
  ASSERT_TRUE(ApplyFlagSources(FakeSources({{"TLSERVE_CONFIG", theirs}})).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_t_count), 1);
}

TEST_F(ConfigTest, EmptyVariableCountsAsUnset) {
  ParseArgv({});
  ASSERT_TRUE(ApplyFlagSources(FakeSources({{"TLSERVE_T_FROM_ENV", ""}})).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_t_from_env), "default");
}

TEST_F(ConfigTest, QuotesKeepSpacesAndAllowEmptyValues) {
  ParseArgv({});
  ASSERT_TRUE(ApplyConfigText("t_from_file = \" a b \"\nt_from_env = \"\"\n",
                              "q.conf", FakeSources({}))
                  .ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_t_from_file), " a b ");
  EXPECT_EQ(absl::GetFlag(FLAGS_t_from_env), "");
}

TEST_F(ConfigTest, BadValueInFileNamesFileAndLine) {
  ParseArgv({});
  const absl::Status st =
      ApplyConfigText("# counts\n\nt_count = many\n", "/etc/x.conf", FakeSources({}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("config file /etc/x.conf line 3: "));
  EXPECT_THAT(st.message(), HasSubstr("'many'"));
  EXPECT_THAT(st.message(), HasSubstr("t_count"));
  EXPECT_EQ(absl::GetFlag(FLAGS_t_count), 7);
}

TEST_F(ConfigTest, UnknownNameInFileIsAnError) {
  ParseArgv({});
  const absl::Status st =
      ApplyConfigText("t_count = 1\nt_cuont = 2\n", "a.conf", FakeSources({}));
  EXPECT_THAT(st.message(), HasSubstr("config file a.conf line 2: unknown flag 't_cuont'"));
}

TEST_F(ConfigTest, FileCannotSetAbseilsOwnFlagsOrConfig) {
  ParseArgv({});
  EXPECT_THAT(ApplyConfigText("flagfile = /x\n", "a.conf", FakeSources({})).message(),
              HasSubstr("line 1: unknown flag 'flagfile'"));
  EXPECT_THAT(ApplyConfigText("config = /x\n", "a.conf", FakeSources({})).message(),
              HasSubstr("line 1: unknown flag 'config'"));
}

TEST_F(ConfigTest, LineWithoutEqualsAndRepeatedNamesAreErrors) {
  ParseArgv({});
  EXPECT_THAT(ApplyConfigText("t_switch\n", "a.conf", FakeSources({})).message(),
              HasSubstr("line 1: expected `name = value`, got 't_switch'"));
  EXPECT_THAT(
      ApplyConfigText("t_count = 1\n\nt_count = 2\n", "a.conf", FakeSources({})).message(),
      HasSubstr("line 3: 't_count' is already set on line 1"));
}

TEST_F(ConfigTest, BadVariableNamesTheVariable) {
  ParseArgv({});
  const absl::Status st = ApplyFlagSources(FakeSources({{"TLSERVE_T_COUNT", "ten"}}));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("environment variable TLSERVE_T_COUNT: "));
  EXPECT_THAT(st.message(), HasSubstr("'ten'"));
}

TEST_F(ConfigTest, MissingConfigFileIsNamed) {
  ParseArgv({"--config=/nonexistent/tlserve.conf"});
  const absl::Status st = ApplyFlagSources(FakeSources({}));
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(st.message(), HasSubstr("/nonexistent/tlserve.conf"));
}

TEST_F(ConfigTest, LogFormatIsAFlagLikeAnyOther) {
  ParseArgv({});
  ASSERT_TRUE(ApplyFlagSources(FakeSources({{"TLSERVE_LOG_FORMAT", "json"}})).ok());
  EXPECT_EQ(absl::GetFlag(FLAGS_log_format), LogFormat::kJson);
  EXPECT_THAT(ApplyFlagSources(FakeSources({{"TLSERVE_LOG_FORMAT", "yaml"}})).message(),
              HasSubstr("must be text or json"));
}

TEST(InOwnDirTest, MatchesFolderComponentsOnly) {
  const std::vector<std::string> dirs = {"server", "common"};
  EXPECT_TRUE(InOwnDir("server/main.cc", dirs));
  EXPECT_TRUE(InOwnDir("/src/tlserve/common/config.cc", dirs));
  EXPECT_TRUE(InOwnDir("../common/config.cc", dirs));
  EXPECT_FALSE(InOwnDir("/usr/src/absl/flags/parse.cc", dirs));
  EXPECT_FALSE(InOwnDir("/src/myserver/main.cc", dirs));
  EXPECT_FALSE(InOwnDir("worker/main.cc", dirs));
}

}  // namespace
}  // namespace tlserve
