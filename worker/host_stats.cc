#include "worker/host_stats.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace tlserve::worker {
namespace {

constexpr char kCgroupRoot[] = "/sys/fs/cgroup";

class ProcReader : public HostReader {
 public:
  absl::StatusOr<std::string> ReadFile(const std::string& path) const override {
    // /proc files report size 0: read them as a stream.
    std::ifstream in(path);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  absl::Time Now() const override { return absl::Now(); }
  int AffinityCpus() const override {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) {
      return static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
    }
    return std::max(1, CPU_COUNT(&set));
  }
  int64_t ClockTicksPerSecond() const override { return sysconf(_SC_CLK_TCK); }
  int64_t PageSize() const override { return sysconf(_SC_PAGESIZE); }
};

std::vector<absl::string_view> Fields(absl::string_view text) {
  return absl::StrSplit(text, absl::ByAnyChar(" \t\n"), absl::SkipEmpty());
}

template <typename T>
std::optional<T> Min(std::optional<T> a, std::optional<T> b) {
  if (!a.has_value()) return b;
  if (!b.has_value()) return a;
  return std::min(*a, *b);
}

// The folders of this process's cgroup in the hierarchy mounted at `mount`,
// from its own up to the mount: a limit on a parent (a pod's, a systemd
// slice's) binds too. `probe` is a file every folder there has.
std::vector<std::string> CgroupChain(const HostReader& reader, const std::string& mount,
                                     absl::string_view controller, const std::string& probe) {
  std::vector<std::string> dirs;
  absl::StatusOr<std::string> cgroup = reader.ReadFile("/proc/self/cgroup");
  if (!cgroup.ok()) return dirs;
  std::optional<std::string> path = CgroupPath(*cgroup, controller);
  if (!path.has_value()) return dirs;
  // Without a cgroup namespace the path names the host's hierarchy, which a
  // container may not see: its mount point then is its own cgroup.
  std::string dir = absl::StrCat(mount, *path == "/" ? "" : *path);
  if (!reader.ReadFile(absl::StrCat(dir, "/", probe)).ok()) dir = mount;
  while (true) {
    dirs.push_back(dir);
    if (dir.size() <= mount.size()) break;
    dir.resize(dir.rfind('/'));
  }
  return dirs;
}

}  // namespace

std::shared_ptr<const HostReader> ProcHostReader() {
  return std::make_shared<const ProcReader>();
}

absl::StatusOr<double> ParseProcStatCpuSeconds(absl::string_view stat,
                                               int64_t ticks_per_second) {
  // The command name (field 2) is in parentheses and may hold spaces and
  // parentheses itself: count fields from the last ')'.
  const size_t close = stat.rfind(')');
  if (close == absl::string_view::npos || ticks_per_second <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("/proc/self/stat: no ')' in '", stat, "'"));
  }
  const std::vector<absl::string_view> fields = Fields(stat.substr(close + 1));
  // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
  int64_t utime = 0;
  int64_t stime = 0;
  if (fields.size() < 13 || !absl::SimpleAtoi(fields[11], &utime) ||
      !absl::SimpleAtoi(fields[12], &stime)) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/self/stat: no utime and stime in '", stat, "'"));
  }
  return static_cast<double>(utime + stime) / static_cast<double>(ticks_per_second);
}

absl::StatusOr<int64_t> ParseStatmResidentBytes(absl::string_view statm, int64_t page_size) {
  const std::vector<absl::string_view> fields = Fields(statm);
  int64_t pages = 0;
  if (fields.size() < 2 || !absl::SimpleAtoi(fields[1], &pages) || pages < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("/proc/self/statm: no resident page count in '", statm, "'"));
  }
  return pages * page_size;
}

absl::StatusOr<int64_t> ParseMeminfoTotalBytes(absl::string_view meminfo) {
  for (absl::string_view line : absl::StrSplit(meminfo, '\n')) {
    if (!absl::ConsumePrefix(&line, "MemTotal:")) continue;
    const std::vector<absl::string_view> fields = Fields(line);
    int64_t kib = 0;
    if (fields.size() == 2 && fields[1] == "kB" && absl::SimpleAtoi(fields[0], &kib)) {
      return kib * 1024;
    }
    return absl::InvalidArgumentError(absl::StrCat("/proc/meminfo: bad MemTotal line '",
                                                   line, "'"));
  }
  return absl::InvalidArgumentError("/proc/meminfo: no MemTotal line");
}

std::optional<std::string> CgroupPath(absl::string_view proc_self_cgroup,
                                      absl::string_view controller) {
  for (absl::string_view line : absl::StrSplit(proc_self_cgroup, '\n')) {
    // hierarchy-ID:controller-list:path
    const std::vector<absl::string_view> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    const bool match =
        controller.empty()
            ? parts[0] == "0" && parts[1].empty()
            : absl::c_linear_search(std::vector<absl::string_view>(absl::StrSplit(parts[1], ',')),
                                    controller);
    if (!match) continue;
    absl::string_view path = absl::StripTrailingAsciiWhitespace(parts[2]);
    if (path.empty()) return std::string("/");
    return std::string(path);
  }
  return std::nullopt;
}

