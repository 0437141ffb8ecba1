#include "common/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

// 2026-11-30T18:00:00.123Z
const absl::Time kTime = absl::FromUnixMillis(1796061600123);

TEST(LogFormatTest, TextLineForPeople) {
  const std::vector<LogField> fields = {
      {"job_id", "j-1"}, {"attempt", 2}, {"reason", "lease expired"}, {"empty", ""}};
  EXPECT_EQ(FormatLogRecord(LogFormat::kText, kTime, LogSeverity::kWarning, "tlserve",
                            "job requeued", fields),
            "2026-11-30T18:00:00.123Z WARNING tlserve: job requeued job_id=j-1 "
            "attempt=2 reason=\"lease expired\" empty=\"\"\n");
}

TEST(LogFormatTest, JsonLineForCollectors) {
  const std::vector<LogField> fields = {
      {"job_id", "j-1"}, {"attempt", 2}, {"ok", true}, {"loss", 0.5}};
  EXPECT_EQ(FormatLogRecord(LogFormat::kJson, kTime, LogSeverity::kInfo, "tlworker",
                            "step", fields),
            R"({"ts":"2026-11-30T18:00:00.123Z","level":"INFO","component":"tlworker",)"
            R"("msg":"step","job_id":"j-1","attempt":2,"ok":true,"loss":0.5})"
            "\n");
}

TEST(LogFormatTest, JsonFieldsCannotReplaceTheRecordsKeys) {
  const std::vector<LogField> fields = {{"level", "DEBUG"}, {"msg", "forged"}};
  EXPECT_EQ(FormatLogRecord(LogFormat::kJson, kTime, LogSeverity::kError, "tlserve",
                            "real", fields),
            R"({"ts":"2026-11-30T18:00:00.123Z","level":"ERROR","component":"tlserve",)"
            R"("msg":"real"})"
            "\n");
}

TEST(LogFormatTest, NonFiniteNumbersBecomeStrings) {
  const std::vector<LogField> fields = {{"x", std::numeric_limits<double>::quiet_NaN()},
                                        {"y", std::numeric_limits<double>::infinity()}};
  EXPECT_THAT(FormatLogRecord(LogFormat::kJson, kTime, LogSeverity::kInfo, "c", "m", fields),
              ::testing::HasSubstr(R"("x":"nan","y":"inf"})"));
}

TEST(LogFormatTest, JsonEscapesQuotesBackslashesAndControlCharacters) {
  EXPECT_EQ(JsonQuote("say \"hi\"\\"), R"("say \"hi\"\\")");
  EXPECT_EQ(JsonQuote("a\nb\r\tc\b\f"), R"("a\nb\r\tc\b\f")");
  EXPECT_EQ(JsonQuote(std::string("\x01\x1f\x7f" "\0z", 5)), R"("\u0001\u001f\u007f\u0000z")");
}

TEST(LogFormatTest, JsonKeepsUtf8AndReplacesInvalidBytes) {
  EXPECT_EQ(JsonQuote("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82"),
            "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x99\x82\"");
  // A stray continuation byte, a truncated sequence, an overlong '/', a
  // UTF-16 surrogate.
  EXPECT_EQ(JsonQuote("a\x80" "b\xc3"), R"("a\ufffdb\ufffd")");
  EXPECT_EQ(JsonQuote("\xc0\xaf"), R"("\ufffd\ufffd")");
  EXPECT_EQ(JsonQuote("\xed\xa0\x80"), R"("\ufffd\ufffd\ufffd")");
}

TEST(LogFormatTest, TextKeepsOneRecordOnOneLine) {
  const std::vector<LogField> fields = {{"error", "line 1\nline 2"}, {"path", "a=b"}};
  EXPECT_EQ(FormatLogRecord(LogFormat::kText, kTime, LogSeverity::kError, "tlserve",
                            "two\nlines", fields),
            "2026-11-30T18:00:00.123Z ERROR tlserve: two\\nlines "
            "error=\"line 1\\nline 2\" path=\"a=b\"\n");
}

TEST(LogFormatTest, FlagValues) {
  LogFormat format = LogFormat::kText;
  std::string error;
  EXPECT_TRUE(AbslParseFlag("JSON", &format, &error));
  EXPECT_EQ(format, LogFormat::kJson);
  EXPECT_FALSE(AbslParseFlag("xml", &format, &error));
  EXPECT_EQ(error, "must be text or json");
  EXPECT_EQ(AbslUnparseFlag(LogFormat::kText), "text");
}

// Log() from many threads at once, stderr pointed at a file: every line is
// one whole record.
TEST(LogTest, ThreadsNeverInterleaveRecords) {
  const std::string path = ::testing::TempDir() + "/log_threads.txt";
  const int file = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(file, 0);
  const int saved = dup(STDERR_FILENO);
  ASSERT_GE(saved, 0);
  ASSERT_EQ(dup2(file, STDERR_FILENO), STDERR_FILENO);
  close(file);

  ConfigureLogging("tlserve", LogFormat::kJson);
  constexpr int kThreads = 4;
  constexpr int kRecords = 300;
  const std::string padding(300, 'x');  // lines longer than one small write
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &padding] {
      for (int i = 0; i < kRecords; ++i) {
        Log(LogSeverity::kInfo, "tick", {{"thread", t}, {"i", i}, {"pad", padding}});
      }
    });
  }
  for (std::thread& th : threads) th.join();
  ConfigureLogging("tlserve", LogFormat::kText);
  ASSERT_EQ(dup2(saved, STDERR_FILENO), STDERR_FILENO);
  close(saved);

  std::stringstream text;
  text << std::ifstream(path).rdbuf();
  std::vector<std::string> lines = absl::StrSplit(text.str(), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kRecords));
  std::vector<int> next(kThreads, 0);
  for (const std::string& line : lines) {
    int t = -1;
    for (int c = 0; c < kThreads; ++c) {
      if (line.find(absl::StrCat("\"thread\":", c, ",")) != std::string::npos) t = c;
    }
    ASSERT_GE(t, 0) << line;
    // Each thread's records come out whole and in its order.
    EXPECT_THAT(line, ::testing::EndsWith(absl::StrCat(
                          "\"msg\":\"tick\",\"thread\":", t, ",\"i\":", next[t],
                          ",\"pad\":\"", padding, "\"}")));
    ++next[t];
  }
}

}  // namespace
}  // namespace tlserve
