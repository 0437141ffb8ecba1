// Bearer tokens mapped to tenants and roles (server/auth.h).

#include "server/auth.h"

#include "common/sha256.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

std::string Line(const std::string& tenant, const std::string& role,
                 const std::string& token) {
  return tenant + " " + role + " " + Sha256Hex(token) + "\n";
}

void ExpectRefused(const absl::StatusOr<std::unique_ptr<Authenticator>>& got,
                   const std::string& needle) {
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(got.status().message().find(needle), absl::string_view::npos)
      << got.status();
}

TEST(AuthenticatorTest, MapsTokensToTenantsAndRoles) {
  auto auth = Authenticator::FromText(
      "# comment\n\n" + Line("team-a", "user", "alpha-token") +
          "  " + Line("ops", "admin", "omega-token"),
      "tokens");
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_TRUE((*auth)->enabled());
  EXPECT_EQ((*auth)->token_count(), 2u);

  auto user = (*auth)->CheckToken("Bearer alpha-token", Role::kUser, "x");
  ASSERT_TRUE(user.ok()) << user.status();
  EXPECT_EQ(user->tenant, "team-a");
  EXPECT_EQ(user->role, Role::kUser);
  auto admin = (*auth)->CheckToken("Bearer omega-token", Role::kAdmin, "x");
  ASSERT_TRUE(admin.ok()) << admin.status();
  EXPECT_EQ(admin->tenant, "ops");
  // An admin may do what a user may.
  EXPECT_TRUE((*auth)->CheckToken("Bearer omega-token", Role::kUser, "x").ok());
}

TEST(AuthenticatorTest, RefusesMissingUnknownAndUnderprivilegedCallers) {
  auto auth = Authenticator::FromText(Line("team-a", "user", "alpha-token"), "t");
  ASSERT_TRUE(auth.ok()) << auth.status();
  const Authenticator& a = **auth;
  for (const char* bad : {"", "Bearer ", "Basic alpha-token", "alpha-token",
                          "Bearer alpha-tokenx", "Bearer ALPHA-TOKEN"}) {
    auto got = a.CheckToken(bad, Role::kUser, "reading");
    EXPECT_EQ(got.status().code(), absl::StatusCode::kUnauthenticated) << bad;
  }
  EXPECT_NE(a.CheckToken("", Role::kUser, "r").status().message().find(
                "authorization: Bearer"),
            absl::string_view::npos);
  auto denied = a.CheckToken("Bearer alpha-token", Role::kAdmin,
                             "uploading a backbone");
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(denied.status().message(),
            "uploading a backbone needs an admin token; tenant 'team-a' has a "
            "user token");
}

TEST(AuthenticatorTest, OffMeansEveryCallerIsTheDefaultAdmin) {
  Authenticator off;
  EXPECT_FALSE(off.enabled());
  auto caller = off.CheckToken("", Role::kAdmin, "anything");
  ASSERT_TRUE(caller.ok());
  EXPECT_EQ(caller->tenant, "default");
  EXPECT_EQ(caller->role, Role::kAdmin);
}

TEST(AuthenticatorTest, BadFilesAreRefusedNamingTheLine) {
  const std::string good = Line("team-a", "user", "t1");
  ExpectRefused(Authenticator::FromText(good + "team-b user\n", "f"), "f:2:");
  ExpectRefused(Authenticator::FromText("team-a owner " + Sha256Hex("t") + "\n", "f"),
                "unknown role 'owner'");
  ExpectRefused(Authenticator::FromText("team-a user plain-token\n", "f"),
                "sha256");
  ExpectRefused(Authenticator::FromText("team/a user " + Sha256Hex("t") + "\n", "f"),
                "tenant must be");
  ExpectRefused(Authenticator::FromText(good + Line("team-b", "admin", "t1"), "f"),
                "f:2: the same token is listed twice");
  ExpectRefused(Authenticator::FromText("# nothing\n", "f"), "lists no token");
  auto missing = Authenticator::FromFile("/nonexistent/tokens");
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("auth tokens file"),
            absl::string_view::npos);
}

}  // namespace
}  // namespace tlserve
