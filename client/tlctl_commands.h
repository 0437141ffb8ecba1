#ifndef TLSERVE_CLIENT_TLCTL_COMMANDS_H_
#define TLSERVE_CLIENT_TLCTL_COMMANDS_H_

// The commands of `tlctl`, kept out of main so tests can drive the argv
// parser and the spec builders without a server.
//
//   tlctl [--server=host:port] [--json] <group> <verb> [args] [flags]
//
// absl::flags is process-global and knows nothing of subcommands, so each
// command declares its flags (FlagDef) and ParseArgs checks argv against
// them.

#include <cstdint>
#include <map>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tlserve/v1/common.pb.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::cli {

struct FlagDef {
  // Without the leading "--".
  std::string name;
  // false: a switch ("--json"); it may still be written "--json=false".
  bool takes_value = true;
  // May be given more than once ("--image a.png --image b.png").
  bool repeated = false;
};

// Flags and positional arguments of one command line. Values stay strings
// until a typed getter reads them, so the error can name the flag.
class Args {
 public:
  const std::vector<std::string>& positional() const { return positional_; }
  bool Has(std::string_view name) const;
  // The value given (the last one for a repeated flag), else `fallback`.
  std::string Get(std::string_view name, std::string fallback = "") const;
  // Every value given, in order.
  std::vector<std::string> GetAll(std::string_view name) const;
  // A switch: absent is false; "--x", "--x=true", "--x=1" are true.
  absl::StatusOr<bool> GetBool(std::string_view name) const;
  absl::StatusOr<int64_t> GetInt(std::string_view name, int64_t fallback) const;
  absl::StatusOr<double> GetDouble(std::string_view name,
                                   double fallback) const;
  // Comma-separated lists; an absent flag is an empty list.
  std::vector<std::string> GetStringList(std::string_view name) const;
  absl::StatusOr<std::vector<int64_t>> GetIntList(std::string_view name) const;
  absl::StatusOr<std::vector<double>> GetDoubleList(
      std::string_view name) const;

 private:
  friend absl::StatusOr<Args> ParseArgs(const std::vector<std::string>&,
                                        const std::vector<FlagDef>&);
  std::vector<std::string> positional_;
  std::map<std::string, std::vector<std::string>, std::less<>> values_;
};

// Accepts "--name=value", "--name value", switches, and "--" (everything
// after it is positional). Unknown flags, missing values and repeats of a
// non-repeated flag are INVALID_ARGUMENT naming the flag.
absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& argv,
                               const std::vector<FlagDef>& defs);

// Strict number parsing with the flag's name in the error.
absl::StatusOr<int64_t> ParseIntFlag(std::string_view flag,
                                     std::string_view text);
absl::StatusOr<double> ParseDoubleFlag(std::string_view flag,
                                       std::string_view text);

// Case-insensitive enum names as the CLI spells them.
absl::StatusOr<v1::JobState> ParseJobState(std::string_view text);

// `job create --task NAME=GROUP:L,L,.../GROUP:L,...` (MULTITASK): a task
// whose classes are the groups, in order, each taking the dataset labels
// listed. Every label from 0 to the largest one listed must be in exactly
// one group (the server checks that this covers the dataset's labels).
// INVALID_ARGUMENT naming --task otherwise.
absl::StatusOr<v1::TaskSpec> ParseTaskFlag(std::string_view text);

// The flags of `job create` (see JobCreateFlags()) applied on top of
// `spec`, which is empty or came from --spec-json. Only the flags given
// change the spec, so the server's defaults apply to the rest.
absl::Status ApplyJobSpecFlags(const Args& args, v1::JobSpec* spec);
const std::vector<FlagDef>& JobCreateFlags();
// --spec-json FILE (protobuf JSON of a JobSpec), then ApplyJobSpecFlags;
// FINE_TUNE when no kind was given at all.
absl::StatusOr<v1::JobSpec> JobSpecFromArgs(const Args& args);

// `backbone upload`: --spec-json FILE (an InputSpec) or --channels,
// --height, --width, --mean a,b,c, --std a,b,c.
absl::StatusOr<v1::InputSpec> InputSpecFromArgs(const Args& args);

// Left-aligned columns separated by two spaces, one header row.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

struct RunOptions {
  // Used when neither --server nor TLSERVE_SERVER is given.
  std::string default_server = "127.0.0.1:50051";
  // Used without --token_file ($TLSERVE_TOKEN) and --tls_ca_file
  // ($TLSERVE_TLS_CA_FILE).
  std::string default_token;
  std::string default_tls_ca_file;
  // Whether `out` is a terminal (live progress bars).
  bool out_is_tty = false;
  // The terminal's width in columns for side-by-side tables; 0: unknown
  // (they assume 100).
  int terminal_columns = 0;
};

// Runs one tlctl command line (argv without the program name). Errors are
// printed to `err` as "error: <code>: <message>". Returns the exit status:
// 0 success, 1 error (usage errors included), 2 a watched job (or a demo
// job) ended FAILED or CANCELLED.
int RunTlctl(const std::vector<std::string>& argv, const RunOptions& options,
             std::ostream& out, std::ostream& err);

}  // namespace tlserve::cli

#endif  // TLSERVE_CLIENT_TLCTL_COMMANDS_H_
