#ifndef TLSERVE_COMMON_FILE_UTIL_H_
#define TLSERVE_COMMON_FILE_UTIL_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tlserve {

// NOT_FOUND when the file is missing; the errno text otherwise.
absl::StatusOr<std::string> ReadFile(const std::string& path);
// Writes to a temp file beside `path`, fsyncs it, renames it over `path`
// and fsyncs the folder: readers see the old or the new file, never a part.
absl::Status WriteFileAtomic(const std::string& path, std::string_view data);
// Like `mkdir -p`.
absl::Status MakeDirs(const std::string& path);
// fsync of a folder, so a rename inside it survives a crash.
absl::Status SyncDir(const std::string& path);
absl::StatusOr<int64_t> FileSize(const std::string& path);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_FILE_UTIL_H_
