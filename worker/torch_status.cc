#include "worker/torch_status.h"

#include <c10/util/Exception.h>

#include <exception>
#include <new>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tlserve::worker {
namespace {

// Torch messages can carry long backtraces or TorchScript call stacks; the
// first KiB says what went wrong and keeps job errors readable.
constexpr size_t kMaxMessageBytes = 1024;

std::string Trim(absl::string_view text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) {
    text.remove_suffix(1);
  }
  while (!text.empty() && (text.front() == '\n' || text.front() == ' ')) {
    text.remove_prefix(1);
  }
  if (text.size() > kMaxMessageBytes) {
    return absl::StrCat(text.substr(0, kMaxMessageBytes), "...");
  }
  return std::string(text);
}

}  // namespace

absl::Status TorchGuard(absl::string_view what,
                        const std::function<absl::Status()>& fn,
                        absl::StatusCode code) {
  try {
    return fn();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": out of memory: ", Trim(e.what_without_backtrace())));
  } catch (const c10::Error& e) {
    const std::string text = Trim(e.what_without_backtrace());
    // LibTorch's CPU allocator reports a failed allocation as a plain
    // c10::Error ("DefaultCPUAllocator: can't allocate memory: ..." in
    // 1.13, "...: not enough memory: ..." in 2.x): the host ran out; not
    // a bug.
    if (absl::StrContains(text, "DefaultCPUAllocator: can't allocate memory") ||
        absl::StrContains(text, "DefaultCPUAllocator: not enough memory")) {
      return absl::ResourceExhaustedError(
          absl::StrCat(what, ": out of memory: ", text));
    }
    return absl::Status(code, absl::StrCat(what, ": ", text));
  } catch (const std::bad_alloc& e) {
    return absl::ResourceExhaustedError(
        absl::StrCat(what, ": out of memory (", e.what(), ")"));
  } catch (const std::exception& e) {
    return absl::Status(code, absl::StrCat(what, ": ", Trim(e.what())));
  } catch (...) {
    return absl::Status(code, absl::StrCat(what, ": unknown exception"));
  }
}

absl::Status Annotate(const absl::Status& status, absl::string_view what) {
  if (status.ok()) return status;
  return absl::Status(status.code(),
                      absl::StrCat(what, ": ", status.message()));
}

}  // namespace tlserve::worker
