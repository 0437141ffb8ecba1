#ifndef TLSERVE_WORKER_TEXT_MODEL_H_
#define TLSERVE_WORKER_TEXT_MODEL_H_

// The text classifier of text jobs: pretrained word vectors as an
// embedding, a pooling of a text's token vectors into one feature vector,
// and the MLP head of worker/model_builder.h. Like every network of the
// worker it is a torch::jit::Module built in C++ (TorchScript source
// through Module::define, process-unique class names), so it trains
// through autograd, exports with Module::save and loads in Python with
// torch.jit.load.
//
// The module ("TlTextClassifier"):
//   parameter embedding  float [V + 2, D]: row 0 padding (zeros), row 1
//                        the unknown token (zeros: an unknown word adds
//                        nothing to a sum or mean, and the model does not
//                        pretend to know it; FULL training may learn it),
//                        row r + 2 the vector of the file's row r (the ids
//                        of TextVocabulary, common/text_tokenizer.h)
//   attribute  vocab      List[str]: the V words in row order, so the file
//                         alone turns text into ids (torch.jit.load(p).vocab)
//   attribute  max_tokens int: tokens kept per text at inference
//   attribute  pooling    str: "mean", "max" or "conv"
//   submodule  conv       (pooling "conv" only) weight [C, D, 3], bias [C]
//   submodule  head       MakeHead(feature width, ...)
//   features(ids)  int64 [N, T] ids, 0 = padding -> float [N, F]
//   forward(ids)   = head.forward(features(ids))   -> [N, num_classes]
// F is D for mean and max pooling, C (conv_channels) for conv.
//
// Pooling looks at the tokens only, never at padding: appending padding
// ids to a row leaves its features and logits unchanged (up to float
// rounding: a sum over a wider row may add in another order), so a batch
// may be padded to any width. A row with no token (all padding) has
// features 0.
//   mean: the average of the row's token vectors (unknown tokens count,
//         with their zero vector);
//   max:  the per-dimension maximum over the row's tokens (an unknown
//         token's zero vector included);
//   conv: conv1d(kernel 3, D -> C, zero padding 1) over the token vectors
//         (padding positions read as zeros) -> relu -> maximum over the
//         token positions.
//
// Nothing here throws: torch errors come back as statuses.

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/text_tokenizer.h"
#include "common/word_vectors.h"
#include "worker/text_model_options.h"

namespace tlserve::worker {

// The classifier over `vectors` (copied into the embedding). INVALID_
// ARGUMENT for vectors with no words or dim < 1, num_classes < 1, and
// options outside the ranges of TextModelOptions (MakeHead's checks for
// the head).
absl::StatusOr<torch::jit::Module> MakeTextClassifier(
    const WordVectors& vectors, const TextModelOptions& options);

// The `vocab` attribute of a text classifier (also a loaded one).
// INVALID_ARGUMENT when the module has none or it is not a list of
// strings.
absl::StatusOr<std::vector<std::string>> VocabOf(
    const torch::jit::Module& module);

// The words of VocabOf with their index and no vectors (dim 0, values
// empty): enough for a TextVocabulary that encodes text for a saved model.
absl::StatusOr<WordVectors> VocabIndexOf(const torch::jit::Module& module);

// Rows of token ids as one int64 [N, T] tensor, T = the longest row but at
// least 1, shorter rows padded with kPaddingTokenId. An empty `rows` gives
// [0, 1].
absl::StatusOr<torch::Tensor> PadTokenIds(
    absl::Span<const std::vector<int32_t>* const> rows);

struct EncodedTexts {
  torch::Tensor ids;  // int64 [N, T], T = min(longest text, max_tokens)
  int64_t tokens = 0;          // ids that are not padding
  int64_t unknown_tokens = 0;  // of those, kUnknownTokenId
};

// Tokenises `texts` with EncodeText (the documented tokenisation, at most
// max_tokens per text) and pads them with PadTokenIds.
absl::StatusOr<EncodedTexts> EncodeTexts(absl::Span<const std::string> texts,
                                         const TextVocabulary& vocab,
                                         int max_tokens);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_TEXT_MODEL_H_