std::optional<int64_t> ParseCgroupMemoryLimit(absl::string_view text) {
  int64_t bytes = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(text), &bytes) || bytes <= 0) {
    return std::nullopt;
  }
  return bytes;
}

std::optional<double> ParseCgroupV2CpuMax(absl::string_view cpu_max) {
  const std::vector<absl::string_view> fields = Fields(cpu_max);
  int64_t quota = 0;
  int64_t period = 0;
  if (fields.size() != 2 || !absl::SimpleAtoi(fields[0], &quota) ||
      !absl::SimpleAtoi(fields[1], &period) || quota <= 0 || period <= 0) {
    return std::nullopt;  // "max 100000": no limit
  }
  return static_cast<double>(quota) / static_cast<double>(period);
}

std::optional<double> ParseCgroupV1CpuQuota(absl::string_view quota, absl::string_view period) {
  int64_t q = 0;
  int64_t p = 0;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(quota), &q) ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(period), &p) || q <= 0 || p <= 0) {
    return std::nullopt;  // -1: no limit
  }
  return static_cast<double>(q) / static_cast<double>(p);
}

HostSample ReadHost(const HostReader& reader) {
  HostSample sample;
  sample.at = reader.Now();
  if (auto stat = reader.ReadFile("/proc/self/stat"); stat.ok()) {
    if (auto seconds = ParseProcStatCpuSeconds(*stat, reader.ClockTicksPerSecond());
        seconds.ok()) {
      sample.cpu_seconds = *seconds;
    }
  }
  if (auto statm = reader.ReadFile("/proc/self/statm"); statm.ok()) {
    if (auto bytes = ParseStatmResidentBytes(*statm, reader.PageSize()); bytes.ok()) {
      sample.resident_bytes = *bytes;
    }
  }
  if (auto meminfo = reader.ReadFile("/proc/meminfo"); meminfo.ok()) {
    if (auto bytes = ParseMeminfoTotalBytes(*meminfo); bytes.ok()) {
      sample.memory_limit_bytes = *bytes;
    }
  }
  sample.cpus = static_cast<double>(reader.AffinityCpus());

  const auto read = [&reader](const std::string& path) -> std::optional<std::string> {
    absl::StatusOr<std::string> text = reader.ReadFile(path);
    if (!text.ok()) return std::nullopt;
    return *std::move(text);
  };
  // A unified (v2) hierarchy when the mount point has cgroup.controllers;
  // otherwise v1 (or hybrid), where the memory and cpu controllers are
  // mounted apart.
  if (read(absl::StrCat(kCgroupRoot, "/cgroup.controllers")).has_value()) {
    for (const std::string& dir : CgroupChain(reader, kCgroupRoot, "", "cgroup.controllers")) {
      if (auto text = read(dir + "/memory.max")) {
        sample.memory_limit_bytes =
            Min(sample.memory_limit_bytes, ParseCgroupMemoryLimit(*text));
      }
      if (auto text = read(dir + "/cpu.max")) {
        sample.cpus = Min(sample.cpus, ParseCgroupV2CpuMax(*text));
      }
    }
  } else {
    const std::string memory = absl::StrCat(kCgroupRoot, "/memory");
    for (const std::string& dir :
         CgroupChain(reader, memory, "memory", "memory.limit_in_bytes")) {
      if (auto text = read(dir + "/memory.limit_in_bytes")) {
        sample.memory_limit_bytes =
            Min(sample.memory_limit_bytes, ParseCgroupMemoryLimit(*text));
      }
    }
    const std::string cpu = absl::StrCat(kCgroupRoot, "/cpu");
    for (const std::string& dir : CgroupChain(reader, cpu, "cpu", "cpu.cfs_quota_us")) {
      auto quota = read(dir + "/cpu.cfs_quota_us");
      auto period = read(dir + "/cpu.cfs_period_us");
      if (quota.has_value() && period.has_value()) {
        sample.cpus = Min(sample.cpus, ParseCgroupV1CpuQuota(*quota, *period));
      }
    }
  }
  return sample;
}

std::optional<double> CpuUtilization::Update(absl::Time now, double cpu_seconds,
                                             double cpus) {
  if (!last_at_.has_value() || cpu_seconds < last_cpu_seconds_) {
    // The first reading, or a counter that went back (cannot for one
    // process; start over rather than report a negative share).
    last_at_ = now;
    last_cpu_seconds_ = cpu_seconds;
    return ratio_;
  }
  const absl::Duration window = now - *last_at_;
  if (window < min_window_ || window <= absl::ZeroDuration() || cpus <= 0) return ratio_;
  const double ratio =
      (cpu_seconds - last_cpu_seconds_) / (absl::ToDoubleSeconds(window) * cpus);
  ratio_ = std::clamp(ratio, 0.0, 1.0);
  last_at_ = now;
  last_cpu_seconds_ = cpu_seconds;
  return ratio_;
}

}  // namespace tlserve::worker
