// The GPU kernel's arithmetic (worker/gpu/fused_preprocess.h), run on the
// host, against the CPU path it must match value for value: CropResize
// then ToFloat (common/image_transforms.h).

#include "worker/gpu/fused_preprocess.h"

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/image_transforms.h"
#include "gtest/gtest.h"
#ifdef TLSERVE_HAVE_CUDA_KERNELS
#include "worker/gpu/fused_preprocess_cuda.h"
#endif

namespace tlserve::worker::gpu {
namespace {

struct Case {
  int channels;
  int src_height;
  int src_width;
  bool src_planar;
  CropBox box;
  int out_height;
  int out_width;
  bool flip;
  bool normalise;
  bool channels_last;
};

std::string Describe(const Case& c) {
  return absl::StrCat(c.channels, "x", c.src_height, "x", c.src_width,
                      c.src_planar ? " planar" : " interleaved", " box ",
                      c.box.top, ",", c.box.left, " ", c.box.height, "x",
                      c.box.width, " -> ", c.out_height, "x", c.out_width,
                      c.flip ? " flipped" : "", c.normalise ? " normalised" : "",
                      c.channels_last ? " channels_last" : "");
}

// The CPU path's floats for `c`, [C, H, W] or [H, W, C].
std::vector<float> CpuPath(const std::vector<uint8_t>& src, const Case& c,
                           const float* mean, const float* std) {
  ImageView view{src.data(), c.channels, c.src_height, c.src_width,
                 c.src_planar};
  const int64_t plane = static_cast<int64_t>(c.out_height) * c.out_width;
  std::vector<uint8_t> resized(c.channels * plane);
  CropResize(view, c.box, c.out_height, c.out_width, c.flip, resized.data());
  std::vector<float> planar(c.channels * plane);
  ToFloat(resized.data(), c.channels, plane, planar.data(),
          c.normalise ? mean : nullptr, c.normalise ? std : nullptr);
  if (!c.channels_last) return planar;
  std::vector<float> last(planar.size());
  for (int k = 0; k < c.channels; ++k) {
    for (int64_t i = 0; i < plane; ++i) last[i * c.channels + k] = planar[k * plane + i];
  }
  return last;
}

constexpr float kMean[kMaxChannels] = {0.485f, 0.456f, 0.406f, 0.5f};
constexpr float kStd[kMaxChannels] = {0.229f, 0.224f, 0.225f, 0.25f};

// Random sources, boxes (random-resized and centre), output sizes below
// and above the box's, flips, normalisation and both layouts.
std::vector<Case> Cases(std::mt19937_64& rng) {
  std::vector<Case> cases;
  for (int i = 0; i < 64; ++i) {
    Case c;
    c.channels = (i % 3 == 0) ? 1 : 3;
    c.src_height = 17 + static_cast<int>(rng() % 300);
    c.src_width = 13 + static_cast<int>(rng() % 300);
    c.src_planar = i % 2 == 0;
    c.box = (i % 4 < 2) ? RandomResizedCropBox(c.src_height, c.src_width, 0.08, rng)
                        : CenterCropBox(c.src_height, c.src_width,
                                        c.src_height * 7 / 8, c.src_width * 7 / 8);
    c.out_height = (i % 5 == 0) ? 224 : 8 + static_cast<int>(rng() % 120);
    c.out_width = (i % 5 == 0) ? 224 : 8 + static_cast<int>(rng() % 120);
    c.flip = (i / 2) % 2 == 1;
    c.normalise = i % 3 != 2;
    c.channels_last = i % 7 == 3;
    cases.push_back(c);
  }
  // The whole image at its own size: a copy scaled to [0, 1].
  cases.push_back({3, 28, 28, false, {0, 0, 28, 28}, 28, 28, false, false, false});
  return cases;
}

FusedPreprocessParams ParamsOf(const Case& c) {
  FusedPreprocessParams p;
  p.channels = c.channels;
  p.src_height = c.src_height;
  p.src_width = c.src_width;
  p.src_planar = c.src_planar;
  p.box_top = c.box.top;
  p.box_left = c.box.left;
  p.box_height = c.box.height;
  p.box_width = c.box.width;
  p.out_height = c.out_height;
  p.out_width = c.out_width;
  p.flip = c.flip;
  p.normalise = c.normalise;
  std::memcpy(p.mean, kMean, sizeof(kMean));
  std::memcpy(p.std, kStd, sizeof(kStd));
  p.channels_last = c.channels_last;
  return p;
}

std::vector<uint8_t> RandomSource(const Case& c, std::mt19937_64& rng) {
  std::vector<uint8_t> src(static_cast<size_t>(c.channels) * c.src_height *
                           c.src_width);
  for (uint8_t& v : src) v = static_cast<uint8_t>(rng());
  return src;
}

size_t DifferingBits(const std::vector<float>& a, const std::vector<float>& b) {
  size_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++differ;
  }
  return differ;
}

TEST(FusedPreprocessTest, HostReferenceEqualsTheCpuPathBitForBit) {
  std::mt19937_64 rng(7);
  for (const Case& c : Cases(rng)) {
    SCOPED_TRACE(Describe(c));
    const std::vector<uint8_t> src = RandomSource(c, rng);
    std::vector<float> got(static_cast<size_t>(c.channels) * c.out_height *
                           c.out_width);
    ASSERT_TRUE(FusedPreprocessOnHost(src.data(), ParamsOf(c), got.data()));
    const std::vector<float> want = CpuPath(src, c, kMean, kStd);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(DifferingBits(got, want), 0u) << "of " << got.size() << " values";
  }
}

// The kernel itself, where it was built and a GPU is present.
TEST(FusedPreprocessTest, KernelEqualsTheHostReferenceBitForBit) {
#ifdef TLSERVE_HAVE_CUDA_KERNELS
  if (const char* why = CudaDeviceUnavailable()) {
    GTEST_SKIP() << "no CUDA device to run the kernel on: " << why;
  }
  std::mt19937_64 rng(11);
  for (const Case& c : Cases(rng)) {
    SCOPED_TRACE(Describe(c));
    const std::vector<uint8_t> src = RandomSource(c, rng);
    const size_t n = static_cast<size_t>(c.channels) * c.out_height * c.out_width;
    std::vector<float> host(n), device(n);
    ASSERT_TRUE(FusedPreprocessOnHost(src.data(), ParamsOf(c), host.data()));
    const char* failed =
        FusedPreprocessOnDevice(src.data(), ParamsOf(c), device.data());
    ASSERT_EQ(failed, nullptr) << failed;
    EXPECT_EQ(DifferingBits(device, host), 0u) << "of " << n << " values";
  }
#else
  GTEST_SKIP() << "built without nvcc: the CUDA kernel was not compiled";
#endif
}

TEST(FusedPreprocessTest, RefusesWhatCannotRun) {
  FusedPreprocessParams ok;
  ok.channels = 3;
  ok.src_height = 10;
  ok.src_width = 12;
  ok.box_height = 10;
  ok.box_width = 12;
  ok.out_height = 4;
  ok.out_width = 4;
  EXPECT_EQ(FusedPreprocessProblem(ok), nullptr);

  auto refused = [](FusedPreprocessParams p, const std::string& why) {
    const char* problem = FusedPreprocessProblem(p);
    ASSERT_NE(problem, nullptr) << why;
    EXPECT_EQ(std::string(problem), why);
    float out[256];
    const float marker = -7.0f;
    for (float& v : out) v = marker;
    const uint8_t src[512] = {};
    EXPECT_FALSE(FusedPreprocessOnHost(src, p, out)) << why;
    for (float v : out) EXPECT_EQ(v, marker) << why << ": wrote output";
  };
  FusedPreprocessParams p = ok;
  p.channels = 5;
  refused(p, "channels must be 1 to 4");
  p = ok;
  p.box_left = 1;  // 1 + 12 > 12
  refused(p, "crop box outside the source image");
  p = ok;
  p.box_top = -1;
  refused(p, "crop box outside the source image");
  p = ok;
  p.out_width = 0;
  refused(p, "empty output size");
  p = ok;
  p.src_height = 0;
  refused(p, "empty source image");
  p = ok;
  p.normalise = true;
  p.std[0] = p.std[1] = 1.0f;  // std[2] left at 0
  refused(p, "std must be positive");
}

}  // namespace
}  // namespace tlserve::worker::gpu
