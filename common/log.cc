#include "common/log.h"

#include <errno.h>
#include <unistd.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"

namespace tlserve {
namespace {

struct LogConfig {
  absl::Mutex mu;
  std::string component ABSL_GUARDED_BY(mu) = "tlserve";
  LogFormat format ABSL_GUARDED_BY(mu) = LogFormat::kText;
};

LogConfig& Config() {
  static auto* config = new LogConfig;  // never destroyed: logs may come late
  return *config;
}

// Serialises writes, so a record larger than PIPE_BUF still comes out whole.
absl::Mutex& WriteMutex() {
  static auto* mu = new absl::Mutex;
  return *mu;
}

// Length of the valid UTF-8 sequence at the start of `s`, or 0 if there is
// none (a stray continuation byte, a truncated or overlong sequence, a
// surrogate, or a code point above U+10FFFF).
size_t Utf8SequenceLength(absl::string_view s) {
  const auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char c = b(0);
  size_t n;
  unsigned int lo = 0x80, hi = 0xBF;  // bounds of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() < n || b(1) < lo || b(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if ((b(i) & 0xC0) != 0x80) return 0;
  }
  return n;
}

// logfmt's rule: bare when it cannot be misread, else a quoted string.
void AppendTextValue(std::string* out, absl::string_view value) {
  bool bare = !value.empty();
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= ' ' || c == '"' || c == '=' || c == '\\' || u == 0x7F) {
      bare = false;
      break;
    }
  }
  if (bare) {
    out->append(value.data(), value.size());
  } else {
    out->append(JsonQuote(value));
  }
}

void WriteAll(absl::string_view line) {
  absl::MutexLock lock(&WriteMutex());
  while (!line.empty()) {
    const ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // nowhere left to report it
    line.remove_prefix(static_cast<size_t>(n));
  }
}

}  // namespace

absl::string_view LogSeverityName(LogSeverity severity) {
  switch (severity) {
    case LogSeverity::kInfo:
      return "INFO";
    case LogSeverity::kWarning:
      return "WARNING";
    case LogSeverity::kError:
      return "ERROR";
  }
  return "INFO";
}

bool AbslParseFlag(absl::string_view text, LogFormat* format, std::string* error) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "text") {
    *format = LogFormat::kText;
    return true;
  }
  if (lower == "json") {
    *format = LogFormat::kJson;
    return true;
  }
  *error = "must be text or json";
  return false;
}

std::string AbslUnparseFlag(LogFormat format) {
  return format == LogFormat::kJson ? "json" : "text";
}

std::string JsonQuote(absl::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  while (!text.empty()) {
    const char c = text[0];
    const size_t n = Utf8SequenceLength(text);
    if (n == 0) {
      out.append("\\ufffd");
      text.remove_prefix(1);
      continue;
    }
    if (n > 1) {
      out.append(text.data(), n);
      text.remove_prefix(n);
      continue;
    }
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      case '\b':
        out.append("\\b");
        break;
      case '\f':
        out.append("\\f");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F) {
          // DEL is legal JSON but garbles terminals reading the text form.
          absl::StrAppendFormat(&out, "\\u%04x", static_cast<unsigned char>(c));
        } else {
          out.push_back(c);
        }
    }
    text.remove_prefix(1);
  }
  out.push_back('"');
  return out;
}

std::string FormatLogRecord(LogFormat format, absl::Time time,
                            LogSeverity severity, absl::string_view component,
                            absl::string_view message,
                            absl::Span<const LogField> fields) {
  const std::string ts =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
  std::string out;
  if (format == LogFormat::kJson) {
    absl::StrAppend(&out, "{\"ts\":\"", ts, "\",\"level\":\"",
                    LogSeverityName(severity), "\",\"component\":",
                    JsonQuote(component), ",\"msg\":", JsonQuote(message));
    for (const LogField& f : fields) {
      // The record's own keys win: a field cannot forge ts or level.
      if (f.key == "ts" || f.key == "level" || f.key == "component" || f.key == "msg") {
        continue;
      }
      absl::StrAppend(&out, ",", JsonQuote(f.key), ":",
                      f.quoted ? JsonQuote(f.value) : f.value);
    }
    out.append("}\n");
    return out;
  }
  absl::StrAppend(&out, ts, " ", LogSeverityName(severity), " ", component, ": ");
  // A message with a newline would otherwise start a line of its own.
  for (char c : message) {
    if (c == '\n') {
      out.append("\\n");
    } else if (c == '\r') {
      out.append("\\r");
    } else {
      out.push_back(c);
    }
  }
  for (const LogField& f : fields) {
    absl::StrAppend(&out, " ", f.key, "=");
    AppendTextValue(&out, f.value);
  }
  out.push_back('\n');
  return out;
}

void ConfigureLogging(absl::string_view component, LogFormat format) {
  LogConfig& config = Config();
  absl::MutexLock lock(&config.mu);
  config.component = std::string(component);
  config.format = format;
}

LogFormat CurrentLogFormat() {
  LogConfig& config = Config();
  absl::MutexLock lock(&config.mu);
  return config.format;
}

void Log(LogSeverity severity, absl::string_view message,
         std::initializer_list<LogField> fields) {
  const absl::Time now = absl::Now();
  std::string line;
  {
    LogConfig& config = Config();
    absl::ReaderMutexLock lock(&config.mu);
    line = FormatLogRecord(config.format, now, severity, config.component,
                           message, absl::MakeConstSpan(fields.begin(), fields.size()));
  }
  WriteAll(line);
}

}  // namespace tlserve
