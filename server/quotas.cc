#include "server/quotas.h"

#include <limits>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"

namespace tlserve {

absl::StatusOr<int64_t> ParseByteSize(absl::string_view text) {
  int shift = 0;
  if (!text.empty()) {
    switch (absl::ascii_toupper(text.back())) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: break;
    }
    if (shift > 0) text.remove_suffix(1);
  }
  int64_t value = 0;
  if (text.empty() || !absl::ascii_isdigit(text[0]) ||
      !absl::SimpleAtoi(text, &value) ||
      value > (std::numeric_limits<int64_t>::max() >> shift)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", text, "' is not a size in bytes (digits with an optional K, M, "
        "G or T)"));
  }
  return value << shift;
}

absl::StatusOr<Quotas> Quotas::FromFile(const std::string& path,
                                        TenantQuota defaults) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(),
                        absl::StrCat("quotas file: ", text.status().message()));
  }
  return FromText(*text, path, defaults);
}

absl::StatusOr<Quotas> Quotas::FromText(absl::string_view text,
                                        absl::string_view source,
                                        TenantQuota defaults) {
  Quotas quotas(defaults);
  int line_number = 0;
  for (absl::string_view raw : absl::StrSplit(text, '\n')) {
    ++line_number;
    absl::string_view line = raw.substr(0, raw.find('#'));
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, ":", line_number, ": ", why,
          "; want '<tenant> [queued_jobs=N] [stored_bytes=N[K|M|G|T]]'"));
    };
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    TenantQuota quota = defaults;
    for (size_t i = 1; i < fields.size(); ++i) {
      std::pair<absl::string_view, absl::string_view> kv =
          absl::StrSplit(fields[i], absl::MaxSplits('=', 1));
      if (kv.first == "queued_jobs") {
        if (!absl::SimpleAtoi(kv.second, &quota.max_queued_jobs) ||
            quota.max_queued_jobs < 0) {
          return bad(absl::StrCat("queued_jobs '", kv.second,
                                  "' is not a count >= 0"));
        }
      } else if (kv.first == "stored_bytes") {
        absl::StatusOr<int64_t> bytes = ParseByteSize(kv.second);
        if (!bytes.ok()) return bad(absl::StrCat("stored_bytes ", bytes.status().message()));
        quota.max_stored_bytes = *bytes;
      } else {
        return bad(absl::StrCat("unknown setting '", fields[i], "'"));
      }
    }
    if (!quotas.by_tenant_.emplace(std::string(fields[0]), quota).second) {
      return bad(absl::StrCat("tenant '", fields[0], "' is listed twice"));
    }
  }
  return quotas;
}

TenantQuota Quotas::For(absl::string_view tenant) const {
  auto it = by_tenant_.find(tenant);
  return it != by_tenant_.end() ? it->second : defaults_;
}

bool Quotas::limits_queued_jobs() const {
  if (defaults_.max_queued_jobs > 0) return true;
  for (const auto& [tenant, q] : by_tenant_) {
    if (q.max_queued_jobs > 0) return true;
  }
  return false;
}

bool Quotas::limits_stored_bytes() const {
  if (defaults_.max_stored_bytes > 0) return true;
  for (const auto& [tenant, q] : by_tenant_) {
    if (q.max_stored_bytes > 0) return true;
  }
  return false;
}

absl::Status Quotas::CheckQueueJob(absl::string_view tenant,
                                   int64_t queued) const {
  const int64_t limit = For(tenant).max_queued_jobs;
  if (limit > 0 && queued >= limit) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant '%s' has %d jobs queued, its quota; wait for some to start "
        "or cancel some, then retry",
        tenant, queued));
  }
  return absl::OkStatus();
}

absl::Status Quotas::CheckStore(absl::string_view tenant, int64_t stored,
                                int64_t adding) const {
  const int64_t limit = For(tenant).max_stored_bytes;
  if (limit > 0 && (stored >= limit || adding > limit - stored)) {
    const std::string adds =
        adding > 0 ? absl::StrFormat(" and this adds %d", adding) : "";
    return absl::ResourceExhaustedError(absl::StrFormat(
        "tenant '%s' stores %d bytes%s, over its quota of %d bytes; delete "
        "datasets, jobs or models it no longer needs (tlctl dataset|job|model "
        "delete)",
        tenant, stored, adds, limit));
  }
  return absl::OkStatus();
}

}  // namespace tlserve
