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
  // An emoji is a token of its own when spaced; a ZWJ sequence stays one.
  EXPECT_THAT(Tokenize("ok \xf0\x9f\x98\x80 ok"),
              ElementsAre("ok", "\xf0\x9f\x98\x80", "ok"));
  EXPECT_THAT(Tokenize("\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9"),
              ElementsAre("\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9"));
  // 人々 (U+3005 is a letter of the CJK punctuation block).
  EXPECT_THAT(Tokenize("\xe4\xba\xba\xe3\x80\x85"),
              ElementsAre("\xe4\xba\xba\xe3\x80\x85"));
  // Soft hyphen U+00AD and the micro sign U+00B5 are word characters.
  EXPECT_THAT(Tokenize("co\xc2\xad" "op 5\xc2\xb5m"),
              ElementsAre("co\xc2\xad" "op", "5\xc2\xb5m"));
}

TEST(TextTokenizerTest, TypographicApostrophesAreAscii) {
  // U+2019 and U+02BC, as the ASCII apostrophe.
  EXPECT_EQ(Tokenize("don\xe2\x80\x99t"), Tokenize("don't"));
  EXPECT_THAT(Tokenize("Don\xe2\x80\x99t"), ElementsAre("don't"));
  EXPECT_THAT(Tokenize("don\xca\xbct"), ElementsAre("don't"));
  // Outer ones are stripped like ASCII ones; U+2018 is a quote (separator).
  EXPECT_THAT(Tokenize("\xe2\x80\x98quoted\xe2\x80\x99 dogs\xe2\x80\x99"),
              ElementsAre("quoted", "dogs"));
  // The fullwidth apostrophe U+FF07 is punctuation, not an apostrophe.
  EXPECT_THAT(Tokenize("don\xef\xbc\x87t"), ElementsAre("don", "t"));
}

TEST(TextTokenizerTest, UnicodeSpacesAndPunctuationSplit) {
  // Em dash, en dash, no-break space, narrow no-break space, ideographic
  // space, zero-width space, ellipsis, curly double quotes, bullet.
  EXPECT_THAT(Tokenize("a\xe2\x80\x94" "b"), ElementsAre("a", "b"));
  EXPECT_THAT(Tokenize("1\xe2\x80\x93" "2"), ElementsAre("1", "2"));
  EXPECT_THAT(Tokenize("no\xc2\xa0" "break"), ElementsAre("no", "break"));
  EXPECT_THAT(Tokenize("x\xe2\x80\xaf" "y\xe3\x80\x80z\xe2\x80\x8bw"),
              ElementsAre("x", "y", "z", "w"));
  EXPECT_THAT(Tokenize("wait\xe2\x80\xa6\xe2\x80\x9cwhat\xe2\x80\x9d "
                       "\xe2\x80\xa2 item"),
              ElementsAre("wait", "what", "item"));
  // Latin-1 punctuation: ¡hola! «oui» ¿qué? and C1 NEL.
  EXPECT_THAT(Tokenize("\xc2\xa1hola! \xc2\xaboui\xc2\xbb \xc2\xbfqu\xc3\xa9?"
                       "\xc2\x85next"),
              ElementsAre("hola", "oui", "qu\xc3\xa9", "next"));
  // CJK punctuation 、。「」 and fullwidth ！，
  EXPECT_THAT(Tokenize("\xe6\x9d\xb1\xe3\x80\x81\xe4\xba\xac\xe3\x80\x82"
                       "\xe3\x80\x8c\xe6\x97\xa5\xe3\x80\x8d\xef\xbc\x81"
                       "\xe6\x9c\xac\xef\xbc\x8c"),
              ElementsAre("\xe6\x9d\xb1", "\xe4\xba\xac", "\xe6\x97\xa5",
                          "\xe6\x9c\xac"));
  // Fullwidth letters and digits (ＡＢ１) stay one word; ＡＢ－１ splits.
  EXPECT_THAT(Tokenize("\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\x91"),
              ElementsAre("\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\x91"));
  EXPECT_THAT(Tokenize("\xef\xbc\xa1\xef\xbc\xa2\xef\xbc\x8d\xef\xbc\x91"),
              ElementsAre("\xef\xbc\xa1\xef\xbc\xa2", "\xef\xbc\x91"));
  // A byte order mark inside text.
  EXPECT_THAT(Tokenize("\xef\xbb\xbfhello\xef\xbb\xbfworld"),
              ElementsAre("hello", "world"));
}

TEST(TextTokenizerTest, InvalidUtf8BytesAreWordBytes) {
  // A lone continuation byte, a truncated sequence, an overlong encoding
  // of '/', an encoded surrogate: kept in the word, never separators.
  EXPECT_THAT(Tokenize("a\x80" "b c\xe2\x80"), ElementsAre("a\x80" "b",
                                                          "c\xe2\x80"));
  EXPECT_THAT(Tokenize("x\xc0\xafy"), ElementsAre("x\xc0\xafy"));
  EXPECT_THAT(Tokenize("s\xed\xa0\x80t"), ElementsAre("s\xed\xa0\x80t"));
  // A truncated em dash (two of its three bytes) is not a dash.
  EXPECT_THAT(Tokenize("a\xe2\x80" "b"), ElementsAre("a\xe2\x80" "b"));
  // 0xFF and 0xF5 never start a sequence.
  EXPECT_THAT(Tokenize("\xff\xf5 z"), ElementsAre("\xff\xf5", "z"));
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

  // The typographic apostrophe finds the ASCII row.
  encoded = EncodeText("Don\xe2\x80\x99t\xe2\x80\x94the cat", vocab);
  EXPECT_THAT(encoded.ids, ElementsAre(4, 2, 3));
  EXPECT_EQ(encoded.unknown_tokens, 0);

  encoded = EncodeText("?!", vocab);
  EXPECT_THAT(encoded.ids, IsEmpty());
  EXPECT_EQ(encoded.unknown_tokens, 0);

  encoded = EncodeText("cat", vocab, 0);
  EXPECT_THAT(encoded.ids, IsEmpty());
}

}  // namespace
}  // namespace tlserve
