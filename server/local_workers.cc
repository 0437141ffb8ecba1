#include "server/local_workers.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace tlserve {

LocalWorkers::LocalWorkers(Options options) : options_(std::move(options)) {}

void LocalWorkers::Start() {
  {
    absl::MutexLock lock(&mu_);
    pids_.assign(options_.count, -1);
    for (int i = 0; i < options_.count; ++i) pids_[i] = Spawn(i);
  }
  thread_ = std::thread([this] { Supervise(); });
}

pid_t LocalWorkers::Spawn(int index) {
  const std::string id = absl::StrCat("local-", index);
  std::vector<std::string> args = {
      options_.binary, absl::StrCat("--server=", options_.server_address),
      absl::StrCat("--worker_id=", id),
      absl::StrCat("--cache_dir=", options_.cache_root, "/", id),
      absl::StrCat("--drain_seconds=",
                   absl::ToDoubleSeconds(options_.drain))};
  if (options_.threads_per_worker > 0) {
    args.push_back(absl::StrCat("--threads=", options_.threads_per_worker));
  }
  // Workers log like the server, whichever source set its format.
  args.push_back(absl::StrCat("--log_format=", AbslUnparseFlag(CurrentLogFormat())));
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The workers inherit the environment (TLSERVE_DEVICE reaches them) but
  // not the server's config file, nor its /metrics address, which they share
  // the flag names of but must not share the port of.
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const absl::string_view var(*e);
    if (absl::StartsWith(var, "TLSERVE_CONFIG=") ||
        absl::StartsWith(var, "TLSERVE_METRICS_LISTEN=") ||
        absl::StartsWith(var, "TLSERVE_METRICS_PORT_FILE=")) {
      continue;
    }
    envp.push_back(*e);
  }
  envp.push_back(nullptr);
  if (access(argv[0], X_OK) != 0) {
    Log(LogSeverity::kError, "cannot run the worker binary (--worker_binary)",
        {{"path", options_.binary}, {"error", std::strerror(errno)}});
  }
  pid_t pid = fork();
  if (pid == 0) {
    // The child dies with the server, even on SIGKILL of the server.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);  // logged by Supervise as exit code 127
  }
  if (pid < 0) {
    Log(LogSeverity::kError, "fork failed", {{"error", std::strerror(errno)}});
  } else {
    Log(LogSeverity::kInfo, "started worker", {{"worker_id", id}, {"pid", pid}});
  }
  return pid;
}

void LocalWorkers::Supervise() {
  std::vector<absl::Duration> backoff(options_.count, absl::Milliseconds(500));
  std::vector<absl::Time> restart_at(options_.count, absl::InfinitePast());
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(200));
      if (stopping_) return;
      for (int i = 0; i < options_.count; ++i) {
        if (pids_[i] > 0) {
          int status = 0;
          if (waitpid(pids_[i], &status, WNOHANG) == pids_[i]) {
            if (WIFSIGNALED(status)) {
              Log(LogSeverity::kWarning, "worker exited; restarting",
                  {{"worker_id", absl::StrCat("local-", i)}, {"pid", pids_[i]},
                   {"signal", WTERMSIG(status)}});
            } else {
              // 127: execve failed (a wrong --worker_binary).
              Log(LogSeverity::kWarning, "worker exited; restarting",
                  {{"worker_id", absl::StrCat("local-", i)}, {"pid", pids_[i]},
                   {"exit_code", WEXITSTATUS(status)}});
            }
            pids_[i] = -1;
            restart_at[i] = absl::Now() + backoff[i];
            backoff[i] = std::min(backoff[i] * 2, absl::Seconds(10));
          }
        } else if (absl::Now() >= restart_at[i]) {
          pids_[i] = Spawn(i);
        }
      }
    }
  }
}

std::vector<pid_t> LocalWorkers::Pids() {
  absl::MutexLock lock(&mu_);
  return pids_;
}

LocalWorkers::~LocalWorkers() {
  std::vector<pid_t> pids;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    pids = pids_;
  }
  if (thread_.joinable()) thread_.join();
  for (pid_t pid : pids) {
    if (pid > 0) kill(pid, SIGTERM);
  }
  const absl::Time give_up = absl::Now() + options_.stop_grace;
  for (pid_t pid : pids) {
    if (pid <= 0) continue;
    while (waitpid(pid, nullptr, WNOHANG) == 0) {
      if (absl::Now() > give_up) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        break;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
  }
}

}  // namespace tlserve
