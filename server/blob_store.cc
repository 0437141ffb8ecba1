#include "server/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace tlserve {
namespace {

// errno as a status: ENOSPC and EDQUOT are RESOURCE_EXHAUSTED (free space,
// then retry), a missing file NOT_FOUND, the rest INTERNAL.
absl::Status ErrnoStatus(int err, absl::string_view what) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(message);
    case ENOENT:
      return absl::NotFoundError(message);
    default:
      return absl::InternalError(message);
  }
}

// Debian's Abseil has its own string_view (not std's): convert at the edge.
absl::string_view AsAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

std::string BlobDir(const std::string& root) { return root + "/sha256"; }
std::string TempDir(const std::string& root) { return root + "/tmp"; }

absl::Status CheckName(std::string_view sha256) {
  if (!IsSha256Hex(sha256)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "blob name '%s' is not a sha256 (64 lowercase hex digits)",
        absl::CHexEscape(AsAbsl(sha256.substr(0, 100)))));
  }
  return absl::OkStatus();
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

// --- Writer.

BlobStore::Writer::Writer(BlobStore* store, std::string temp_path, int fd,
                          int64_t max_bytes)
    : store_(store),
      temp_path_(std::move(temp_path)),
      fd_(fd),
      max_bytes_(max_bytes) {}

BlobStore::Writer::~Writer() {
  if (fd_ >= 0) ::close(fd_);
  // An abandoned upload leaves nothing behind; a crash before this runs
  // leaves a temp file that the next Open() removes.
  if (!committed_ && !temp_path_.empty()) ::unlink(temp_path_.c_str());
}

absl::Status BlobStore::Writer::Append(std::string_view data) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        "blob writer is closed: Commit was already called");
  }
  if (max_bytes_ > 0 &&
      size_ + static_cast<int64_t>(data.size()) > max_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("blob exceeds the limit of %d bytes", max_bytes_));
  }
  const char* p = data.data();
  size_t left = data.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("write '", temp_path_, "'"));
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  hasher_.Update(data);
  size_ += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::StatusOr<std::string> BlobStore::Writer::Commit(
    std::string_view expected_sha256) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError(
        "blob writer is closed: Commit was already called");
  }
  // The data must be on disk before the rename makes it visible; otherwise
  // a crash could leave a complete-looking name over a partial file.
  const int fd = std::exchange(fd_, -1);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoStatus(err, absl::StrCat("fsync '", temp_path_, "'"));
  }
  if (::close(fd) != 0) {
    return ErrnoStatus(errno, absl::StrCat("close '", temp_path_, "'"));
  }
  std::string hex = hasher_.FinalHex();
  // Clients may send the digest in upper case; the content decides.
  if (!expected_sha256.empty() &&
      absl::AsciiStrToLower(AsAbsl(expected_sha256)) != hex) {
    // Nothing is stored, not even until the writer is destroyed.
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
    return absl::InvalidArgumentError(absl::StrFormat(
        "sha256 mismatch: expected %s, got %s",
        absl::CHexEscape(AsAbsl(expected_sha256.substr(0, 100))), hex));
  }
  const std::string dir = BlobDir(store_->root());
  const std::string final_path = absl::StrCat(dir, "/", hex);
  {
    absl::MutexLock lock(&store_->mu_);
    if (::utimensat(AT_FDCWD, final_path.c_str(), nullptr, 0) == 0) {
      // Same content already stored: keep the existing file, now dated as
      // just written so that a collection running now spares it (the caller
      // is about to refer to it), and drop ours.
      ::unlink(temp_path_.c_str());
    } else if (errno != ENOENT) {
      return ErrnoStatus(errno, absl::StrCat("touch '", final_path, "'"));
    } else if (::rename(temp_path_.c_str(), final_path.c_str()) != 0) {
      return ErrnoStatus(errno, absl::StrCat("rename '", temp_path_, "' to '",
                                             final_path, "'"));
    }
  }
  committed_ = true;
  // The rename itself must survive a crash before the caller acknowledges.
  RETURN_IF_ERROR(SyncDir(dir));
  return hex;
}

// --- BlobStore.

absl::StatusOr<std::unique_ptr<BlobStore>> BlobStore::Open(std::string root) {
  if (root.empty()) {
    return absl::InvalidArgumentError("blob store root must not be empty");
  }
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  RETURN_IF_ERROR(MakeDirs(BlobDir(root)));
  RETURN_IF_ERROR(MakeDirs(TempDir(root)));
  // Temp files are uploads that never committed (the process died): no one
  // can resume them, so they only take space.
  std::error_code ec;
  std::vector<std::filesystem::path> stale;
  for (std::filesystem::directory_iterator it(TempDir(root), ec), end;
       !ec && it != end; it.increment(ec)) {
    stale.push_back(it->path());
  }
  if (ec) {
    return ErrnoStatus(ec.value(), absl::StrCat("list '", TempDir(root), "'"));
  }
  for (const auto& path : stale) {
    std::filesystem::remove_all(path, ec);
    if (ec) {
      return ErrnoStatus(ec.value(),
                         absl::StrCat("remove stale '", path.string(), "'"));
    }
  }
  return std::unique_ptr<BlobStore>(new BlobStore(std::move(root)));
}

