// The worker's /metrics endpoint and its series, over a real socket.

#include "worker/metrics_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/worker_metrics.h"

namespace tlserve::worker {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// The whole answer (head and body) to one HTTP/1.0 request, or "".
std::string Fetch(int port, const std::string& target) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  timeval timeout{};
  timeout.tv_sec = 5;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string answer;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = absl::StrCat("GET ", target, " HTTP/1.0\r\n\r\n");
    send(fd, request.data(), request.size(), MSG_NOSIGNAL);
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) answer.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return answer;
}

TEST(MetricsHttpServerTest, ServesTheWorkerSeriesOnMetricsAndNothingElse) {
  auto registry = std::make_shared<prometheus::Registry>();
  WorkerMetrics metrics(*registry);
  auto server = MetricsHttpServer::Start("127.0.0.1:0", registry);
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_GT((*server)->port(), 0);

  metrics.SamplesTrained(16);
  metrics.SamplesTrained(4);
  metrics.CheckpointWritten(absl::Milliseconds(30), 5000);
  const std::string answer = Fetch((*server)->port(), "/metrics");
  EXPECT_THAT(answer, StartsWith("HTTP/1.0 200 OK\r\n"));
  EXPECT_THAT(answer, HasSubstr("\ntlserve_worker_training_samples_total 20\n"));
  EXPECT_THAT(answer, HasSubstr("\ntlserve_worker_checkpoint_written_bytes_total 5000\n"));
  EXPECT_THAT(answer,
              HasSubstr("\ntlserve_worker_checkpoint_write_duration_seconds_count 1\n"));
  // WorkerMetrics's device series (device="cpu" by default) are served too.
  EXPECT_THAT(answer, HasSubstr("\ntlserve_worker_device_memory_used_bytes{device=\"cpu\"} "));
  EXPECT_THAT(answer, HasSubstr("\ntlserve_worker_device_memory_total_bytes{device=\"cpu\"} "));
  EXPECT_THAT(answer, HasSubstr("\nprocess_cpu_seconds_total "));

  EXPECT_THAT(Fetch((*server)->port(), "/"), StartsWith("HTTP/1.0 404"));
  server->reset();  // stops within its poll interval
}

TEST(MetricsHttpServerTest, RefusesAnAddressThatIsNotIpv4AndPort) {
  auto registry = std::make_shared<prometheus::Registry>();
  for (const char* bad : {"localhost:9465", "127.0.0.1", "127.0.0.1:70000", ""}) {
    EXPECT_EQ(MetricsHttpServer::Start(bad, registry).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

}  // namespace
}  // namespace tlserve::worker
