#ifndef TLSERVE_COMMON_TEXT_TOKENIZER_H_
#define TLSERVE_COMMON_TEXT_TOKENIZER_H_

// The one tokenisation of text jobs, used by training and by inference
// alike: a model only works on text split the way its training text was.
// Changing these rules changes what every trained text model sees.
//
// Tokenize(text, max_tokens), on the code points of `text` decoded as
// UTF-8 (a byte that does not start a valid sequence, and each byte of an
// overlong, surrogate or truncated one, counts as a code point of its own
// that is a word character):
//  1. Separators end a token and are dropped:
//       - ASCII: everything but letters A-Z a-z, digits 0-9 and the
//         apostrophe ' (so spaces, controls, punctuation and symbols);
//       - U+0080-U+009F (C1 controls, NEL among them), and the Latin-1
//         white space and punctuation U+00A0 (no-break space) ¡ § « ¶ · »
//         ¿ (U+00A1 U+00A7 U+00AB U+00B6 U+00B7 U+00BB U+00BF);
//       - U+2000-U+206F (General Punctuation: the typographic spaces,
//         dashes, quotes, ellipsis, bullets, invisible separators), except
//         U+200C and U+200D (zero-width non-joiner and joiner, which hold
//         Persian words and emoji sequences together);
//       - U+2E00-U+2E7F (Supplemental Punctuation);
//       - U+3000-U+303F (CJK spaces, brackets and punctuation), except the
//         letters and numerals of that block: U+3005-U+3007, U+3021-U+3035,
//         U+303B-U+303C;
//       - U+FEFF (byte order mark / zero-width no-break space);
//       - fullwidth and halfwidth punctuation: those of U+FF01-U+FF5E (the
//         fullwidth forms of ASCII '!'..'~') whose ASCII form is not a
//         letter or digit, the fullwidth apostrophe U+FF07 included; and
//         U+FF5F-U+FF65 (fullwidth parentheses, halfwidth CJK punctuation).
//     U+2019 (right single quotation mark ’) and U+02BC (modifier letter
//     apostrophe) are the ASCII apostrophe: "don’t" is "don't". Every other
//     code point (letters of any script, digits, symbols, emoji, U+00AD
//     soft hyphen) is a word character, kept byte for byte.
//  2. Each maximal run of word characters and apostrophes is a candidate
//     token; its leading and trailing apostrophes are removed ("'quoted'"
//     -> "quoted", "dogs'" -> "dogs"), apostrophes inside stay ("don't",
//     "rock'n'roll").
//  3. ASCII A-Z become a-z; other characters are left as they are ("HELLO"
//     -> "hello", "ÉCOLE" -> "École": the É is not ASCII).
//  4. Empty tokens (a run of apostrophes only) are dropped.
//  5. Only the first max_tokens tokens are kept (max_tokens <= 0: none).
// So "a—b" (em dash) and "a\u00a0b" are two tokens, "café", "naïve" and
// "東京" one each.
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
