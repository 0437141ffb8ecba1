#include "common/config.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/internal/parse.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, config, "",
          "config file: one `name = value` per line, '#' starts a comment "
          "line; its values yield to TLSERVE_<NAME> variables and to the "
          "command line (empty: $TLSERVE_CONFIG if set, else no file)");
ABSL_FLAG(tlserve::LogFormat, log_format, tlserve::LogFormat::kText,
          "log lines on stderr: text (for people) or json (one object per "
          "line with ts, level, component, msg and fields, for a log "
          "collector)");

namespace tlserve {
namespace {

constexpr absl::string_view kConfigFlag = "config";

FlagSources WithDefaults(FlagSources s) {
  if (!s.env) {
    s.env = [](const std::string& name) -> std::optional<std::string> {
      const char* v = std::getenv(name.c_str());
      if (v == nullptr) return std::nullopt;
      return std::string(v);
    };
  }
  if (!s.own) {
    s.own = [](const absl::CommandLineFlag& flag) {
      return !absl::StrContains(flag.Filename(), "absl/");
    };
  }
  if (!s.on_command_line) {
    // Abseil keeps the record in an internal header only; it is the one
    // way to tell "--port=-1" from an untouched default.
    s.on_command_line = [](absl::string_view name) {
      return absl::flags_internal::WasPresentOnCommandLine(name);
    };
  }
  return s;
}

std::string EnvName(const FlagSources& s, absl::string_view flag) {
  return absl::StrCat(s.env_prefix, absl::AsciiStrToUpper(flag));
}

// Non-empty value of a variable, or nothing.
std::optional<std::string> EnvValue(const FlagSources& s, const std::string& name) {
  std::optional<std::string> v = s.env(name);
  if (v.has_value() && v->empty()) return std::nullopt;
  return v;
}

absl::Status ApplyAll(const FlagSources& s) {
  std::string path = absl::GetFlag(FLAGS_config);
  if (!s.on_command_line(kConfigFlag)) {
    if (auto v = EnvValue(s, EnvName(s, kConfigFlag))) path = *v;
  }
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) {
      return absl::NotFoundError(
          absl::StrCat("cannot read config file ", path,
                       " (named by --config or $", EnvName(s, kConfigFlag), ")"));
    }
    std::stringstream text;
    text << in.rdbuf();
    RETURN_IF_ERROR(ApplyConfigText(text.str(), path, s));
  }
  return ApplyEnvironment(s);
}

}  // namespace

bool InOwnDir(absl::string_view filename, const std::vector<std::string>& dirs) {
  for (const std::string& dir : dirs) {
    if (absl::StartsWith(filename, absl::StrCat(dir, "/")) ||
        absl::StrContains(filename, absl::StrCat("/", dir, "/"))) {
      return true;
    }
  }
  return false;
}

absl::Status ApplyConfigText(absl::string_view text, absl::string_view source,
                             const FlagSources& sources) {
  const FlagSources s = WithDefaults(sources);
  std::map<std::string, int> seen;  // flag name -> line that set it
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    const auto where = [&] { return absl::StrCat("config file ", source, " line ", line_no, ": "); };
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    const size_t eq = line.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(where(), "expected `name = value`, got '", line, "'"));
    }
    const std::string name(absl::StripAsciiWhitespace(line.substr(0, eq)));
    absl::string_view value = absl::StripAsciiWhitespace(line.substr(eq + 1));
    // Quotes keep spaces at the ends, or say "empty" outright.
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr || !s.own(*flag) || name == kConfigFlag) {
      return absl::InvalidArgumentError(absl::StrCat(
          where(), "unknown flag '", name, "' (--help lists the flags)"));
    }
    if (auto [it, fresh] = seen.emplace(name, line_no); !fresh) {
      return absl::InvalidArgumentError(absl::StrCat(
          where(), "'", name, "' is already set on line ", it->second));
    }
    if (s.on_command_line(name)) continue;  // the command line wins
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat(where(), error));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyEnvironment(const FlagSources& sources) {
  const FlagSources s = WithDefaults(sources);
  // By name, so the first error is the same on every run.
  std::map<std::string, absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (name != kConfigFlag && s.own(*flag)) flags.emplace(std::string(name), flag);
  }
  for (const auto& [name, flag] : flags) {
    const std::string var = EnvName(s, name);
    std::optional<std::string> value = EnvValue(s, var);
    if (!value.has_value() || s.on_command_line(name)) continue;
    std::string error;
    if (!flag->ParseFrom(*value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("environment variable ", var, ": ", error));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyFlagSources(const FlagSources& sources) {
  return ApplyAll(WithDefaults(sources));
}

std::vector<char*> InitFlags(int argc, char** argv, const BinaryInfo& info) {
  absl::SetProgramUsageMessage(absl::StrCat(
      info.usage,
      "\n\nEach flag takes its value from, lowest to highest precedence: its "
      "default;\na config file (--config=FILE or $TLSERVE_CONFIG: `name = "
      "value` lines, '#' comments);\nan environment variable TLSERVE_<NAME> "
      "(TLSERVE_LOG_FORMAT=json sets --log_format);\nthe command line. Bad "
      "values in the file or the environment stop the start\nwith status 2 "
      "and a message naming the line or the variable."));
  const std::vector<std::string> dirs = info.own_dirs;
  const auto own_file = [dirs](absl::string_view file) { return InOwnDir(file, dirs); };
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = own_file;
  usage.contains_helpshort_flags = own_file;
  usage.contains_helppackage_flags = own_file;
  // Show "server/main.cc", not the build machine's path.
  usage.normalize_filename = [dirs](absl::string_view file) {
    for (const std::string& dir : dirs) {
      const std::string mid = absl::StrCat("/", dir, "/");
      if (size_t at = file.rfind(mid); at != absl::string_view::npos) {
        return std::string(file.substr(at + 1));
      }
    }
    return std::string(file);
  };
  absl::SetFlagsUsageConfig(usage);

  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  FlagSources sources;
  sources.own = [dirs](const absl::CommandLineFlag& flag) {
    return InOwnDir(flag.Filename(), dirs);
  };
  if (absl::Status st = ApplyFlagSources(sources); !st.ok()) {
    std::fprintf(stderr, "%s: %s\n", info.name.c_str(), std::string(st.message()).c_str());
    std::exit(2);
  }
  ConfigureLogging(info.name, absl::GetFlag(FLAGS_log_format));
  return args;
}

}  // namespace tlserve
