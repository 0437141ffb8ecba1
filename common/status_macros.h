#ifndef TLSERVE_COMMON_STATUS_MACROS_H_
#define TLSERVE_COMMON_STATUS_MACROS_H_

// Debian's Abseil (20220623) has no status macros; these are ours.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TLSERVE_CONCAT_INNER_(a, b) a##b
#define TLSERVE_CONCAT_(a, b) TLSERVE_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when it is not OK.
#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status tlserve_status_ = (expr);         \
    if (!tlserve_status_.ok()) return tlserve_status_; \
  } while (0)

// ASSIGN_OR_RETURN(auto x, MakeX()); declares or assigns x on success,
// returns the error otherwise.
#define ASSIGN_OR_RETURN(lhs, expr) \
  TLSERVE_ASSIGN_OR_RETURN_IMPL_(TLSERVE_CONCAT_(tlserve_sor_, __LINE__), lhs, expr)

#define TLSERVE_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();       \
  lhs = std::move(tmp).value()

#endif  // TLSERVE_COMMON_STATUS_MACROS_H_
