#ifndef TLSERVE_COMMON_LOG_H_
#define TLSERVE_COMMON_LOG_H_

// Process logs: one record per line on stderr, as text for people or as
// JSON for a log collector (Kubernetes keeps a container's stderr).
//
//   text: 2026-11-30T18:00:00.123Z INFO tlserve: job queued job_id=j-1 attempt=1
//   json: {"ts":"2026-11-30T18:00:00.123Z","level":"INFO","component":"tlserve",
//          "msg":"job queued","job_id":"j-1","attempt":1}
//
// Log() is thread-safe: each record is formatted first and written with
// one write(2), so records from different threads never interleave.
// Field names are fixed strings in our code; values are anything, and are
// escaped (text: quoted when they hold spaces, quotes or '='; json: RFC
// 8259 escapes, invalid UTF-8 replaced by U+FFFD).

#include <concepts>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace tlserve {

enum class LogSeverity { kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

// "INFO", "WARNING", "ERROR".
absl::string_view LogSeverityName(LogSeverity severity);

// For ABSL_FLAG(tlserve::LogFormat, ...): "text" or "json".
bool AbslParseFlag(absl::string_view text, LogFormat* format, std::string* error);
std::string AbslUnparseFlag(LogFormat format);

// One key=value of a record. Numbers and booleans stay unquoted in JSON.
struct LogField {
  LogField(absl::string_view k, absl::string_view v) : key(k), value(v) {}
  LogField(absl::string_view k, const std::string& v) : key(k), value(v) {}
  LogField(absl::string_view k, const char* v) : key(k), value(v == nullptr ? "" : v) {}
  LogField(absl::string_view k, bool v) : key(k), value(v ? "true" : "false"), quoted(false) {}
  template <typename T>
    requires(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>)
  LogField(absl::string_view k, T v) : key(k), value(absl::StrCat(v)), quoted(false) {
    // NaN and infinities are not JSON numbers.
    if constexpr (std::is_floating_point_v<T>) quoted = !(v - v == 0);
  }

  std::string key;
  std::string value;
  bool quoted = true;
};

// Sets what Log() writes from now on. Call once at start-up, before other
// threads log; defaults: component "tlserve", text.
void ConfigureLogging(absl::string_view component, LogFormat format);
LogFormat CurrentLogFormat();

// Writes one record to stderr.
void Log(LogSeverity severity, absl::string_view message,
         std::initializer_list<LogField> fields = {});

// The line Log() writes (with its '\n'), for a given time: what tests check.
std::string FormatLogRecord(LogFormat format, absl::Time time,
                            LogSeverity severity, absl::string_view component,
                            absl::string_view message,
                            absl::Span<const LogField> fields);

// `text` as a JSON string literal, quotes included.
std::string JsonQuote(absl::string_view text);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_LOG_H_
