#include "worker/text_model.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "worker/model_builder.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

using torch::jit::Module;

// As in model_builder.cc: a per-process nonce and a counter, so classes
// built in different processes never clash inside one saved file.
std::string UniqueTextClassName(absl::string_view kind) {
  static const std::string nonce = [] {
    std::random_device device;
    return absl::StrFormat("t%08x", device());
  }();
  static std::atomic<int64_t> counter{0};
  return absl::StrCat("__torch__.tlserve.", nonce, ".", kind, "_",
                      counter.fetch_add(1));
}

// Module::train()/eval() need a "training" attribute on every module.
Module NewTextModule(absl::string_view kind) {
  Module module(UniqueTextClassName(kind));
  module.register_attribute("training", c10::BoolType::get(), true);
  return module;
}

// PyTorch's Conv1d default initialisation: weight and bias uniform in
// +-1/sqrt(fan_in), fan_in = in_channels * kernel.
Module Conv1d(int64_t in, int64_t out, at::Generator& gen) {
  constexpr int64_t kKernel = 3;
  Module m = NewTextModule("Conv1d");
  const double bound = 1.0 / std::sqrt(static_cast<double>(in * kKernel));
  m.register_parameter(
      "weight",
      torch::empty({out, in, kKernel}).uniform_(-bound, bound, gen)
          .requires_grad_(true),
      /*is_buffer=*/false);
  m.register_parameter(
      "bias", torch::empty({out}).uniform_(-bound, bound, gen)
                  .requires_grad_(true),
      /*is_buffer=*/false);
  m.define(
      "def forward(self, x):\n"
      "    return torch.conv1d(x, self.weight, self.bias, [1], [1], [1], 1)\n");
  return m;
}

// features(): the token vectors are multiplied by the mask, so padding
// reads as zeros whatever row 0 holds; each pooling then ignores it.
std::string FeaturesSource(TextPooling pooling) {
  std::string source =
      "def features(self, ids):\n"
      "    mask = torch.unsqueeze(torch.ne(ids, 0), 2)\n"
      "    x = torch.embedding(self.embedding, ids, 0, False, False)\n"
      "    x = x * mask.type_as(x)\n";
  switch (pooling) {
    case TextPooling::kMean:
      absl::StrAppend(
          &source,
          "    count = torch.clamp(torch.sum(mask.type_as(x), 1), min=1.0)\n"
          "    return torch.sum(x, 1) / count\n");
      break;
    case TextPooling::kMax:
      // -inf at padding; rows without a token (max -inf) become 0.
      absl::StrAppend(
          &source,
          "    x = torch.masked_fill(x, torch.logical_not(mask), "
          "float('-inf'))\n"
          "    m = torch.amax(x, 1)\n"
          "    return torch.where(torch.any(mask, 1), m, "
          "torch.zeros_like(m))\n");
      break;
    case TextPooling::kConv:
      // relu output is >= 0, so zeroing padding positions keeps them out of
      // the maximum, and a row without tokens gets 0.
      absl::StrAppend(
          &source,
          "    h = torch.relu(self.conv.forward(torch.transpose(x, 1, 2)))\n"
          "    h = h * torch.transpose(mask, 1, 2).type_as(h)\n"
          "    return torch.amax(h, 2)\n");
      break;
  }
  absl::StrAppend(&source,
                  "def forward(self, ids):\n"
                  "    return self.head.forward(self.features(ids))\n");
  return source;
}

}  // namespace

absl::string_view TextPoolingName(TextPooling pooling) {
  switch (pooling) {
    case TextPooling::kMean:
      return "mean";
    case TextPooling::kMax:
      return "max";
    case TextPooling::kConv:
      return "conv";
  }
  return "unknown";
}

absl::StatusOr<TextPooling> ParseTextPooling(absl::string_view name) {
  for (TextPooling p :
       {TextPooling::kMean, TextPooling::kMax, TextPooling::kConv}) {
    if (name == TextPoolingName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "text pooling '", name, "' is not one of mean, max, conv"));
}

