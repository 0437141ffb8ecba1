#ifndef TLSERVE_COMMON_TEXT_TOKENIZER_H_
#define TLSERVE_COMMON_TEXT_TOKENIZER_H_

// The one tokenisation of text jobs, used by training and by inference
// alike: a model only works on text split the way its training text was.
// Changing these rules changes what every trained text model sees.
//
// Tokenize(text, max_tokens), on the bytes of `text` (UTF-8 expected but
// not checked):
//  1. Word bytes are ASCII letters A-Z a-z, ASCII digits 0-9, the ASCII
//     apostrophe ' (U+0027), and every byte >= 0x80 (so each multibyte
//     UTF-8 sequence, whatever character it encodes, stays inside a word:
//     "café", "naïve", "東京" are single tokens; so are "don’t" with U+2019
//     and "a—b" with U+2014, which are not ASCII punctuation).
//     Every other byte (ASCII space, control, punctuation, symbols) ends a
//     token and is dropped.
//  2. Each maximal run of word bytes is a candidate token; its leading and
//     trailing apostrophes are removed ("'quoted'" -> "quoted", "dogs'" ->
//     "dogs"), apostrophes inside stay ("don't", "rock'n'roll").
//  3. ASCII A-Z become a-z; bytes >= 0x80 are left as they are ("HELLO"
//     -> "hello", "ÉCOLE" -> "École": the É is not ASCII).
//  4. Empty tokens (a run of apostrophes only) are dropped.
//  5. Only the first max_tokens tokens are kept (max_tokens <= 0: none).
//
// Encoding against word vectors (one id per token): id 0 is padding, id 1
// an unknown token, id r + 2 the word of row r of the vectors. Tokens are
// looked up exactly (after the lowercasing above), so vectors with capital
// letters (word2vec's Google News) match only their lowercase rows.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "common/word_vectors.h"

namespace tlserve {

inline constexpr int kDefaultMaxTokens = 256;
inline constexpr int32_t kPaddingTokenId = 0;
inline constexpr int32_t kUnknownTokenId = 1;
inline constexpr int32_t kFirstWordTokenId = 2;

// The tokens of `text` by the rules above.
std::vector<std::string> Tokenize(absl::string_view text,
                                  int max_tokens = kDefaultMaxTokens);

// Ids of one vocabulary: the padding and unknown ids, then a word per row
// of `vectors`, which must outlive it.
class TextVocabulary {
 public:
  explicit TextVocabulary(const WordVectors& vectors) : vectors_(&vectors) {}

  // Padding, unknown, then the words.
  int64_t size() const { return vectors_->size() + kFirstWordTokenId; }
  // The id of `token`, kUnknownTokenId when the vectors lack it.
  int32_t TokenId(absl::string_view token) const;
  // The token of `id`: "<unk>" for unknown, "" for padding and ids out of
  // range.
  absl::string_view Token(int32_t id) const;

 private:
  const WordVectors* vectors_;
};

struct EncodedText {
  // One id per token (no padding added), at most max_tokens; empty when the
  // text has no tokens.
  std::vector<int32_t> ids;
  int64_t unknown_tokens = 0;  // ids equal to kUnknownTokenId
};

// Tokenize, then TokenId for each token.
EncodedText EncodeText(absl::string_view text, const TextVocabulary& vocab,
                       int max_tokens = kDefaultMaxTokens);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_TEXT_TOKENIZER_H_
