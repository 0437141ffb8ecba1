#include "server/auth.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/sha256.h"

namespace tlserve {

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::FromFile(
    const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("auth tokens file: ", text.status().message()));
  }
  return FromText(*text, path);
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::FromText(
    absl::string_view text, absl::string_view source) {
  auto auth = std::make_unique<Authenticator>();
  auth->enabled_ = true;
  int line_number = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_number;
    absl::string_view line = absl::StripAsciiWhitespace(raw);
    if (line.empty() || line[0] == '#') continue;
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ":", line_number, ": ", why,
                       "; want '<tenant> <user|admin> <sha256 of the token>'"));
    };
    if (fields.size() != 3) return bad("not three fields");
    Caller caller;
    caller.tenant = std::string(fields[0]);
    if (caller.tenant.size() > 64) return bad("tenant longer than 64 bytes");
    for (char c : caller.tenant) {
      if (!absl::ascii_isalnum(c) && c != '-' && c != '_' && c != '.') {
        return bad("tenant must be letters, digits, '-', '_' or '.'");
      }
    }
    if (fields[1] == "user") {
      caller.role = Role::kUser;
    } else if (fields[1] == "admin") {
      caller.role = Role::kAdmin;
    } else {
      return bad(absl::StrCat("unknown role '", fields[1], "'"));
    }
    std::string hash = absl::AsciiStrToLower(fields[2]);
    if (!IsSha256Hex(hash)) {
      return bad("the token must be given as its sha256 (64 hex digits)");
    }
    if (!auth->by_hash_.emplace(hash, std::move(caller)).second) {
      return bad("the same token is listed twice");
    }
  }
  if (auth->by_hash_.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": lists no token; with no token nobody could call"));
  }
  return auth;
}

absl::StatusOr<Caller> Authenticator::Check(
    const grpc::ServerContextBase& context, Role needed,
    absl::string_view what) const {
  if (!enabled_) return Caller{"default", Role::kAdmin};
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  absl::string_view value;
  if (it != metadata.end()) {
    value = absl::string_view(it->second.data(), it->second.size());
  }
  return CheckToken(value, needed, what);
}

absl::StatusOr<Caller> Authenticator::CheckToken(absl::string_view authorization,
                                                 Role needed,
                                                 absl::string_view what) const {
  if (!enabled_) return Caller{"default", Role::kAdmin};
  constexpr absl::string_view kBearer = "Bearer ";
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "no credentials: send the metadata 'authorization: Bearer <token>' "
        "(tlctl --token_file or $TLSERVE_TOKEN; the clients' token option)");
  }
  if (!absl::StartsWith(authorization, kBearer) ||
      authorization.size() == kBearer.size()) {
    return absl::UnauthenticatedError(
        "the authorization metadata must be 'Bearer <token>'");
  }
  // Looked up by hash: the file holds no token, and the lookup's timing
  // says nothing about any token's characters.
  absl::string_view token = authorization.substr(kBearer.size());
  auto it = by_hash_.find(Sha256Hex(std::string_view(token.data(), token.size())));
  if (it == by_hash_.end()) {
    return absl::UnauthenticatedError("the token is not recognised");
  }
  if (it->second.role < needed) {
    return absl::PermissionDeniedError(absl::StrCat(
        what, " needs an admin token; tenant '", it->second.tenant,
        "' has a user token"));
  }
  return it->second;
}

}  // namespace tlserve