absl::StatusOr<Module> MakeTextClassifier(const WordVectors& vectors,
                                          const TextModelOptions& options) {
  const int64_t words = vectors.size();
  const int64_t dim = vectors.dim;
  if (words < 1 || dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text model: the word vectors hold ", words, " words of dimension ",
        dim, "; need at least one word and dimension 1"));
  }
  if (static_cast<int64_t>(vectors.values.size()) != words * dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text model: ", vectors.values.size(), " vector values for ", words,
        " words of dimension ", dim));
  }
  if (words + kFirstWordTokenId > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("text model: ", words, " words do not fit int32 ids"));
  }
  if (options.num_classes < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "text model: ", options.num_classes, " classes; need at least 1"));
  }
  if (options.max_tokens < 1 || options.max_tokens > kMaxTextTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("text model: max_tokens ", options.max_tokens,
                     " is outside [1, ", kMaxTextTokens, "]"));
  }
  const bool conv = options.pooling == TextPooling::kConv;
  if (conv && (options.conv_channels < 1 || options.conv_channels > 65536)) {
    return absl::InvalidArgumentError(
        absl::StrCat("text model: conv_channels ", options.conv_channels,
                     " is outside [1, 65536]"));
  }
  const int64_t feature_dim = conv ? options.conv_channels : dim;
  ASSIGN_OR_RETURN(Module head,
                   MakeHead(feature_dim, options.hidden_sizes, options.dropout,
                            options.num_classes, options.seed + 1));
  return TorchGuardOr<Module>(
      "building the text classifier", [&]() -> absl::StatusOr<Module> {
        Module model = NewTextModule("TlTextClassifier");
        torch::Tensor embedding =
            torch::zeros({words + kFirstWordTokenId, dim}, torch::kFloat);
        std::memcpy(embedding[kFirstWordTokenId].data_ptr<float>(),
                    vectors.values.data(),
                    vectors.values.size() * sizeof(float));
        embedding.requires_grad_(options.train_embedding);
        model.register_parameter("embedding", embedding, /*is_buffer=*/false);
        c10::List<std::string> vocab;
        vocab.reserve(static_cast<size_t>(words));
        for (const std::string& word : vectors.words) vocab.push_back(word);
        model.register_attribute("vocab", c10::ListType::ofStrings(), vocab);
        model.register_attribute("max_tokens", c10::IntType::get(),
                                 static_cast<int64_t>(options.max_tokens));
        model.register_attribute(
            "pooling", c10::StringType::get(),
            std::string(TextPoolingName(options.pooling)));
        if (conv) {
          at::Generator gen =
              at::make_generator<at::CPUGeneratorImpl>(options.seed + 2);
          model.register_module("conv",
                                Conv1d(dim, options.conv_channels, gen));
        }
        model.register_module("head", head);
        model.define(FeaturesSource(options.pooling));
        model.train(true);
        return model;
      });
}

absl::StatusOr<std::vector<std::string>> VocabOf(const Module& module) {
  return TorchGuardOr<std::vector<std::string>>(
      "reading the text model's vocab",
      [&]() -> absl::StatusOr<std::vector<std::string>> {
        if (!module.hasattr("vocab")) {
          return absl::InvalidArgumentError(
              "the model has no `vocab` attribute: not a text classifier");
        }
        const c10::IValue value = module.attr("vocab");
        if (!value.isList()) {
          return absl::InvalidArgumentError(
              "the model's `vocab` attribute is not a list of strings");
        }
        std::vector<std::string> words;
        const auto list = value.toListRef();
        words.reserve(list.size());
        for (const c10::IValue& word : list) {
          if (!word.isString()) {
            return absl::InvalidArgumentError(
                "the model's `vocab` attribute is not a list of strings");
          }
          words.push_back(word.toStringRef());
        }
        return words;
      },
      absl::StatusCode::kInvalidArgument);
}

absl::StatusOr<WordVectors> VocabIndexOf(const Module& module) {
  ASSIGN_OR_RETURN(std::vector<std::string> words, VocabOf(module));
  WordVectors index;
  index.words = std::move(words);
  index.index.reserve(index.words.size());
  for (size_t i = 0; i < index.words.size(); ++i) {
    if (!index.index.emplace(index.words[i], static_cast<int32_t>(i)).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the model's vocab holds '", index.words[i], "' twice"));
    }
  }
  return index;
}

absl::StatusOr<torch::Tensor> PadTokenIds(
    absl::Span<const std::vector<int32_t>* const> rows) {
  size_t width = 1;
  for (const std::vector<int32_t>* row : rows) {
    width = std::max(width, row->size());
  }
  return TorchGuardOr<torch::Tensor>(
      "padding token ids", [&]() -> absl::StatusOr<torch::Tensor> {
        torch::Tensor ids =
            torch::full({static_cast<int64_t>(rows.size()),
                         static_cast<int64_t>(width)},
                        static_cast<int64_t>(kPaddingTokenId), torch::kLong);
        int64_t* out = ids.data_ptr<int64_t>();
        for (size_t r = 0; r < rows.size(); ++r) {
          std::copy(rows[r]->begin(), rows[r]->end(), out + r * width);
        }
        return ids;
      });
}

absl::StatusOr<EncodedTexts> EncodeTexts(absl::Span<const std::string> texts,
                                         const TextVocabulary& vocab,
                                         int max_tokens) {
  if (max_tokens < 1 || max_tokens > kMaxTextTokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens ", max_tokens, " is outside [1, ", kMaxTextTokens, "]"));
  }
  EncodedTexts out;
  std::vector<std::vector<int32_t>> rows;
  rows.reserve(texts.size());
  for (const std::string& text : texts) {
    EncodedText encoded = EncodeText(text, vocab, max_tokens);
    out.tokens += static_cast<int64_t>(encoded.ids.size());
    out.unknown_tokens += encoded.unknown_tokens;
    rows.push_back(std::move(encoded.ids));
  }
  std::vector<const std::vector<int32_t>*> pointers;
  pointers.reserve(rows.size());
  for (const std::vector<int32_t>& row : rows) pointers.push_back(&row);
  ASSIGN_OR_RETURN(out.ids, PadTokenIds(pointers));
  return out;
}

}  // namespace tlserve::worker
