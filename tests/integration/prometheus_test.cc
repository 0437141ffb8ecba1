// A real Prometheus scraping a real tlserve and tlworker on loopback while
// the worker fine-tunes and serves a model: the job, inference, gRPC and
// worker series must move as Prometheus sees them (its HTTP query API), and
// both endpoints' text must pass `promtool check metrics`.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/file_util.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/integration/cluster.h"
#include "tests/integration/fixtures.h"

namespace tlserve::testing {
namespace {

using tlserve::v1::Job;
using tlserve::v1::JobSpec;

constexpr char kPrometheus[] = "/usr/bin/prometheus";
constexpr char kPromtool[] = "/usr/bin/promtool";

#define ASSERT_OK(expr)                          \
  do {                                           \
    auto _s = (expr);                            \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s; \
  } while (0)

// A port free now on 127.0.0.1, for Prometheus, which cannot report the
// port it picked for :0.
int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// HTTP/1.0 GET on 127.0.0.1 (both Prometheus and prometheus-cpp's civetweb
// speak it); the body of a 200 answer.
absl::StatusOr<std::string> HttpGet(int port, const std::string& target) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket failed");
  timeval timeout{};
  timeout.tv_sec = 5;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to 127.0.0.1:", port));
  }
  const std::string request =
      absl::StrCat("GET ", target, " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send failed");
  }
  std::string answer;
  char buf[65536];
  while (true) {
    ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    answer.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  // "HTTP/1.x 200 OK\r\n...\r\n\r\nbody"
  const size_t body = answer.find("\r\n\r\n");
  if (body == std::string::npos || answer.compare(0, 7, "HTTP/1.") != 0 ||
      answer.compare(8, 5, " 200 ") != 0) {
    return absl::UnavailableError(absl::StrCat("GET ", target, ": ", answer.substr(0, 300)));
  }
  return answer.substr(body + 4);
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppend(&out, "%", absl::Hex(static_cast<unsigned>(c), absl::kZeroPad2));
    }
  }
  return out;
}

// An instant query's samples summed; nullopt when it matched no series.
absl::StatusOr<std::optional<double>> Query(int port, const std::string& promql) {
  absl::StatusOr<std::string> body =
      HttpGet(port, "/api/v1/query?query=" + UrlEncode(promql));
  if (!body.ok()) return body.status();
  google::protobuf::Struct answer;
  if (!google::protobuf::util::JsonStringToMessage(*body, &answer).ok()) {
    return absl::InternalError("not JSON: " + body->substr(0, 300));
  }
  const auto& fields = answer.fields();
  if (fields.count("status") == 0 || fields.at("status").string_value() != "success") {
    return absl::InternalError(absl::StrCat("query '", promql, "': ", *body));
  }
  const auto& result =
      fields.at("data").struct_value().fields().at("result").list_value();
  if (result.values_size() == 0) return std::optional<double>();
  double sum = 0;
  for (const auto& sample : result.values()) {
    // {"metric": {...}, "value": [time, "number"]}
    const auto& value = sample.struct_value().fields().at("value").list_value();
    double v = 0;
    if (value.values_size() != 2 || !absl::SimpleAtod(value.values(1).string_value(), &v)) {
      return absl::InternalError(absl::StrCat("query '", promql, "': odd sample in ", *body));
    }
    sum += v;
  }
  return std::optional<double>(sum);
}

// Polls `promql` until `ok` holds on its value (bounded by `timeout`);
// returns the last value seen (nullopt: no series) for the failure message.
std::optional<double> WaitForQuery(int port, const std::string& promql,
                                   const std::function<bool(double)>& ok,
                                   absl::Duration timeout = absl::Seconds(20)) {
  std::optional<double> last;
  const absl::Time give_up = absl::Now() + timeout;
  while (true) {
    absl::StatusOr<std::optional<double>> got = Query(port, promql);
    if (got.ok()) {
      last = *got;
      if (last.has_value() && ok(*last)) return last;
    }
    if (absl::Now() > give_up) return last;
    absl::SleepFor(absl::Milliseconds(250));
  }
}

std::string Show(const std::optional<double>& v) {
  return v.has_value() ? absl::StrCat(*v) : "no series";
}

class PrometheusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kPrometheus, X_OK) != 0 || access(kPromtool, X_OK) != 0) {
      GTEST_SKIP() << kPrometheus << " or " << kPromtool
                   << " is not installed (Debian: apt-get install prometheus)";
    }
    if (access((std::string(kFashionMnistDir) + "/train-labels-idx1-ubyte.gz").c_str(),
               R_OK) != 0) {
      GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    }
  }

  // Starts Prometheus scraping the server's and the worker's endpoints
  // every second and waits until its first scrape of both has succeeded.
  absl::Status StartPrometheus(int server_target, int worker_target) {
    prometheus_port_ = FreePort();
    if (prometheus_port_ == 0) return absl::InternalError("no free port");
    const std::string config = cluster_.dir() + "/prometheus.yml";
    {
      std::ofstream out(config);
      out << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
          << "  evaluation_interval: 1s\n"
          << "scrape_configs:\n"
          << "  - job_name: tlserve\n    static_configs:\n"
          << "      - targets: ['127.0.0.1:" << server_target << "']\n"
          << "  - job_name: tlworker\n    static_configs:\n"
          << "      - targets: ['127.0.0.1:" << worker_target << "']\n";
    }
    auto started = ChildProcess::Start(
        {kPrometheus, "--config.file=" + config,
         "--storage.tsdb.path=" + cluster_.dir() + "/prometheus-data",
         absl::StrCat("--web.listen-address=127.0.0.1:", prometheus_port_),
         "--log.level=warn"},
        cluster_.dir() + "/prometheus.log");
    if (!started.ok()) return started.status();
    prometheus_ = *std::move(started);
    const std::optional<double> up = WaitForQuery(
        prometheus_port_, "sum(up)", [](double v) { return v == 2; }, absl::Seconds(30));
    if (!up.has_value() || *up != 2) {
      std::ifstream log(cluster_.dir() + "/prometheus.log");
      std::stringstream text;
      text << log.rdbuf();
      return absl::DeadlineExceededError(absl::StrCat(
          "Prometheus did not scrape tlserve and tlworker within 30 s (sum(up) = ",
          Show(up), "):\n",
          text.str()));
    }
    return absl::OkStatus();
  }

  Cluster cluster_;
  int prometheus_port_ = 0;
  // Declared after cluster_: stopped (SIGKILL at worst) before its dir goes.
  std::unique_ptr<ChildProcess> prometheus_;
};

