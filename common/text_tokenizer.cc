#include "common/text_tokenizer.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tlserve {
namespace {

bool IsAsciiAlnum(uint32_t c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
}

// The separators of the header's rule 1, for code points >= 0x80.
bool IsNonAsciiSeparator(uint32_t c) {
  if (c <= 0x9F) return true;  // C1 controls
  switch (c) {
    case 0xA0: case 0xA1: case 0xA7: case 0xAB: case 0xB6: case 0xB7:
    case 0xBB: case 0xBF: case 0xFEFF:
      return true;
    default:
      break;
  }
  if (c >= 0x2000 && c <= 0x206F) return c != 0x200C && c != 0x200D;
  if (c >= 0x2E00 && c <= 0x2E7F) return true;
  if (c >= 0x3000 && c <= 0x303F) {
    return !((c >= 0x3005 && c <= 0x3007) || (c >= 0x3021 && c <= 0x3035) ||
             c == 0x303B || c == 0x303C);
  }
  if (c >= 0xFF01 && c <= 0xFF5E) return !IsAsciiAlnum(c - 0xFF01 + '!');
  return c >= 0xFF5F && c <= 0xFF65;
}

bool IsContinuation(unsigned char b) { return (b & 0xC0) == 0x80; }

// Decodes the code point at text[i]; *length is its byte count. An invalid
// or truncated sequence yields its first byte alone, as 0xFFFFFFFF (a word
// character: no separator is that).
uint32_t DecodeAt(absl::string_view text, size_t i, size_t* length) {
  const auto at = [&text](size_t k) {
    return static_cast<unsigned char>(text[k]);
  };
  const unsigned char b0 = at(i);
  *length = 1;
  if (b0 < 0x80) return b0;
  constexpr uint32_t kInvalid = 0xFFFFFFFF;
  size_t n = 0;
  unsigned char lo = 0x80;  // bounds of the second byte (overlongs,
  unsigned char hi = 0xBF;  // surrogates and > U+10FFFF are invalid)
  uint32_t c = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    n = 2;
    c = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    n = 3;
    c = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    n = 4;
    c = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return kInvalid;
  }
  if (i + n > text.size()) return kInvalid;
  if (at(i + 1) < lo || at(i + 1) > hi) return kInvalid;
  for (size_t k = 1; k < n; ++k) {
    if (!IsContinuation(at(i + k))) return kInvalid;
    c = (c << 6) | (at(i + k) & 0x3F);
  }
  *length = n;
  return c;
}

char LowerAscii(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

// Calls `emit(token)` for each token in order until it returns false.
template <typename Emit>
void ForEachToken(absl::string_view text, Emit emit) {
  std::string token;
  // Ends the current run: strips its outer apostrophes and emits it.
  // Returns false when emit asked to stop.
  const auto flush = [&token, &emit]() {
    size_t start = 0;
    size_t end = token.size();
    while (start < end && token[start] == '\'') ++start;
    while (end > start && token[end - 1] == '\'') --end;
    bool more = true;
    if (start < end) more = emit(token.substr(start, end - start));
    token.clear();
    return more;
  };
  size_t i = 0;
  while (i < text.size()) {
    size_t length = 1;
    const uint32_t c = DecodeAt(text, i, &length);
    if (c == '\'' || c == 0x2019 || c == 0x02BC) {
      token.push_back('\'');
    } else if (c < 0x80 ? !IsAsciiAlnum(c) : IsNonAsciiSeparator(c)) {
      if (!flush()) return;
    } else if (c < 0x80) {
      token.push_back(LowerAscii(static_cast<char>(c)));
    } else {
      token.append(text.data() + i, length);
    }
    i += length;
  }
  flush();
}

}  // namespace

std::vector<std::string> Tokenize(absl::string_view text, int max_tokens) {
  std::vector<std::string> tokens;
  if (max_tokens <= 0) return tokens;
  ForEachToken(text, [&tokens, max_tokens](std::string token) {
    tokens.push_back(std::move(token));
    return static_cast<int>(tokens.size()) < max_tokens;
  });
  return tokens;
}

int32_t TextVocabulary::TokenId(absl::string_view token) const {
  const int32_t row = vectors_->Find(token);
  return row < 0 ? kUnknownTokenId : row + kFirstWordTokenId;
}

absl::string_view TextVocabulary::Token(int32_t id) const {
  if (id == kUnknownTokenId) return "<unk>";
  if (id < kFirstWordTokenId || id >= size()) return "";
  return vectors_->words[id - kFirstWordTokenId];
}

EncodedText EncodeText(absl::string_view text, const TextVocabulary& vocab,
                       int max_tokens) {
  EncodedText encoded;
  if (max_tokens <= 0) return encoded;
  ForEachToken(text, [&encoded, &vocab, max_tokens](std::string token) {
    const int32_t id = vocab.TokenId(token);
    if (id == kUnknownTokenId) ++encoded.unknown_tokens;
    encoded.ids.push_back(id);
    return static_cast<int>(encoded.ids.size()) < max_tokens;
  });
  return encoded;
}

}  // namespace tlserve
