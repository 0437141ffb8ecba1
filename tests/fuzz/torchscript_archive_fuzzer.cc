// CheckTorchScriptArchive (libarchive's zip reader) on arbitrary bytes.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/torchscript_archive.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const tlserve::fuzz::MemFile file(
      std::string_view(reinterpret_cast<const char*>(data), size));
  const absl::Status status = tlserve::CheckTorchScriptArchive(file.path());
  tlserve::fuzz::Require(
      status.ok() || status.code() == absl::StatusCode::kInvalidArgument,
      "CheckTorchScriptArchive fails with INVALID_ARGUMENT");
  return 0;
}
