#ifndef TLSERVE_SERVER_QUOTAS_H_
#define TLSERVE_SERVER_QUOTAS_H_

// Per-tenant quotas: how many jobs a tenant may have QUEUED, and how many
// bytes it may store (datasets, models, its own backbones, its jobs'
// checkpoints; Store::StoredBytesOf). Over either, the call that would add
// more gets RESOURCE_EXHAUSTED saying what to free.
//
// Defaults come from flags (--tenant_max_queued_jobs,
// --tenant_max_stored_bytes; 0 is no limit) and a tenant may be given its
// own in a quotas file (--tenant_quotas_file), one tenant per line:
//
//   # tenant  settings (either may be left out: the default applies)
//   team-a    queued_jobs=200 stored_bytes=500G
//   batch     queued_jobs=0                       # 0: no limit
//
// stored_bytes takes a K, M, G or T suffix (powers of 1024).

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tlserve {

struct TenantQuota {
  int64_t max_queued_jobs = 0;   // 0: no limit
  int64_t max_stored_bytes = 0;  // 0: no limit
};

class Quotas {
 public:
  // No limits.
  Quotas() = default;
  explicit Quotas(TenantQuota defaults) : defaults_(defaults) {}
  // Parses a quotas file over `defaults`; an error names the line.
  static absl::StatusOr<Quotas> FromFile(const std::string& path,
                                         TenantQuota defaults);
  static absl::StatusOr<Quotas> FromText(absl::string_view text,
                                         absl::string_view source,
                                         TenantQuota defaults);

  TenantQuota For(absl::string_view tenant) const;
  // Whether any tenant has a limit of that kind (so usage need not be
  // read at all when none has).
  bool limits_queued_jobs() const;
  bool limits_stored_bytes() const;

  // RESOURCE_EXHAUSTED when the tenant, with `queued` jobs queued, may not
  // queue one more.
  absl::Status CheckQueueJob(absl::string_view tenant, int64_t queued) const;
  // RESOURCE_EXHAUSTED when storing `adding` more bytes over `stored` would
  // pass the tenant's quota.
  absl::Status CheckStore(absl::string_view tenant, int64_t stored,
                          int64_t adding) const;

 private:
  TenantQuota defaults_;
  std::map<std::string, TenantQuota, std::less<>> by_tenant_;
};

// "500G" -> 500 << 30; plain digits are bytes.
absl::StatusOr<int64_t> ParseByteSize(absl::string_view text);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_QUOTAS_H_
