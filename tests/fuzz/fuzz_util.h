#ifndef TLSERVE_TESTS_FUZZ_FUZZ_UTIL_H_
#define TLSERVE_TESTS_FUZZ_FUZZ_UTIL_H_

// Helpers shared by the fuzz targets.

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace tlserve::fuzz {

// Fails the run (libFuzzer saves the input) when a property the API
// promises does not hold; a crash is the only signal libFuzzer reads.
inline void Require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "fuzz property violated: %s\n", what);
  std::abort();
}

// The input as a file, for APIs that take a path: a memfd, so no disk
// writes, and /proc/self/fd/N opens it like any file.
class MemFile {
 public:
  explicit MemFile(std::string_view bytes) {
    fd_ = memfd_create("fuzz-input", MFD_CLOEXEC);
    Require(fd_ >= 0, "memfd_create");
    size_t done = 0;
    while (done < bytes.size()) {
      ssize_t n = write(fd_, bytes.data() + done, bytes.size() - done);
      Require(n > 0, "write to memfd");
      done += static_cast<size_t>(n);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

}  // namespace tlserve::fuzz

#endif  // TLSERVE_TESTS_FUZZ_FUZZ_UTIL_H_
