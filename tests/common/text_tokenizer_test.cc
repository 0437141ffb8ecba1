#include "common/text_tokenizer.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

TEST(TextTokenizerTest, PunctuationSplitsAndIsDropped) {
  EXPECT_THAT(Tokenize("Hello, world! How are you?"),
              ElementsAre("hello", "world", "how", "are", "you"));
  EXPECT_THAT(Tokenize("a-b_c.d/e@f#g(h)[i]{j}\"k\";l:m"),
              ElementsAre("a", "b", "c", "d", "e", "f", "g", "h", "i", "j",
                          "k", "l", "m"));
  EXPECT_THAT(Tokenize("  tabs\tand\nnew\r\nlines  "),
              ElementsAre("tabs", "and", "new", "lines"));
  EXPECT_THAT(Tokenize(std::string("nul\0byte", 8)),
              ElementsAre("nul", "byte"));
}

TEST(TextTokenizerTest, AsciiIsLowercasedOnly) {
  EXPECT_THAT(Tokenize("MiXeD CASE"), ElementsAre("mixed", "case"));
  // \xc3\x89 is É: not ASCII, kept as it is.
  EXPECT_THAT(Tokenize("\xc3\x89""COLE"), ElementsAre("\xc3\x89""cole"));
}

TEST(TextTokenizerTest, ApostrophesInsideWordsStay) {
  EXPECT_THAT(Tokenize("Don't stop rock'n'roll"),
              ElementsAre("don't", "stop", "rock'n'roll"));
  EXPECT_THAT(Tokenize("'quoted' the dogs' ''tis ''' a''b"),
              ElementsAre("quoted", "the", "dogs", "tis", "a''b"));
  EXPECT_THAT(Tokenize("' '' '''"), IsEmpty());
}

TEST(TextTokenizerTest, DigitsAreWordBytes) {
  EXPECT_THAT(Tokenize("abc123 4.5 1,000 -7 2nd"),
              ElementsAre("abc123", "4", "5", "1", "000", "7", "2nd"));
}

TEST(TextTokenizerTest, Utf8SequencesStayInsideWords) {
  // café naïve 東京
  EXPECT_THAT(Tokenize("Caf\xc3\xa9 na\xc3\xafve, \xe6\x9d\xb1\xe4\xba\xac!"),
              ElementsAre("caf\xc3\xa9", "na\xc3\xafve",
                          "\xe6\x9d\xb1\xe4\xba\xac"));
  // U+2019 (’) and U+2014 (—) are not ASCII punctuation: no split there.
  EXPECT_THAT(Tokenize("don\xe2\x80\x99t a\xe2\x80\x94" "b"),
              ElementsAre("don\xe2\x80\x99t", "a\xe2\x80\x94" "b"));
  // An emoji is a token of its own when spaced.
  EXPECT_THAT(Tokenize("ok \xf0\x9f\x98\x80 ok"),
              ElementsAre("ok", "\xf0\x9f\x98\x80", "ok"));
}

TEST(TextTokenizerTest, MaxTokensKeepsTheFirst) {
  EXPECT_THAT(Tokenize("a b c d", 2), ElementsAre("a", "b"));
  EXPECT_THAT(Tokenize("a b c d", 4), ElementsAre("a", "b", "c", "d"));
  EXPECT_THAT(Tokenize("a b c d", 0), IsEmpty());
  EXPECT_THAT(Tokenize("a b c d", -1), IsEmpty());
  std::string long_text;
  for (int i = 0; i < 300; ++i) absl::StrAppend(&long_text, "w", i, " ");
  std::vector<std::string> tokens = Tokenize(long_text);
  ASSERT_EQ(tokens.size(), static_cast<size_t>(kDefaultMaxTokens));
  EXPECT_EQ(tokens.front(), "w0");
  EXPECT_EQ(tokens.back(), "w255");
}

TEST(TextTokenizerTest, NoTokens) {
  EXPECT_THAT(Tokenize(""), IsEmpty());
  EXPECT_THAT(Tokenize("!!! ... ---"), IsEmpty());
}

WordVectors TestVectors() {
  absl::StatusOr<WordVectors> vectors =
      ParseWordVectors("the 1 0\ncat 0 1\ndon't 1 1\n");
  EXPECT_TRUE(vectors.ok()) << vectors.status();
  return vectors.ok() ? *std::move(vectors) : WordVectors();
}

TEST(TextTokenizerTest, VocabularyIdsAreRowsAfterPaddingAndUnknown) {
  const WordVectors vectors = TestVectors();
  TextVocabulary vocab(vectors);
  EXPECT_EQ(vocab.size(), 5);
  EXPECT_EQ(vocab.TokenId("the"), 2);
  EXPECT_EQ(vocab.TokenId("cat"), 3);
  EXPECT_EQ(vocab.TokenId("don't"), 4);
  EXPECT_EQ(vocab.TokenId("dog"), kUnknownTokenId);
  EXPECT_EQ(vocab.TokenId("The"), kUnknownTokenId);  // tokens are lowercase
  EXPECT_EQ(vocab.Token(kPaddingTokenId), "");
  EXPECT_EQ(vocab.Token(kUnknownTokenId), "<unk>");
  EXPECT_EQ(vocab.Token(3), "cat");
  EXPECT_EQ(vocab.Token(5), "");
  EXPECT_EQ(vocab.Token(-1), "");
}

TEST(TextTokenizerTest, EncodeTextCountsUnknownTokens) {
  const WordVectors vectors = TestVectors();
  TextVocabulary vocab(vectors);
  EncodedText encoded = EncodeText("The cat sat on the mat. Don't!", vocab);
  EXPECT_THAT(encoded.ids, ElementsAre(2, 3, 1, 1, 2, 1, 4));
  EXPECT_EQ(encoded.unknown_tokens, 3);

  encoded = EncodeText("The cat sat on the mat.", vocab, 2);
  EXPECT_THAT(encoded.ids, ElementsAre(2, 3));
  EXPECT_EQ(encoded.unknown_tokens, 0);

  encoded = EncodeText("?!", vocab);
  EXPECT_THAT(encoded.ids, IsEmpty());
  EXPECT_EQ(encoded.unknown_tokens, 0);

  encoded = EncodeText("cat", vocab, 0);
  EXPECT_THAT(encoded.ids, IsEmpty());
}

}  // namespace
}  // namespace tlserve
