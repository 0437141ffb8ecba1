// TorchGuard against real LibTorch failures: every exception becomes a
// status whose code says whose fault it is, and memory exhaustion is told
// apart from bugs.

#include "worker/torch_status.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <new>
#include <stdexcept>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve::worker {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(TorchGuardTest, AHostAllocationBeyondMemoryIsResourceExhausted) {
  // 256 TiB: beyond any memory and the 128 TiB of user address space, so
  // the CPU allocator refuses under any overcommit setting.
  const absl::Status status = TorchGuard("making a huge tensor", [] {
    at::Tensor t = at::empty({int64_t{1} << 48}, at::kByte);
    return absl::OkStatus();
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(status.message(), HasSubstr("making a huge tensor: out of memory"));
}

TEST(TorchGuardTest, TorchErrorsKeepTheGivenCodeWithoutTheBacktrace) {
  const absl::Status status = TorchGuard(
      "multiplying",
      [] {
        at::matmul(at::ones({2, 3}), at::ones({4, 5}));
        return absl::OkStatus();
      },
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("multiplying: "));
  EXPECT_THAT(status.message(), HasSubstr("cannot be multiplied"));
  EXPECT_THAT(status.message(), Not(HasSubstr("frame #")));
  EXPECT_EQ(TorchGuard("again", [] {
              at::matmul(at::ones({2, 3}), at::ones({4, 5}));
              return absl::OkStatus();
            }).code(),
            absl::StatusCode::kInternal);
}

TEST(TorchGuardTest, OutOfMemoryErrorsAndBadAllocAreResourceExhausted) {
  const absl::Status cuda = TorchGuard("a CUDA step", []() -> absl::Status {
    throw c10::OutOfMemoryError(
        c10::SourceLocation{__func__, __FILE__, __LINE__},
        "CUDA out of memory. Tried to allocate 2.00 GiB");
  });
  EXPECT_EQ(cuda.code(), absl::StatusCode::kResourceExhausted) << cuda;
  EXPECT_THAT(cuda.message(),
              HasSubstr("a CUDA step: out of memory: CUDA out of memory"));
  const absl::Status host = TorchGuard("a copy", []() -> absl::Status {
    throw std::bad_alloc();
  });
  EXPECT_EQ(host.code(), absl::StatusCode::kResourceExhausted) << host;
}

TEST(TorchGuardTest, OtherExceptionsAndValuesPassThrough) {
  const absl::Status status = TorchGuard("parsing", []() -> absl::Status {
    throw std::runtime_error("bad token");
  });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(status.message(), "parsing: bad token");
  absl::StatusOr<int64_t> numel = TorchGuardOr<int64_t>(
      "counting", []() -> absl::StatusOr<int64_t> {
        return at::ones({3, 4}).numel();
      });
  ASSERT_TRUE(numel.ok()) << numel.status();
  EXPECT_EQ(*numel, 12);
  EXPECT_EQ(TorchGuard("failing", [] { return absl::NotFoundError("x"); })
                .code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace tlserve::worker
