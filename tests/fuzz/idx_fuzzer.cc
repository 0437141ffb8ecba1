// ParseIdx on arbitrary bytes: raw IDX, or gzip (the 1f 8b magic) with the
// gunzip size limit.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/dataset_loader.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The server's own limits (4 GiB after gunzip): inputs of a few KiB can
  // only reach -rss_limit_mb (a failure) if the parser trusts a size field
  // instead of the data, as it once trusted the gzip trailer.
  const tlserve::DatasetLimits limits;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<tlserve::IdxArray> array = tlserve::ParseIdx(bytes, limits);
  if (!array.ok()) {
    tlserve::fuzz::Require(array.status().code() ==
                               absl::StatusCode::kInvalidArgument,
                           "ParseIdx fails with INVALID_ARGUMENT");
    return 0;
  }
  // Success promises data that matches the header's dims.
  tlserve::fuzz::Require(!array->dims.empty(), "dims not empty");
  uint64_t elements = 1;
  for (int32_t d : array->dims) {
    tlserve::fuzz::Require(d >= 0, "dim >= 0");
    elements *= static_cast<uint64_t>(d);
  }
  tlserve::fuzz::Require(elements == array->data.size(),
                         "data size is the product of dims");
  tlserve::fuzz::Require(
      static_cast<int64_t>(array->data.size()) <= limits.max_idx_bytes,
      "data within max_idx_bytes");
  return 0;
}
