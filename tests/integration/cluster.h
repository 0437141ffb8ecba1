#ifndef TLSERVE_TESTS_INTEGRATION_CLUSTER_H_
#define TLSERVE_TESTS_INTEGRATION_CLUSTER_H_

// Real tlserve and tlworker processes on loopback for integration tests:
// started, killed and restarted by the test, always stopped at the end.

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"

namespace tlserve::testing {

// A child process; SIGKILLed and reaped when destroyed if still running.
class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      std::vector<std::string> argv, const std::string& log_path);
  ~ChildProcess();
  pid_t pid() const { return pid_; }
  void Kill(int signal);
  // Exit status (as waitpid gives it) or DEADLINE_EXCEEDED.
  absl::StatusOr<int> Wait(absl::Duration timeout);
  bool Running();

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
};

class Cluster {
 public:
  // Makes a fresh data dir under the test's temp dir.
  Cluster();
  ~Cluster();

  // Starts tlserve (on `port`, or a free one the first time) and waits
  // until it is healthy.
  absl::Status StartServer(std::vector<std::string> extra_flags = {});
  void KillServer(int signal);
  absl::Status StartWorker(const std::string& id, int threads = 1,
                           std::vector<std::string> extra_flags = {});
  void KillWorker(const std::string& id, int signal);
  // Sends `signal` and waits up to `timeout` for the process to exit: its
  // exit status as waitpid gives it, or DEADLINE_EXCEEDED (it is then
  // SIGKILLed). The process is forgotten either way.
  absl::StatusOr<int> SignalServerAndWait(int signal, absl::Duration timeout);
  absl::StatusOr<int> SignalWorkerAndWait(const std::string& id, int signal,
                                          absl::Duration timeout);

  // Options of client() (token, TLS) from the next StartServer on; the
  // target is filled in.
  void set_client_options(Client::Options options) {
    client_options_ = std::move(options);
  }
  Client& client() { return *client_; }
  // The running server's pid, or -1.
  pid_t server_pid() const { return server_ ? server_->pid() : -1; }
  const std::string& dir() const { return dir_; }
  std::string address() const;
  std::string ServerLog() const;

 private:
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<ChildProcess> server_;
  std::map<std::string, std::unique_ptr<ChildProcess>> workers_;
  std::unique_ptr<Client> client_;
  Client::Options client_options_;
  int server_starts_ = 0;
};

// Paths of the built binaries and of the source tree.
std::string ServerBinary();
std::string WorkerBinary();
std::string SourceDir();

}  // namespace tlserve::testing

#endif  // TLSERVE_TESTS_INTEGRATION_CLUSTER_H_
