#include "tests/integration/cluster.h"

#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace tlserve::testing {

std::string ServerBinary() { return TLSERVE_BINARY_DIR "/server/tlserve"; }
std::string WorkerBinary() { return TLSERVE_BINARY_DIR "/worker/tlworker"; }
std::string SourceDir() { return TLSERVE_SOURCE_DIR; }

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    std::vector<std::string> argv, const std::string& log_path) {
  auto child = std::unique_ptr<ChildProcess>(new ChildProcess());
  child->pid_ = fork();
  if (child->pid_ < 0) return absl::InternalError("fork failed");
  if (child->pid_ == 0) {
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    std::vector<char*> args;
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return child;
}

ChildProcess::~ChildProcess() {
  if (!reaped_ && pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

void ChildProcess::Kill(int signal) {
  if (!reaped_ && pid_ > 0) kill(pid_, signal);
}

absl::StatusOr<int> ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time give_up = absl::Now() + timeout;
  while (absl::Now() < give_up) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      return status;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("process still running");
}

bool ChildProcess::Running() {
  if (reaped_) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    reaped_ = true;
    return false;
  }
  return true;
}

Cluster::Cluster() {
  std::string tmpl = ::testing::TempDir() + "/cluster_XXXXXX";
  char* made = mkdtemp(tmpl.data());
  EXPECT_NE(made, nullptr);
  dir_ = tmpl;
}

Cluster::~Cluster() {
  client_.reset();
  for (auto& [id, worker] : workers_) worker->Kill(SIGKILL);
  workers_.clear();
  if (server_ != nullptr) {
    server_->Kill(SIGTERM);
    if (!server_->Wait(absl::Seconds(10)).ok()) server_->Kill(SIGKILL);
  }
  server_.reset();
  if (::testing::Test::HasFailure()) {
    std::fprintf(stderr, "--- server log (%s) ---\n%s\n", dir_.c_str(),
                 ServerLog().c_str());
  } else {
    std::system(("rm -rf '" + dir_ + "'").c_str());
  }
}

std::string Cluster::address() const { return absl::StrCat("127.0.0.1:", port_); }

std::string Cluster::ServerLog() const {
  std::ifstream in(dir_ + "/tlserve.log");
  std::stringstream s;
  s << in.rdbuf();
  std::string text = s.str();
  if (text.size() > 20000) text = text.substr(text.size() - 20000);
  return text;
}

absl::Status Cluster::StartServer(std::vector<std::string> extra_flags) {
  const std::string port_file = absl::StrCat(dir_, "/port.", ++server_starts_);
  std::vector<std::string> argv = {
      ServerBinary(), absl::StrCat("--listen=127.0.0.1:", port_),
      absl::StrCat("--data_dir=", dir_, "/var"),
      absl::StrCat("--port_file=", port_file)};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  auto started = ChildProcess::Start(argv, dir_ + "/tlserve.log");
  if (!started.ok()) return started.status();
  server_ = *std::move(started);
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (absl::Now() < give_up) {
    std::ifstream in(port_file);
    int port = 0;
    if (in >> port && port > 0) {
      port_ = port;
      break;
    }
    if (!server_->Running()) {
      return absl::InternalError("tlserve exited at start:\n" + ServerLog());
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (port_ == 0) return absl::DeadlineExceededError("tlserve wrote no port");
  Client::Options options = client_options_;
  options.target = address();
  auto client = Client::Connect(std::move(options));
  if (!client.ok()) return client.status();
  client_ = *std::move(client);
  return client_->WaitUntilHealthy(absl::Seconds(20));
}

void Cluster::KillServer(int signal) {
  if (server_ == nullptr) return;
  server_->Kill(signal);
  (void)server_->Wait(absl::Seconds(20));
  server_.reset();
}

absl::Status Cluster::StartWorker(const std::string& id, int threads,
                                  std::vector<std::string> extra_flags) {
  std::vector<std::string> argv = {
      WorkerBinary(), absl::StrCat("--server=", address()),
      absl::StrCat("--worker_id=", id),
      absl::StrCat("--cache_dir=", dir_, "/cache-", id),
      absl::StrCat("--threads=", threads)};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  auto started = ChildProcess::Start(argv, dir_ + "/tlserve.log");
  if (!started.ok()) return started.status();
  workers_[id] = *std::move(started);
  return absl::OkStatus();
}

void Cluster::KillWorker(const std::string& id, int signal) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  it->second->Kill(signal);
  (void)it->second->Wait(absl::Seconds(20));
  workers_.erase(it);
}

absl::StatusOr<int> Cluster::SignalServerAndWait(int signal,
                                                 absl::Duration timeout) {
  if (server_ == nullptr) return absl::FailedPreconditionError("no server");
  server_->Kill(signal);
  absl::StatusOr<int> status = server_->Wait(timeout);
  server_.reset();
  return status;
}

absl::StatusOr<int> Cluster::SignalWorkerAndWait(const std::string& id,
                                                 int signal,
                                                 absl::Duration timeout) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return absl::NotFoundError("no such worker");
  it->second->Kill(signal);
  absl::StatusOr<int> status = it->second->Wait(timeout);
  workers_.erase(it);
  return status;
}

}  // namespace tlserve::testing
