#ifndef TLSERVE_WORKER_TORCH_STATUS_H_
#define TLSERVE_WORKER_TORCH_STATUS_H_

// The one place that turns LibTorch exceptions into absl::Status. Every call
// into torch in the worker runs inside TorchGuard, so no exception crosses
// RunTrainingJob or InferenceRunner (LibTorch reports errors by throwing
// c10::Error; torch::jit throws ErrorReport; allocators throw bad_alloc).
//
// No torch headers here: the try/catch lives in torch_status.cc.

#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tlserve::worker {

// Runs fn and returns its status. An exception thrown by fn becomes
//   c10::OutOfMemoryError, std::bad_alloc,
//   the CPU allocator's failed allocation   -> RESOURCE_EXHAUSTED
//   c10::Error and other std::exception    -> `code` (INTERNAL by default)
// with the message "<what>: <exception text without backtrace>".
absl::Status TorchGuard(absl::string_view what,
                        const std::function<absl::Status()>& fn,
                        absl::StatusCode code = absl::StatusCode::kInternal);

// TorchGuard for functions that return a value.
template <typename T>
absl::StatusOr<T> TorchGuardOr(
    absl::string_view what, const std::function<absl::StatusOr<T>()>& fn,
    absl::StatusCode code = absl::StatusCode::kInternal) {
  absl::StatusOr<T> result = absl::UnknownError("not run");
  absl::Status status = TorchGuard(
      what,
      [&]() -> absl::Status {
        result = fn();
        return result.status();
      },
      code);
  if (!status.ok()) return status;
  return result;
}

// Prefixes a status message with context, keeping its code.
absl::Status Annotate(const absl::Status& status, absl::string_view what);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_TORCH_STATUS_H_
