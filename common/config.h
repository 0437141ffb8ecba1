#ifndef TLSERVE_COMMON_CONFIG_H_
#define TLSERVE_COMMON_CONFIG_H_

// Where a binary's flags get their values, lowest to highest precedence:
//
//   1. the built-in default (ABSL_FLAG's third argument)
//   2. a config file: --config=FILE, or $TLSERVE_CONFIG; one `name = value`
//      per line, blank lines and lines starting with '#' ignored
//   3. an environment variable TLSERVE_<NAME>: TLSERVE_DATA_DIR for
//      --data_dir (an empty variable counts as unset)
//   4. the command line
//
// Everything goes through Abseil's flag reflection, so every flag the binary
// defines gets the file and the environment without code of its own. An
// unknown name or a value the flag cannot parse is an error naming the file
// and line or the variable.
//
// Also defines --config and --log_format (text or json; see common/log.h).

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/declare.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "common/log.h"

ABSL_DECLARE_FLAG(std::string, config);
ABSL_DECLARE_FLAG(tlserve::LogFormat, log_format);

namespace tlserve {

// What one binary says about itself; InitFlags does the rest.
struct BinaryInfo {
  // "tlserve": the first word of error lines and the logs' component.
  std::string name;
  // What the binary is, for --help (the precedence text is appended).
  std::string usage;
  // Source folders ("server", "common") whose flags are the binary's own:
  // the ones --help lists and the file and environment may set.
  std::vector<std::string> own_dirs;
};

// Start-up for a main(): sets the --help text, parses argv, applies the
// config file and the environment, configures logging. On a bad file line or
// variable it prints one line to stderr and exits with status 2 (Abseil
// itself rejects bad command-line flags, with status 1). Returns the
// positional arguments, argv[0] first.
std::vector<char*> InitFlags(int argc, char** argv, const BinaryInfo& info);

// The pieces InitFlags uses, open to tests with their own flags.
struct FlagSources {
  std::string env_prefix = "TLSERVE_";
  // Reads an environment variable; default: getenv.
  std::function<std::optional<std::string>(const std::string& name)> env;
  // Flags the file and the environment may set; default: all but Abseil's
  // own (--flagfile, --help, ...). --config itself is never set by a file.
  std::function<bool(const absl::CommandLineFlag& flag)> own;
  // Whether the command line set a flag (which then keeps its value);
  // default: what the last absl::ParseCommandLine saw.
  std::function<bool(absl::string_view name)> on_command_line;
};

// Applies the config file named by --config (when given on the command line)
// or by $<prefix>CONFIG or by --config's current value, then the environment.
absl::Status ApplyFlagSources(const FlagSources& sources);

// Applies `name = value` lines; `source` names the file in errors.
absl::Status ApplyConfigText(absl::string_view text, absl::string_view source,
                             const FlagSources& sources);

// Applies TLSERVE_<NAME> for every flag the sources call own.
absl::Status ApplyEnvironment(const FlagSources& sources);

// True if `filename` (a flag's definition file) lies in one of `dirs`
// ("server" matches "server/main.cc" and "/src/tlserve/server/main.cc").
bool InOwnDir(absl::string_view filename, const std::vector<std::string>& dirs);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_CONFIG_H_