TEST_F(PrometheusTest, SeesJobInferenceAndGrpcSeriesMoveAndTheTextPassesPromtool) {
  const std::string port_file = cluster_.dir() + "/metrics_port";
  ASSERT_OK(cluster_.StartServer(
      {"--metrics_listen=127.0.0.1:0", "--metrics_port_file=" + port_file}));
  int metrics_port = 0;
  std::ifstream(port_file) >> metrics_port;
  ASSERT_GT(metrics_port, 0) << "tlserve wrote no metrics port";
  // The worker starts before Prometheus, so both targets are up at once;
  // it connects later than the first scrape, which the baseline below sees.
  const std::string worker_port_file = cluster_.dir() + "/worker_metrics_port";
  ASSERT_OK(cluster_.StartWorker(
      "w1", 1, {"--metrics_listen=127.0.0.1:0", "--metrics_port_file=" + worker_port_file}));
  int worker_metrics_port = 0;
  for (absl::Time give_up = absl::Now() + absl::Seconds(20);
       worker_metrics_port == 0 && absl::Now() < give_up;) {
    std::ifstream(worker_port_file) >> worker_metrics_port;
    if (worker_metrics_port == 0) absl::SleepFor(absl::Milliseconds(50));
  }
  ASSERT_GT(worker_metrics_port, 0) << "tlworker wrote no metrics port";
  ASSERT_OK(StartPrometheus(metrics_port, worker_metrics_port));

  // Before any job: the series exist (made at start) and are zero.
  EXPECT_EQ(Query(prometheus_port_, "tlserve_jobs_finished_total{outcome=\"SUCCEEDED\"}")
                .value_or(std::nullopt),
            std::optional<double>(0));
  EXPECT_EQ(Query(prometheus_port_, "tlserve_worker_training_samples_total")
                .value_or(std::nullopt),
            std::optional<double>(0));
  const std::string data_dir = cluster_.dir() + "/data";
  ASSERT_OK(MakeDirs(data_dir));
  auto parts = WriteFashionMnistSubset(data_dir, {0, 1}, 40, 10);
  ASSERT_OK(parts.status());
  auto dataset = cluster_.client().UploadDatasetFiles("fmnist", v1::IDX, *parts,
                                                      FashionMnistClassNames(), "");
  ASSERT_OK(dataset.status());
  auto path = ExportResNet18(cluster_.dir(), 32);
  ASSERT_OK(path.status());
  v1::InputSpec input;
  input.set_channels(3);
  input.set_height(32);
  input.set_width(32);
  for (float m : {0.485f, 0.456f, 0.406f}) input.add_mean(m);
  for (float s : {0.229f, 0.224f, 0.225f}) input.add_std(s);
  auto backbone = cluster_.client().UploadBackbone("resnet18", *path, input, "");
  ASSERT_OK(backbone.status());

  JobSpec spec;
  spec.set_kind(v1::FINE_TUNE);
  spec.mutable_data()->set_dataset_id(dataset->id());
  for (int c : {0, 1}) spec.mutable_data()->add_class_subset(c);
  spec.mutable_data()->set_validation_fraction(0.2f);
  spec.set_backbone_id(backbone->id());
  spec.set_epochs(1);
  spec.set_batch_size(16);
  spec.set_seed(7);
  spec.set_checkpoint_every_epoch(true);  // a checkpoint for the worker's series
  spec.mutable_freeze()->set_mode(v1::FreezePolicy::FROZEN);
  auto created = cluster_.client().CreateJob(spec, "");
  ASSERT_OK(created.status());
  auto job = cluster_.client().WaitForJob(created->id(), absl::Minutes(4));
  ASSERT_OK(job.status());
  ASSERT_EQ(job->state(), v1::SUCCEEDED) << job->error();

  v1::PredictRequest request;
  request.set_model_id(job->result().model_id());
  for (int d : {1, 3, 32, 32}) request.mutable_tensor()->add_shape(d);
  request.mutable_tensor()->set_dtype("FP32");
  std::vector<float> pixels(3 * 32 * 32, 0.5f);
  request.mutable_tensor()->set_contents(std::string(
      reinterpret_cast<const char*>(pixels.data()), pixels.size() * sizeof(float)));
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK(cluster_.client().Predict(request, absl::Seconds(60)).status());
  }
  // One refused call, so a non-OK code shows up too.
  EXPECT_EQ(cluster_.client().GetJob("no-such-job").status().code(),
            absl::StatusCode::kNotFound);

  const auto at_least = [](double n) { return [n](double v) { return v >= n; }; };
  const auto equal = [](double n) { return [n](double v) { return v == n; }; };
  const struct {
    std::string promql;
    std::function<bool(double)> ok;
    std::string want;
  } checks[] = {
      {"tlserve_jobs_finished_total{outcome=\"SUCCEEDED\"}", equal(1), "1"},
      {"tlserve_jobs{state=\"SUCCEEDED\"}", equal(1), "1"},
      {"tlserve_jobs{state=\"RUNNING\"}", equal(0), "0"},
      {"tlserve_job_queue_wait_seconds_count", equal(1), "1"},
      {"tlserve_job_duration_seconds_count", equal(1), "1"},
      {"tlserve_job_duration_seconds_sum", [](double v) { return v > 0; }, "> 0"},
      {"tlserve_workers_connected", equal(1), "1"},
      {"sum(tlserve_inference_requests_total{code=\"OK\"})", at_least(3), ">= 3"},
      {"tlserve_grpc_server_handled_total{method=\"tlserve.v1.JobService/CreateJob\","
       "code=\"OK\"}",
       equal(1), "1"},
      {"tlserve_grpc_server_handled_total{method=\"tlserve.v1.InferenceService/Predict\","
       "code=\"OK\"}",
       at_least(3), ">= 3"},
      {"tlserve_grpc_server_handled_total{method=\"tlserve.v1.JobService/GetJob\","
       "code=\"NOT_FOUND\"}",
       equal(1), "1"},
      {"tlserve_grpc_server_handling_seconds_count{method="
       "\"tlserve.v1.JobService/CreateJob\"}",
       equal(1), "1"},
      // Dataset, backbone, checkpoint and model blobs are all on disk.
      {"tlserve_blob_bytes", at_least(100000), ">= 100000"},
      {"tlserve_store_size_bytes", [](double v) { return v > 0; }, "> 0"},
      // The worker's own endpoint: 80% of 2 x 40 images trained for 1 epoch.
      {"tlserve_worker_training_samples_total", equal(64), "64"},
      {"tlserve_worker_checkpoint_write_duration_seconds_count", at_least(1), ">= 1"},
      {"tlserve_worker_checkpoint_written_bytes_total", at_least(1000), ">= 1000"},
      // Its device series; device="cpu" is the worker process itself (its
      // resident memory holds LibTorch, far more than 1 MiB).
      {"tlserve_worker_device_memory_used_bytes{device=\"cpu\"}", at_least(1 << 20),
       ">= 1 MiB"},
      {"tlserve_worker_device_memory_total_bytes{device=\"cpu\"}"
       " - tlserve_worker_device_memory_used_bytes{device=\"cpu\"}",
       [](double v) { return v > 0; }, "> 0"},
      {"tlserve_worker_device_utilization_ratio{device=\"cpu\"}",
       [](double v) { return v >= 0 && v <= 1; }, "in [0, 1]"},
      {"process_cpu_seconds_total{job=\"tlworker\"}", [](double v) { return v > 0; }, "> 0"},
  };
  for (const auto& check : checks) {
    const std::optional<double> got = WaitForQuery(prometheus_port_, check.promql, check.ok);
    EXPECT_TRUE(got.has_value() && check.ok(*got))
        << check.promql << " = " << Show(got) << ", want " << check.want;
  }

  // The exposition text itself, linted as Prometheus's own tool does.
  for (int port : {metrics_port, worker_metrics_port}) {
    absl::StatusOr<std::string> text = HttpGet(port, "/metrics");
    ASSERT_OK(text.status());
    const std::string scraped = absl::StrCat(cluster_.dir(), "/metrics.", port, ".txt");
    const std::string lint = scraped + ".promtool";
    std::ofstream(scraped) << *text;
    const int rc = std::system(
        absl::StrCat(kPromtool, " check metrics < ", scraped, " > ", lint, " 2>&1").c_str());
    std::ifstream lint_in(lint);
    std::stringstream lint_text;
    lint_text << lint_in.rdbuf();
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0)
        << "promtool check metrics on port " << port << " failed:\n" << lint_text.str();
  }

  prometheus_->Kill(SIGTERM);
  EXPECT_TRUE(prometheus_->Wait(absl::Seconds(15)).ok());
}

}  // namespace
}  // namespace tlserve::testing
