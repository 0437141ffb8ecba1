#ifndef TLSERVE_WORKER_HOST_STATS_H_
#define TLSERVE_WORKER_HOST_STATS_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace tlserve::worker {

// What the worker's CPU series read from the machine: /proc and cgroup
// files, the clock and sysconf. Tests give a fake. Thread-safe.
class HostReader {
 public:
  virtual ~HostReader() = default;
  // A file's contents; NOT_FOUND (or another error) when it cannot be read.
  virtual absl::StatusOr<std::string> ReadFile(const std::string& path) const = 0;
  virtual absl::Time Now() const = 0;
  // CPUs this process may run on (its affinity mask).
  virtual int AffinityCpus() const = 0;
  virtual int64_t ClockTicksPerSecond() const = 0;
  virtual int64_t PageSize() const = 0;
};

// The reader of this process: /proc/self, /sys/fs/cgroup, sysconf.
std::shared_ptr<const HostReader> ProcHostReader();

// This process's CPU time (user + system) from /proc/self/stat.
absl::StatusOr<double> ParseProcStatCpuSeconds(absl::string_view stat,
                                               int64_t ticks_per_second);
// Resident memory from /proc/self/statm (its second field, in pages).
absl::StatusOr<int64_t> ParseStatmResidentBytes(absl::string_view statm, int64_t page_size);
// MemTotal from /proc/meminfo.
absl::StatusOr<int64_t> ParseMeminfoTotalBytes(absl::string_view meminfo);
// This process's cgroup path from /proc/self/cgroup: of the v2 hierarchy
// ("0::/path") when `controller` is empty, else of the v1 hierarchy that
// holds it ("4:memory:/path", "2:cpu,cpuacct:/path"); nullopt without one.
std::optional<std::string> CgroupPath(absl::string_view proc_self_cgroup,
                                      absl::string_view controller);
// A memory limit (v2 memory.max, v1 memory.limit_in_bytes); nullopt for
// "max" or anything unreadable. v1's "no limit" is a huge number, which the
// caller's min with MemTotal takes care of.
std::optional<int64_t> ParseCgroupMemoryLimit(absl::string_view text);
// CPUs a cgroup may use: v2 cpu.max ("QUOTA PERIOD" or "max PERIOD").
std::optional<double> ParseCgroupV2CpuMax(absl::string_view cpu_max);
// The same from v1's cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us.
std::optional<double> ParseCgroupV1CpuQuota(absl::string_view quota, absl::string_view period);

// What one reading of the host gives; fields that could not be read are
// nullopt.
struct HostSample {
  absl::Time at;
  std::optional<double> cpu_seconds;     // this process, since it started
  std::optional<double> cpus;            // CPUs it may use: affinity, cgroup quota
  std::optional<int64_t> resident_bytes;  // this process
  std::optional<int64_t> memory_limit_bytes;  // MemTotal, or the cgroup's limit if lower
};
HostSample ReadHost(const HostReader& reader);

// Busy share of the CPUs a process may use between two readings:
// (CPU seconds used) / (wall seconds x CPUs), within [0, 1]. Readings less
// than `min_window` after the last one do not start a new window (a second
// scraper or a manual curl would otherwise shrink it to nothing); the
// previous ratio stands. Not thread-safe.
class CpuUtilization {
 public:
  explicit CpuUtilization(absl::Duration min_window = absl::Seconds(1))
      : min_window_(min_window) {}

  // The ratio over the window that ends at `now`; nullopt until two
  // readings are far enough apart.
  std::optional<double> Update(absl::Time now, double cpu_seconds, double cpus);

 private:
  absl::Duration min_window_;
  std::optional<absl::Time> last_at_;
  double last_cpu_seconds_ = 0;
  std::optional<double> ratio_;
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_HOST_STATS_H_
