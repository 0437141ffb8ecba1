// The real tlserve binary configured by a file, the environment and the
// command line at once, logging JSON.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tlserve/v1/job.grpc.pb.h"

extern char** environ;

namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::stringstream text;
  text << std::ifstream(path).rdbuf();
  return text.str();
}

// tlserve with `args`, the test's environment plus `env`, stderr (and
// stdout) into `log`; killed if the test leaves it running.
class Tlserve {
 public:
  Tlserve(std::vector<std::string> args, const std::map<std::string, std::string>& env,
          const std::string& log) {
    args.insert(args.begin(), TLSERVE_BINARY_DIR "/server/tlserve");
    std::vector<std::string> vars;
    for (char** e = environ; *e != nullptr; ++e) {
      if (!absl::StartsWith(*e, "TLSERVE_")) vars.emplace_back(*e);
    }
    for (const auto& [k, v] : env) vars.push_back(absl::StrCat(k, "=", v));
    std::vector<char*> argv, envp;
    for (std::string& a : args) argv.push_back(a.data());
    for (std::string& v : vars) envp.push_back(v.data());
    argv.push_back(nullptr);
    envp.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, STDOUT_FILENO);
      dup2(fd, STDERR_FILENO);
      execve(argv[0], argv.data(), envp.data());
      _exit(127);
    }
  }
  ~Tlserve() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  // Exit code, or -1 if it did not exit in time (or died of a signal).
  int Wait(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    return -1;
  }
  void Signal(int sig) { kill(pid_, sig); }

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
};

std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/tlserve_config_test_" + name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

