#ifndef TLSERVE_COMMON_WORD_VECTORS_H_
#define TLSERVE_COMMON_WORD_VECTORS_H_

// Pretrained word vectors (GloVe, word2vec, fastText .vec) read into one
// row-major float table, for the text backbone's embedding layer. Both the
// server (validating an upload) and the worker (building the embedding)
// parse with these functions, so a file is accepted or refused alike.
//
// Formats:
//  - Text (kGloveText): one word per line, `word v1 v2 ... vD`, fields
//    separated by spaces (tabs too), UTF-8. An optional first line
//    `count dim` (word2vec and fastText text files) is a header whose
//    count and dim the rows must then match. A UTF-8 byte order mark, '\r'
//    before '\n' and trailing spaces are ignored. The last D fields of a
//    line are its values; anything before them is the word, so the few
//    GloVe rows whose word holds a space (". . .") load; but a row whose
//    extra leading field is itself a number is refused as too wide.
//  - word2vec binary (kWord2VecBinary): header line `count dim\n`, then
//    per word: the word's bytes up to a space, D little-endian float32,
//    and optionally '\n'.
// Words are byte strings: looked up byte for byte, not checked as UTF-8
// (word2vec's Google News vectors hold a few invalid sequences).
//
// Duplicate words are refused by default (a clear error naming both
// lines); `keep_first_duplicate` keeps the first row instead and counts
// the dropped ones, as gensim does for the fastText files that have them.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tlserve {

inline constexpr int kMaxWordVectorDim = 4096;

enum class WordVectorsFormat {
  // Text unless the file starts with a `count dim` header and the line
  // after it is not a text row of dim values (see word_vectors.cc).
  kAuto,
  kGloveText,
  kWord2VecBinary,
};

struct WordVectorsOptions {
  WordVectorsFormat format = WordVectorsFormat::kAuto;
  // More rows than this (or a header declaring more) is an error.
  int64_t max_words = 2'000'000;
  // Longer words are refused: no tokenizer makes them, and in a binary
  // file a missing space would otherwise swallow the rest of the file.
  int64_t max_word_bytes = 1024;
  // false: a repeated word is an error. true: the first row wins.
  bool keep_first_duplicate = false;
};

struct WordVectors {
  int dim = 0;
  std::vector<std::string> words;  // row order of the file
  std::vector<float> values;       // words.size() x dim, row-major
  absl::flat_hash_map<std::string, int32_t> index;  // word -> row
  // Rows skipped as repeats (keep_first_duplicate only).
  int64_t duplicates_dropped = 0;

  int64_t size() const { return static_cast<int64_t>(words.size()); }
  // The row of `word`, or -1.
  int32_t Find(absl::string_view word) const;
  // Row `row` (0 <= row < size()).
  absl::Span<const float> Row(int32_t row) const;
};

// Parses the bytes of a vectors file. INVALID_ARGUMENT (naming the line or
// word and what to fix) for anything malformed or over the limits.
absl::StatusOr<WordVectors> ParseWordVectors(
    absl::string_view bytes, const WordVectorsOptions& options = {});

// Reads `path` whole, then ParseWordVectors.
absl::StatusOr<WordVectors> LoadWordVectors(
    const std::string& path, const WordVectorsOptions& options = {});

}  // namespace tlserve

#endif  // TLSERVE_COMMON_WORD_VECTORS_H_
