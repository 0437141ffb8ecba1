#ifndef TLSERVE_WORKER_TEXT_MODEL_OPTIONS_H_
#define TLSERVE_WORKER_TEXT_MODEL_OPTIONS_H_

// How a text classifier (worker/text_model.h) is built. No torch headers,
// so code that only configures text jobs (worker/text_trainer.h and its
// callers) compiles without them.

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/text_tokenizer.h"

namespace tlserve::worker {

enum class TextPooling { kMean, kMax, kConv };

// "mean", "max", "conv": the module's `pooling` attribute.
absl::string_view TextPoolingName(TextPooling pooling);
// The inverse of TextPoolingName; INVALID_ARGUMENT naming the choices.
absl::StatusOr<TextPooling> ParseTextPooling(absl::string_view name);

inline constexpr int kMaxTextTokens = 65536;

struct TextModelOptions {
  TextPooling pooling = TextPooling::kMean;
  // false: the pretrained vectors stay as they are (requires_grad false).
  bool train_embedding = false;
  int64_t conv_channels = 256;  // kConv only, in [1, 65536]
  std::vector<int64_t> hidden_sizes;
  double dropout = 0;
  int64_t num_classes = 0;
  // The head draws from seed + 1, the conv from seed + 2 (as the image
  // trainer's head does), each from its own generator.
  uint64_t seed = 0;
  int max_tokens = kDefaultMaxTokens;  // in [1, kMaxTextTokens]
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_TEXT_MODEL_OPTIONS_H_