absl::StatusOr<std::unique_ptr<BlobStore::Writer>> BlobStore::NewWriter(
    int64_t max_bytes) {
  std::string path = TempDir(root_) + "/upload-XXXXXX";
  int fd = ::mkostemp(path.data(), O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(
        errno, absl::StrCat("create a temp file in '", TempDir(root_), "'"));
  }
  return std::unique_ptr<Writer>(
      new Writer(this, std::move(path), fd, max_bytes));
}

absl::StatusOr<std::string> BlobStore::Put(std::string_view data) {
  ASSIGN_OR_RETURN(std::unique_ptr<Writer> writer, NewWriter());
  RETURN_IF_ERROR(writer->Append(data));
  return writer->Commit();
}

bool BlobStore::Has(std::string_view sha256) const {
  return IsSha256Hex(sha256) &&
         IsRegularFile(absl::StrCat(BlobDir(root_), "/", AsAbsl(sha256)));
}

absl::StatusOr<int64_t> BlobStore::TotalBytes() const {
  std::error_code ec;
  int64_t total = 0;
  for (std::filesystem::directory_iterator it(BlobDir(root_), ec), end;
       !ec && it != end; it.increment(ec)) {
    // A blob removed while we walk is simply not counted.
    std::error_code size_ec;
    const auto size = it->file_size(size_ec);
    if (!size_ec) total += static_cast<int64_t>(size);
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot list blobs in ", BlobDir(root_),
                                            ": ", ec.message()));
  }
  return total;
}

absl::StatusOr<std::string> BlobStore::PathOf(std::string_view sha256) const {
  // The name becomes part of a path: only a well-formed digest may, so
  // "../x" can never leave the store.
  RETURN_IF_ERROR(CheckName(sha256));
  std::string path = absl::StrCat(BlobDir(root_), "/", AsAbsl(sha256));
  if (!IsRegularFile(path)) {
    return absl::NotFoundError(
        absl::StrCat("blob '", AsAbsl(sha256), "' not found"));
  }
  return path;
}

absl::StatusOr<int64_t> BlobStore::SizeOf(std::string_view sha256) const {
  ASSIGN_OR_RETURN(std::string path, PathOf(sha256));
  return FileSize(path);
}

absl::Status BlobStore::Verify(std::string_view sha256) const {
  ASSIGN_OR_RETURN(std::string path, PathOf(sha256));
  ASSIGN_OR_RETURN(std::string actual, Sha256OfFile(path));
  if (actual != sha256) {
    return absl::DataLossError(absl::StrFormat(
        "blob '%s' is corrupt: its content hashes to %s; remove it and "
        "upload it again",
        AsAbsl(sha256), actual));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<BlobStore::BlobInfo>> BlobStore::List() const {
  std::vector<BlobInfo> blobs;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(BlobDir(root_), ec), end;
       !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!IsSha256Hex(name)) continue;
    struct stat st;
    // Removed while we walk: not listed.
    if (::stat(it->path().c_str(), &st) != 0) continue;
    blobs.push_back(BlobInfo{name, static_cast<int64_t>(st.st_size),
                             absl::TimeFromTimespec(st.st_mtim)});
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot list blobs in ",
                                            BlobDir(root_), ": ", ec.message()));
  }
  return blobs;
}

absl::StatusOr<bool> BlobStore::RemoveIfOlderThan(std::string_view sha256,
                                                  absl::Time cutoff) {
  RETURN_IF_ERROR(CheckName(sha256));
  const std::string path = absl::StrCat(BlobDir(root_), "/", AsAbsl(sha256));
  absl::MutexLock lock(&mu_);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return false;
    return ErrnoStatus(errno, absl::StrCat("stat '", path, "'"));
  }
  if (absl::TimeFromTimespec(st.st_mtim) >= cutoff) return false;
  if (::unlink(path.c_str()) != 0) {
    return ErrnoStatus(errno, absl::StrCat("remove '", path, "'"));
  }
  return true;
}

absl::Status BlobStore::Remove(std::string_view sha256) {
  ASSIGN_OR_RETURN(std::string path, PathOf(sha256));
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) {
      return absl::NotFoundError(
          absl::StrCat("blob '", AsAbsl(sha256), "' not found"));
    }
    return ErrnoStatus(errno, absl::StrCat("remove '", path, "'"));
  }
  return SyncDir(BlobDir(root_));
}

}  // namespace tlserve
