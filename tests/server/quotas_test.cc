#include "server/quotas.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::HasSubstr;

TEST(ParseByteSizeTest, TakesDigitsWithBinarySuffixes) {
  EXPECT_EQ(ParseByteSize("0").value_or(-1), 0);
  EXPECT_EQ(ParseByteSize("1234").value_or(-1), 1234);
  EXPECT_EQ(ParseByteSize("3K").value_or(-1), 3 << 10);
  EXPECT_EQ(ParseByteSize("500g").value_or(-1), 500LL << 30);
  EXPECT_EQ(ParseByteSize("2T").value_or(-1), 2LL << 40);
  for (const char* bad : {"", "G", "-1", "1.5G", "10X", "9999999999T"}) {
    EXPECT_FALSE(ParseByteSize(bad).ok()) << bad;
  }
}

TEST(QuotasTest, FileOverridesTheDefaultsPerTenant) {
  TenantQuota defaults;
  defaults.max_queued_jobs = 10;
  defaults.max_stored_bytes = 1 << 20;
  auto quotas = Quotas::FromText(
      "# tenant settings\n"
      "team-a  queued_jobs=200 stored_bytes=5G\n"
      "\n"
      "batch   queued_jobs=0   # no limit\n",
      "quotas.txt", defaults);
  ASSERT_TRUE(quotas.ok()) << quotas.status();
  EXPECT_EQ(quotas->For("team-a").max_queued_jobs, 200);
  EXPECT_EQ(quotas->For("team-a").max_stored_bytes, 5LL << 30);
  EXPECT_EQ(quotas->For("batch").max_queued_jobs, 0);
  EXPECT_EQ(quotas->For("batch").max_stored_bytes, 1 << 20);  // default kept
  EXPECT_EQ(quotas->For("anyone").max_queued_jobs, 10);
  EXPECT_TRUE(quotas->limits_queued_jobs());
  EXPECT_TRUE(quotas->limits_stored_bytes());
  EXPECT_FALSE(Quotas().limits_queued_jobs());
  EXPECT_FALSE(Quotas().limits_stored_bytes());
}

TEST(QuotasTest, BadLinesAreNamed) {
  for (const char* text : {"team-a queued_jobs=-1\n", "team-a queued_jobs=x\n",
                           "team-a stored_bytes=lots\n", "team-a colour=blue\n",
                           "team-a\nteam-a\n"}) {
    auto quotas = Quotas::FromText(text, "q.txt", TenantQuota{});
    ASSERT_FALSE(quotas.ok()) << text;
    EXPECT_EQ(quotas.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(quotas.status().message(), HasSubstr("q.txt:"));
  }
}

TEST(QuotasTest, ChecksSayWhatToFree) {
  auto quotas = Quotas::FromText("small queued_jobs=2 stored_bytes=100\n",
                                 "q", TenantQuota{});
  ASSERT_TRUE(quotas.ok());
  EXPECT_TRUE(quotas->CheckQueueJob("small", 1).ok());
  absl::Status full = quotas->CheckQueueJob("small", 2);
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(full.message(), HasSubstr("tenant 'small' has 2 jobs queued"));
  EXPECT_TRUE(quotas->CheckQueueJob("other", 1'000'000).ok());

  EXPECT_TRUE(quotas->CheckStore("small", 60, 40).ok());
  absl::Status over = quotas->CheckStore("small", 60, 41);
  EXPECT_EQ(over.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(over.message(), HasSubstr("quota of 100 bytes"));
  EXPECT_THAT(over.message(), HasSubstr("delete"));
  EXPECT_EQ(quotas->CheckStore("small", 100, 0).code(),
            absl::StatusCode::kResourceExhausted);
  // No overflow near the top of int64.
  EXPECT_EQ(quotas->CheckStore("small", 50, INT64_MAX).code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace tlserve