bool Listening(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

TEST(TlserveConfigTest, FileEnvironmentAndCommandLineTogetherWithJsonLogs) {
  const std::string dir = FreshDir("sources");
  const std::string config = dir + "/tlserve.conf";
  // data_dir here loses to the environment; log_format to the command line.
  std::ofstream(config) << "# tlserve for a test\n"
                        << "listen = 127.0.0.1:0\n"
                        << "data_dir = " << dir << "/file-data\n"
                        << "log_format = text\n"
                        << "lease_seconds = 3\n";
  const std::string log = dir + "/stderr.log";
  Tlserve server({"--config=" + config, "--log_format=json"},
                 {{"TLSERVE_DATA_DIR", dir + "/env-data"},
                  {"TLSERVE_PORT_FILE", dir + "/port"}},
                 log);

  int port = 0;
  for (absl::Time deadline = absl::Now() + absl::Seconds(30);
       port == 0 && absl::Now() < deadline;) {
    const std::string text(absl::StripAsciiWhitespace(ReadFile(dir + "/port")));
    if (text.empty() || !absl::SimpleAtoi(text, &port)) {
      port = 0;
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
  ASSERT_GT(port, 0) << "no port file from the environment's TLSERVE_PORT_FILE; log:\n"
                     << ReadFile(log);
  EXPECT_TRUE(Listening(port));
  EXPECT_TRUE(std::filesystem::exists(dir + "/env-data/tlserve.db"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/file-data"));

  // A failed call is logged with the client's x-request-id.
  {
    auto stub = tlserve::v1::JobService::NewStub(grpc::CreateChannel(
        absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    context.AddMetadata("x-request-id", "req-\"42\"");
    tlserve::v1::GetJobRequest request;
    request.set_id("no-such-job");
    tlserve::v1::Job job;
    EXPECT_EQ(stub->GetJob(&context, request, &job).error_code(), grpc::StatusCode::NOT_FOUND);
    // It comes back in the trailers, as sent.
    auto echoed = context.GetServerTrailingMetadata().find("x-request-id");
    ASSERT_NE(echoed, context.GetServerTrailingMetadata().end());
    EXPECT_EQ(std::string(echoed->second.data(), echoed->second.size()), "req-\"42\"");
  }
  // Without one, the server makes one up, logs it, and sends it back: the
  // client library adds it to the error its caller sees.
  std::string made_id;
  {
    auto client = tlserve::Client::Connect(tlserve::Client::Options{.target = absl::StrCat("127.0.0.1:", port)});
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<tlserve::v1::Job> job = (*client)->GetJob("no-such-job-either");
    ASSERT_TRUE(absl::IsNotFound(job.status())) << job.status();
    const std::string message(job.status().message());
    const size_t at = message.find(" (request id req-");
    ASSERT_NE(at, std::string::npos) << message;
    made_id = message.substr(at + 13, message.size() - at - 14);
    EXPECT_EQ(made_id.size(), 20u) << made_id;  // "req-" and 16 hex digits
  }

  server.Signal(SIGTERM);
  ASSERT_EQ(server.Wait(absl::Seconds(20)), 0) << ReadFile(log);

  // Every line a JSON record with the common keys; "serving" tells the port.
  const std::string check = absl::StrCat(
      "/usr/bin/python3 -c '\n"
      "import json, sys\n"
      "records = []\n"
      "for line in open(sys.argv[1]):\n"
      "    r = json.loads(line)\n"
      "    assert set(r) >= {\"ts\", \"level\", \"component\", \"msg\"}, line\n"
      "    assert r[\"component\"] == \"tlserve\", line\n"
      "    records.append(r)\n"
      "serving = [r for r in records if r[\"msg\"] == \"serving\"]\n"
      "assert serving and serving[0][\"port\"] == int(sys.argv[2]), records\n"
      "assert any(r[\"msg\"] == \"shutting down\" for r in records), records\n"
      "failed = [r for r in records if r[\"msg\"] == \"rpc failed\"]\n"
      "assert len(failed) == 2, records\n"
      "assert failed[1][\"request_id\"] == sys.argv[3], failed\n"
      "assert failed[0][\"method\"] == \"tlserve.v1.JobService/GetJob\", failed\n"
      "assert failed[0][\"code\"] == \"NOT_FOUND\", failed\n"
      "assert failed[0][\"request_id\"] == \"req-\\\"42\\\"\", failed\n"
      "' ",
      log, " ", port, " ", made_id);
  EXPECT_EQ(std::system(check.c_str()), 0) << ReadFile(log);
}

TEST(TlserveConfigTest, BadVariableStopsTheStartNamingIt) {
  const std::string dir = FreshDir("bad_env");
  Tlserve server({"--listen=127.0.0.1:0", "--data_dir=" + dir + "/data"},
                 {{"TLSERVE_MAX_BATCH_SIZE", "lots"}}, dir + "/stderr.log");
  EXPECT_EQ(server.Wait(absl::Seconds(20)), 2);
  const std::string err = ReadFile(dir + "/stderr.log");
  EXPECT_THAT(err, HasSubstr("tlserve: environment variable TLSERVE_MAX_BATCH_SIZE: "));
  EXPECT_THAT(err, HasSubstr("'lots'"));
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
}

TEST(TlserveConfigTest, BadConfigLineStopsTheStartNamingIt) {
  const std::string dir = FreshDir("bad_file");
  const std::string config = dir + "/tlserve.conf";
  std::ofstream(config) << "listen = 127.0.0.1:0\nworker_thread = 2\n";
  Tlserve server({"--config=" + config}, {}, dir + "/stderr.log");
  EXPECT_EQ(server.Wait(absl::Seconds(20)), 2);
  EXPECT_THAT(ReadFile(dir + "/stderr.log"),
              HasSubstr(absl::StrCat("tlserve: config file ", config,
                                     " line 2: unknown flag 'worker_thread'")));
}

TEST(TlserveConfigTest, HelpExplainsSourcesAndListsOnlyOurFlags) {
  const std::string dir = FreshDir("help");
  Tlserve server({"--help"}, {}, dir + "/out.txt");
  server.Wait(absl::Seconds(20));
  const std::string help = ReadFile(dir + "/out.txt");
  EXPECT_THAT(help, HasSubstr("control plane"));
  EXPECT_THAT(help, HasSubstr("TLSERVE_<NAME>"));
  EXPECT_THAT(help, HasSubstr("--data_dir"));
  EXPECT_THAT(help, HasSubstr("--log_format"));
  EXPECT_THAT(help, HasSubstr("server/main.cc"));
  EXPECT_THAT(help, ::testing::Not(HasSubstr("--flagfile")));
}

}  // namespace
