// The worker's device series: /proc and cgroup parsing, the CPU utilisation
// arithmetic, NVML through a fake libnvidia-ml, and the series DeviceMetrics
// puts in a registry, with a fake host and clock.

#include "worker/device_metrics.h"

#include <dlfcn.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/host_stats.h"
#include "worker/nvml.h"

namespace tlserve::worker {
namespace {

using ::testing::HasSubstr;
using ::testing::SizeIs;

constexpr int64_t kGiB = int64_t{1} << 30;

// /proc and /sys as a map from path to contents, a settable clock and CPU
// count; 100 ticks a second, 4 KiB pages. Thread-safe: a sampling thread
// reads while the test writes.
class FakeHost : public HostReader {
 public:
  absl::StatusOr<std::string> ReadFile(const std::string& path) const override {
    absl::MutexLock lock(&mu_);
    auto it = files_.find(path);
    if (it == files_.end()) return absl::NotFoundError(path);
    return it->second;
  }
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  int AffinityCpus() const override {
    absl::MutexLock lock(&mu_);
    return cpus_;
  }
  int64_t ClockTicksPerSecond() const override { return 100; }
  int64_t PageSize() const override { return 4096; }

  void Write(const std::string& path, const std::string& text) {
    absl::MutexLock lock(&mu_);
    files_[path] = text;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void SetCpus(int cpus) {
    absl::MutexLock lock(&mu_);
    cpus_ = cpus;
  }
  // /proc/self/stat with this much user and system time, in ticks.
  void SetCpuTicks(int64_t user, int64_t system) {
    Write("/proc/self/stat",
          absl::StrCat("4242 (tl worker) S 1 4242 4242 0 -1 4194560 100 0 0 0 ", user, " ",
                       system, " 0 0 20 0 8 0 12345 1000000 250 18446744073709551615\n"));
  }
  void SetResidentPages(int64_t pages) {
    Write("/proc/self/statm", absl::StrCat("90000 ", pages, " 3000 500 0 20000 0\n"));
  }
  void SetMemTotalKib(int64_t kib) {
    Write("/proc/meminfo", absl::StrCat("MemTotal:       ", kib,
                                        " kB\nMemFree:         1000 kB\nCached: 5 kB\n"));
  }

 private:
  mutable absl::Mutex mu_;
  std::map<std::string, std::string> files_ ABSL_GUARDED_BY(mu_);
  absl::Time now_ ABSL_GUARDED_BY(mu_) = absl::FromUnixSeconds(1700000000);
  int cpus_ ABSL_GUARDED_BY(mu_) = 4;
};

// A host with 16 GiB, 4 CPUs and no cgroup files at all.
std::shared_ptr<FakeHost> PlainHost() {
  auto host = std::make_shared<FakeHost>();
  host->SetCpuTicks(0, 0);
  host->SetResidentPages(1000);
  host->SetMemTotalKib(16 * 1024 * 1024);
  return host;
}

// ---- /proc and cgroup parsing ----

TEST(HostStatsTest, ParsesCpuSecondsPastAParenthesisedCommandName) {
  // A command name with spaces and a ')' of its own must not shift fields.
  const std::string stat =
      "77 (a) b (c)) R 1 77 77 0 -1 4194304 10 0 0 0 250 150 0 0 20 0 1 0 5 6 7\n";
  absl::StatusOr<double> seconds = ParseProcStatCpuSeconds(stat, 100);
  ASSERT_TRUE(seconds.ok()) << seconds.status();
  EXPECT_DOUBLE_EQ(*seconds, 4.0);
  EXPECT_DOUBLE_EQ(*ParseProcStatCpuSeconds(stat, 250), 1.6);
}

TEST(HostStatsTest, RejectsAStatLineWithoutTimes) {
  for (const char* bad : {"", "77 (a R 1 2 3", "77 (a) R 1 77 77 0", "77 (a) R 1 77 77 0 -1 4 "
                                                                     "10 0 0 0 x 150"}) {
    EXPECT_EQ(ParseProcStatCpuSeconds(bad, 100).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(HostStatsTest, ParsesResidentPagesAndMemTotal) {
  EXPECT_EQ(*ParseStatmResidentBytes("90000 2500 300 1 0 100 0\n", 4096), 2500 * 4096);
  EXPECT_FALSE(ParseStatmResidentBytes("90000\n", 4096).ok());
  EXPECT_EQ(*ParseMeminfoTotalBytes("MemTotal:       24683620 kB\nMemFree: 1 kB\n"),
            int64_t{24683620} * 1024);
  EXPECT_FALSE(ParseMeminfoTotalBytes("MemFree: 1 kB\n").ok());
  EXPECT_FALSE(ParseMeminfoTotalBytes("MemTotal: 12 MB\n").ok());
}

TEST(HostStatsTest, FindsTheV2AndV1CgroupPaths) {
  const std::string hybrid =
      "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/slice/x\n0::/\n";
  EXPECT_EQ(CgroupPath(hybrid, ""), std::optional<std::string>("/"));
  EXPECT_EQ(CgroupPath(hybrid, "memory"), std::optional<std::string>("/process_api/abc"));
  EXPECT_EQ(CgroupPath(hybrid, "cpu"), std::optional<std::string>("/slice/x"));
  EXPECT_EQ(CgroupPath(hybrid, "cpuset"), std::nullopt);
  EXPECT_EQ(CgroupPath("0::/kubepods/pod1/c1\n", ""),
            std::optional<std::string>("/kubepods/pod1/c1"));
  EXPECT_EQ(CgroupPath("4:memory:/x\n", ""), std::nullopt);
}

TEST(HostStatsTest, ParsesCgroupLimitsAndTheirAbsence) {
  EXPECT_EQ(ParseCgroupMemoryLimit("max\n"), std::nullopt);
  EXPECT_EQ(ParseCgroupMemoryLimit("2147483648\n"), std::optional<int64_t>(2 * kGiB));
  EXPECT_EQ(ParseCgroupV2CpuMax("max 100000\n"), std::nullopt);
  EXPECT_EQ(ParseCgroupV2CpuMax("250000 100000\n"), std::optional<double>(2.5));
  EXPECT_EQ(ParseCgroupV1CpuQuota("-1\n", "100000\n"), std::nullopt);
  EXPECT_EQ(ParseCgroupV1CpuQuota("50000\n", "100000\n"), std::optional<double>(0.5));
}

TEST(HostStatsTest, TakesTheLowestLimitUpTheV2Chain) {
  std::shared_ptr<FakeHost> host = PlainHost();
  host->SetCpus(8);
  host->SetCpuTicks(300, 100);
  host->Write("/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
  host->Write("/sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
  host->Write("/sys/fs/cgroup/kubepods/pod1/c1/cgroup.controllers", "cpu memory\n");
  host->Write("/sys/fs/cgroup/kubepods/pod1/c1/memory.max", "max\n");
  host->Write("/sys/fs/cgroup/kubepods/pod1/memory.max", "2147483648\n");
  host->Write("/sys/fs/cgroup/kubepods/memory.max", "4294967296\n");
  host->Write("/sys/fs/cgroup/kubepods/pod1/c1/cpu.max", "150000 100000\n");
  const HostSample sample = ReadHost(*host);
  EXPECT_EQ(sample.at, host->Now());
  EXPECT_EQ(sample.cpu_seconds, std::optional<double>(4.0));
  EXPECT_EQ(sample.resident_bytes, std::optional<int64_t>(1000 * 4096));
  EXPECT_EQ(sample.memory_limit_bytes, std::optional<int64_t>(2 * kGiB));
  EXPECT_EQ(sample.cpus, std::optional<double>(1.5));
}

TEST(HostStatsTest, ReadsTheMountsOwnLimitWhenTheHostPathIsHidden) {
  // No cgroup namespace: /proc/self/cgroup names the host's path, and the
  // container sees its own cgroup at the mount point.
  std::shared_ptr<FakeHost> host = PlainHost();
  host->Write("/proc/self/cgroup", "0::/kubepods/pod1/c1\n");
  host->Write("/sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
  host->Write("/sys/fs/cgroup/memory.max", "1073741824\n");
  host->Write("/sys/fs/cgroup/cpu.max", "max 100000\n");
  const HostSample sample = ReadHost(*host);
  EXPECT_EQ(sample.memory_limit_bytes, std::optional<int64_t>(kGiB));
  EXPECT_EQ(sample.cpus, std::optional<double>(4));
}

TEST(HostStatsTest, ReadsV1ControllersWithoutAUnifiedMount) {
  std::shared_ptr<FakeHost> host = PlainHost();
  host->Write("/proc/self/cgroup", "4:memory:/job\n2:cpu,cpuacct:/job\n0::/\n");
  // v1's "no limit" is a huge number: MemTotal stays the limit.
  host->Write("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
  host->Write("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", "9223372036854771712\n");
  host->Write("/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us", "200000\n");
  host->Write("/sys/fs/cgroup/cpu/job/cpu.cfs_period_us", "100000\n");
  HostSample sample = ReadHost(*host);
  EXPECT_EQ(sample.memory_limit_bytes, std::optional<int64_t>(16 * kGiB));
  EXPECT_EQ(sample.cpus, std::optional<double>(2));

  host->Write("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", "3221225472\n");
  sample = ReadHost(*host);
  EXPECT_EQ(sample.memory_limit_bytes, std::optional<int64_t>(3 * kGiB));
}

TEST(HostStatsTest, ReadsThisProcess) {
  if (!ProcHostReader()->ReadFile("/proc/self/stat").ok()) {
    GTEST_SKIP() << "no /proc on this machine";
  }
  const HostSample sample = ReadHost(*ProcHostReader());
  ASSERT_TRUE(sample.cpu_seconds.has_value());
  EXPECT_GE(*sample.cpu_seconds, 0);
  ASSERT_TRUE(sample.resident_bytes.has_value());
  ASSERT_TRUE(sample.memory_limit_bytes.has_value());
  EXPECT_GT(*sample.resident_bytes, 1 << 20);  // this binary links LibTorch
  EXPECT_GT(*sample.memory_limit_bytes, *sample.resident_bytes);
  ASSERT_TRUE(sample.cpus.has_value());
  EXPECT_GT(*sample.cpus, 0);
}

// ---- CPU utilisation ----

TEST(CpuUtilizationTest, IsCpuTimeOverWallTimeTimesCpus) {
  CpuUtilization utilization;
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  EXPECT_EQ(utilization.Update(t0, 10.0, 4), std::nullopt);
  // 3 CPU seconds in 2 wall seconds on 4 CPUs.
  EXPECT_EQ(utilization.Update(t0 + absl::Seconds(2), 13.0, 4), std::optional<double>(0.375));
  // Idle for 5 s.
  EXPECT_EQ(utilization.Update(t0 + absl::Seconds(7), 13.0, 4), std::optional<double>(0.0));
  // Busier than the CPUs allow (a quota that just shrank): at most 1.
  EXPECT_EQ(utilization.Update(t0 + absl::Seconds(8), 20.0, 1), std::optional<double>(1.0));
}

TEST(CpuUtilizationTest, KeepsItsWindowWhenReadingsComeTooSoon) {
  CpuUtilization utilization(absl::Seconds(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  utilization.Update(t0, 0.0, 2);
  EXPECT_EQ(utilization.Update(t0 + absl::Milliseconds(10), 0.01, 2), std::nullopt);
  EXPECT_EQ(utilization.Update(t0 + absl::Seconds(4), 2.0, 2), std::optional<double>(0.25));
  // A second scraper right after: the last ratio, and the window still
  // starts at 4 s.
  EXPECT_EQ(utilization.Update(t0 + absl::Milliseconds(4100), 2.2, 2),
            std::optional<double>(0.25));
  EXPECT_EQ(utilization.Update(t0 + absl::Seconds(6), 6.0, 2), std::optional<double>(1.0));
}

// ---- NVML ----

TEST(NvmlDeviceIdTest, MapsTheCudaIndexThroughCudaVisibleDevices) {
  EXPECT_EQ(*NvmlDeviceId(0, nullptr), "0");
  EXPECT_EQ(*NvmlDeviceId(3, nullptr), "3");
  EXPECT_EQ(*NvmlDeviceId(0, "2,0"), "2");
  EXPECT_EQ(*NvmlDeviceId(1, "2, 0"), "0");
  EXPECT_EQ(*NvmlDeviceId(0, "GPU-5555-abcd"), "GPU-5555-abcd");
  EXPECT_EQ(NvmlDeviceId(1, "0").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(NvmlDeviceId(0, "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(NvmlDeviceId(0, "MIG-1234").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(NvmlDeviceId(-1, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NvmlTest, SaysWhichStepFailed) {
  absl::StatusOr<std::unique_ptr<Nvml>> missing = Nvml::Load("libtlserve-no-such-nvml.so.1");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("libtlserve-no-such-nvml.so.1"));
  // A real library that is not NVML.
  absl::StatusOr<std::unique_ptr<Nvml>> not_nvml = Nvml::Load("libm.so.6");
  EXPECT_EQ(not_nvml.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(not_nvml.status().message(), HasSubstr("nvmlInit_v2"));
}

TEST(NvmlTest, OpensGpusByIndexAndUuidAndReadsThem) {
  absl::StatusOr<std::unique_ptr<Nvml>> nvml = Nvml::Load(TLSERVE_FAKE_NVML);
  ASSERT_TRUE(nvml.ok()) << nvml.status();
  absl::StatusOr<Nvml::Device> alpha = (*nvml)->Open("0");
  ASSERT_TRUE(alpha.ok()) << alpha.status();
  EXPECT_EQ(alpha->name, "Fake GPU Alpha");
  absl::StatusOr<Nvml::Reading> reading = (*nvml)->Read(*alpha);
  ASSERT_TRUE(reading.ok()) << reading.status();
  EXPECT_DOUBLE_EQ(reading->utilization, 0.37);
  EXPECT_EQ(reading->memory_used_bytes, 3 * kGiB);
  EXPECT_EQ(reading->memory_total_bytes, 80 * kGiB);

  absl::StatusOr<Nvml::Device> beta = (*nvml)->Open("GPU-55555555-6666-7777-8888-999999999999");
  ASSERT_TRUE(beta.ok()) << beta.status();
  EXPECT_EQ(beta->name, "Fake GPU Beta");

  absl::StatusOr<Nvml::Device> third = (*nvml)->Open("2");
  EXPECT_EQ(third.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(third.status().message(), HasSubstr("sees 2 GPUs"));
  EXPECT_EQ((*nvml)->Open("GPU-nope").status().code(), absl::StatusCode::kNotFound);
}

// ---- DeviceMetrics ----

using Labels = std::map<std::string, std::string>;

// Every series of family `name`: its labels and value.
std::map<Labels, double> Series(const prometheus::Registry& registry, const std::string& name) {
  std::map<Labels, double> out;
  for (const prometheus::MetricFamily& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const prometheus::ClientMetric& metric : family.metric) {
      Labels labels;
      for (const auto& label : metric.label) labels[label.name] = label.value;
      out[labels] = family.type == prometheus::MetricType::Counter ? metric.counter.value
                                                                   : metric.gauge.value;
    }
  }
  return out;
}

constexpr char kUtilization[] = "tlserve_worker_device_utilization_ratio";
constexpr char kMemoryUsed[] = "tlserve_worker_device_memory_used_bytes";
constexpr char kMemoryTotal[] = "tlserve_worker_device_memory_total_bytes";
constexpr char kCpuSeconds[] = "process_cpu_seconds_total";

DeviceMetrics::Options Manual(std::shared_ptr<FakeHost> host, const std::string& device,
                              std::vector<std::string>* warnings) {
  DeviceMetrics::Options options;
  options.device = device;
  options.sample_period = absl::ZeroDuration();
  options.host = std::move(host);
  options.nvml_library = TLSERVE_FAKE_NVML;
  options.warn = [warnings](const std::string& w) { warnings->push_back(w); };
  return options;
}

TEST(DeviceMetricsTest, ExportsTheCpuSeriesLabelledDeviceCpu) {
  std::shared_ptr<FakeHost> host = PlainHost();
  host->SetCpuTicks(150, 50);
  std::vector<std::string> warnings;
  prometheus::Registry registry;
  DeviceMetrics metrics(registry, Manual(host, "cpu", &warnings));

  const Labels cpu = {{"device", "cpu"}};
  EXPECT_EQ(Series(registry, kMemoryUsed), (std::map<Labels, double>{{cpu, 1000.0 * 4096}}));
  EXPECT_EQ(Series(registry, kMemoryTotal),
            (std::map<Labels, double>{{cpu, 16.0 * static_cast<double>(kGiB)}}));
  EXPECT_EQ(Series(registry, kCpuSeconds), (std::map<Labels, double>{{{}, 2.0}}));
  // One reading is no window yet: no utilisation series rather than a 0.
  EXPECT_TRUE(Series(registry, kUtilization).empty());

  // 10 s later, 6 more CPU seconds on 4 CPUs; 500 more resident pages.
  host->Advance(absl::Seconds(10));
  host->SetCpuTicks(600, 200);
  host->SetResidentPages(1500);
  metrics.Sample();
  EXPECT_EQ(Series(registry, kUtilization), (std::map<Labels, double>{{cpu, 0.15}}));
  EXPECT_EQ(Series(registry, kMemoryUsed), (std::map<Labels, double>{{cpu, 1500.0 * 4096}}));
  EXPECT_EQ(Series(registry, kCpuSeconds), (std::map<Labels, double>{{{}, 8.0}}));
  EXPECT_FALSE(metrics.exports_gpu());
  EXPECT_THAT(warnings, SizeIs(0));
}

TEST(DeviceMetricsTest, WithoutNvmlLeavesTheGpuSeriesOutAndWarnsOnce) {
  std::shared_ptr<FakeHost> host = PlainHost();
  std::vector<std::string> warnings;
  prometheus::Registry registry;
  DeviceMetrics::Options options = Manual(host, "cuda:0", &warnings);
  options.nvml_library = "libtlserve-no-such-nvml.so.1";
  DeviceMetrics metrics(registry, options);
  for (int i = 0; i < 3; ++i) {
    host->Advance(absl::Seconds(5));
    metrics.Sample();
  }
  EXPECT_FALSE(metrics.exports_gpu());
  // The CPU series are still there, and only they are.
  const std::map<Labels, double> used = Series(registry, kMemoryUsed);
  ASSERT_EQ(used.size(), 1u);
  EXPECT_EQ(used.begin()->first, (Labels{{"device", "cpu"}}));
  EXPECT_EQ(Series(registry, kUtilization).size(), 1u);
  ASSERT_THAT(warnings, SizeIs(1));
  EXPECT_THAT(warnings[0], HasSubstr("--device=cuda:0"));
  EXPECT_THAT(warnings[0], HasSubstr("libtlserve-no-such-nvml.so.1"));
}

TEST(DeviceMetricsTest, AnUnknownCudaDeviceWarnsAndExportsNoGpu) {
  std::vector<std::string> warnings;
  prometheus::Registry registry;
  DeviceMetrics metrics(registry, Manual(PlainHost(), "cuda:5", &warnings));
  EXPECT_FALSE(metrics.exports_gpu());
  ASSERT_THAT(warnings, SizeIs(1));
  EXPECT_THAT(warnings[0], HasSubstr("sees 2 GPUs"));
}

// The fake library's own controls, found in the copy DeviceMetrics loads
// (dlopen of the same path shares it).
struct FakeNvmlControls {
  FakeNvmlControls() {
    library = dlopen(TLSERVE_FAKE_NVML, RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) return;
    set_fail_reads = reinterpret_cast<void (*)(int)>(dlsym(library, "FakeNvmlSetFailReads"));
    initialised = reinterpret_cast<int (*)()>(dlsym(library, "FakeNvmlInitialised"));
  }
  ~FakeNvmlControls() {
    if (library != nullptr) dlclose(library);
  }
  void* library = nullptr;
  void (*set_fail_reads)(int) = nullptr;
  int (*initialised)() = nullptr;
};

TEST(DeviceMetricsTest, ExportsTheGpuCudaSeesAsCudaZero) {
  FakeNvmlControls fake;
  ASSERT_NE(fake.initialised, nullptr) << dlerror();
  // CUDA sees only NVML's GPU 1, as its cuda:0.
  ASSERT_EQ(setenv("CUDA_VISIBLE_DEVICES", "1", 1), 0);
  std::vector<std::string> warnings;
  {
    prometheus::Registry registry;
    DeviceMetrics metrics(registry, Manual(PlainHost(), "cuda:0", &warnings));
    unsetenv("CUDA_VISIBLE_DEVICES");
    EXPECT_TRUE(metrics.exports_gpu());
    EXPECT_EQ(fake.initialised(), 1);
    const Labels gpu = {{"device", "cuda:0"}, {"model", "Fake GPU Beta"}};
    EXPECT_EQ(Series(registry, kUtilization).at(gpu), 0.9);
    EXPECT_EQ(Series(registry, kMemoryUsed).at(gpu), 15.0 * static_cast<double>(kGiB));
    EXPECT_EQ(Series(registry, kMemoryTotal).at(gpu), 16.0 * static_cast<double>(kGiB));
    EXPECT_EQ(Series(registry, kMemoryUsed).count(Labels{{"device", "cpu"}}), 1u);

    // A GPU that stops answering: its series go rather than go stale, one
    // warning, and they come back with the GPU.
    fake.set_fail_reads(1);
    metrics.Sample();
    metrics.Sample();
    EXPECT_FALSE(metrics.exports_gpu());
    EXPECT_EQ(Series(registry, kMemoryUsed).count(gpu), 0u);
    EXPECT_EQ(Series(registry, kUtilization).count(gpu), 0u);
    ASSERT_THAT(warnings, SizeIs(1));
    EXPECT_THAT(warnings[0], HasSubstr("GPU is lost"));
    fake.set_fail_reads(0);
    metrics.Sample();
    EXPECT_TRUE(metrics.exports_gpu());
    EXPECT_EQ(Series(registry, kMemoryUsed).at(gpu), 15.0 * static_cast<double>(kGiB));
  }
  EXPECT_EQ(fake.initialised(), 0) << "NVML not shut down";
}

TEST(DeviceMetricsTest, ItsThreadRefreshesTheSeries) {
  std::shared_ptr<FakeHost> host = PlainHost();
  std::vector<std::string> warnings;
  prometheus::Registry registry;
  DeviceMetrics::Options options = Manual(host, "cpu", &warnings);
  options.sample_period = absl::Milliseconds(10);
  DeviceMetrics metrics(registry, options);
  host->SetResidentPages(4321);
  const Labels cpu = {{"device", "cpu"}};
  for (absl::Time give_up = absl::Now() + absl::Seconds(10);
       Series(registry, kMemoryUsed)[cpu] != 4321.0 * 4096 && absl::Now() < give_up;) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(Series(registry, kMemoryUsed)[cpu], 4321.0 * 4096);
}

}  // namespace
}  // namespace tlserve::worker
