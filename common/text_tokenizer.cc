#include "common/text_tokenizer.h"

#include <string>
#include <utility>
#include <vector>

namespace tlserve {
namespace {

bool IsWordByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '\'' || c >= 0x80;
}

char LowerAscii(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

// Calls `emit(token)` for each token in order until it returns false.
template <typename Emit>
void ForEachToken(absl::string_view text, Emit emit) {
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() &&
           !IsWordByte(static_cast<unsigned char>(text[i]))) {
      ++i;
    }
    size_t start = i;
    while (i < text.size() && IsWordByte(static_cast<unsigned char>(text[i]))) {
      ++i;
    }
    size_t end = i;
    while (start < end && text[start] == '\'') ++start;
    while (end > start && text[end - 1] == '\'') --end;
    if (start == end) continue;
    std::string token(text.substr(start, end - start));
    for (char& c : token) c = LowerAscii(c);
    if (!emit(std::move(token))) return;
  }
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
