#include "common/word_vectors.h"

#include <bit>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Four words, three values each; some values are not short decimals, so
// the text file carries them as %.9g (which reads back to the same float).
const std::vector<std::string> kWords = {"the", "cat", "caf\xc3\xa9",
                                         "don't"};
const std::vector<float> kValues = {
    0.5f,    -1.25f,       3.0f,           //
    0.1f,    -0.333333f,   1e-3f,          //
    123.75f, -7.0e-8f,     0.0f,           //
    -2.5f,   6.02214e+10f, -0.0009765625f  //
};
constexpr int kDim = 3;

std::string GloveText(bool header) {
  std::string text;
  if (header) absl::StrAppend(&text, kWords.size(), " ", kDim, "\n");
  for (size_t w = 0; w < kWords.size(); ++w) {
    text += kWords[w];
    for (int k = 0; k < kDim; ++k) {
      absl::StrAppendFormat(&text, " %.9g", kValues[w * kDim + k]);
    }
    text += "\n";
  }
  return text;
}

void AppendLittleEndian(float value, std::string* out) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  for (int i = 0; i < 4; ++i) {
    out->push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
  }
}

// word2vec binary, written byte by byte.
std::string Word2VecBinary(const std::vector<std::string>& words,
                           const std::vector<float>& values, int dim,
                           bool newline_after_vector) {
  std::string bytes = absl::StrCat(words.size(), " ", dim, "\n");
  for (size_t w = 0; w < words.size(); ++w) {
    bytes += words[w];
    bytes.push_back(' ');
    for (int k = 0; k < dim; ++k) {
      AppendLittleEndian(values[w * dim + k], &bytes);
    }
    if (newline_after_vector) bytes.push_back('\n');
  }
  return bytes;
}

std::string WriteTemp(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "/word_vectors_" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  EXPECT_TRUE(out.good()) << path;
  return path;
}

void ExpectTestVectors(const absl::StatusOr<WordVectors>& vectors) {
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  EXPECT_EQ(vectors->dim, kDim);
  EXPECT_THAT(vectors->words, ElementsAreArray(kWords));
  EXPECT_THAT(vectors->values, ElementsAreArray(kValues));
  EXPECT_EQ(vectors->size(), 4);
  EXPECT_EQ(vectors->duplicates_dropped, 0);
}

absl::StatusOr<WordVectors> Parse(
    absl::string_view bytes,
    WordVectorsFormat format = WordVectorsFormat::kAuto) {
  WordVectorsOptions options;
  options.format = format;
  return ParseWordVectors(bytes, options);
}

// INVALID_ARGUMENT whose message holds every one of `words`.
void ExpectInvalid(const absl::StatusOr<WordVectors>& vectors,
                   const std::vector<std::string>& words) {
  ASSERT_FALSE(vectors.ok()) << "parsed, with " << vectors->size()
                             << " words of dim " << vectors->dim;
  EXPECT_EQ(vectors.status().code(), absl::StatusCode::kInvalidArgument)
      << vectors.status();
  for (const std::string& word : words) {
    EXPECT_THAT(std::string(vectors.status().message()), HasSubstr(word));
  }
}

TEST(WordVectorsTest, GloveTextAndWord2VecBinaryFilesLoadTheSameVectors) {
  const std::string text_path = WriteTemp("glove.txt", GloveText(false));
  const std::string binary_path =
      WriteTemp("w2v.bin", Word2VecBinary(kWords, kValues, kDim, true));
  ExpectTestVectors(LoadWordVectors(text_path));
  ExpectTestVectors(LoadWordVectors(binary_path));
  WordVectorsOptions text_options;
  text_options.format = WordVectorsFormat::kGloveText;
  ExpectTestVectors(LoadWordVectors(text_path, text_options));
  WordVectorsOptions binary_options;
  binary_options.format = WordVectorsFormat::kWord2VecBinary;
  ExpectTestVectors(LoadWordVectors(binary_path, binary_options));
}

TEST(WordVectorsTest, LookupFindsRowsByExactBytes) {
  absl::StatusOr<WordVectors> vectors = Parse(GloveText(false));
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  EXPECT_EQ(vectors->Find("the"), 0);
  EXPECT_EQ(vectors->Find("cat"), 1);
  EXPECT_EQ(vectors->Find("caf\xc3\xa9"), 2);
  EXPECT_EQ(vectors->Find("don't"), 3);
  EXPECT_EQ(vectors->Find("Cat"), -1);
  EXPECT_EQ(vectors->Find("dog"), -1);
  EXPECT_EQ(vectors->Find(""), -1);
  EXPECT_THAT(vectors->Row(1), ElementsAre(0.1f, -0.333333f, 1e-3f));
  EXPECT_THAT(vectors->Row(3), ElementsAre(-2.5f, 6.02214e+10f, -0.0009765625f));
}

TEST(WordVectorsTest, Word2VecTextHeaderIsReadAndChecked) {
  ExpectTestVectors(Parse(GloveText(true)));
  ExpectTestVectors(Parse(GloveText(true), WordVectorsFormat::kGloveText));
}

TEST(WordVectorsTest, BinaryWithoutNewlinesAfterVectors) {
  ExpectTestVectors(Parse(Word2VecBinary(kWords, kValues, kDim, false)));
  ExpectTestVectors(Parse(Word2VecBinary(kWords, kValues, kDim, false),
                          WordVectorsFormat::kWord2VecBinary));
}

TEST(WordVectorsTest, BinaryWhoseFloatsHoldSpaceAndNewlineBytes) {
  // Little-endian bytes 20 0A 20 3F: a space, a newline, a space.
  const float tricky = std::bit_cast<float>(uint32_t{0x3F200A20});
  const std::vector<float> values = {tricky, 1.0f, -2.0f, tricky};
  absl::StatusOr<WordVectors> vectors =
      Parse(Word2VecBinary({"a", "b"}, values, 2, true));
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  EXPECT_THAT(vectors->words, ElementsAre("a", "b"));
  EXPECT_THAT(vectors->values, ElementsAreArray(values));
}

TEST(WordVectorsTest, FastTextStyleTextWithBomCrlfAndTrailingSpaces) {
  const std::string text =
      "\xEF\xBB\xBF"
      "2 3\r\n"
      "the 0.5 -1.25 3 \r\n"
      "\r\n"
      "cat\t0.25\t+1e-2\t-0 \r\n";
  absl::StatusOr<WordVectors> vectors = Parse(text);
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  EXPECT_THAT(vectors->words, ElementsAre("the", "cat"));
  EXPECT_THAT(vectors->values, ElementsAre(0.5f, -1.25f, 3.0f, 0.25f, 0.01f,
                                           -0.0f));
}

TEST(WordVectorsTest, GloveWordsWithSpacesLoadWhole) {
  absl::StatusOr<WordVectors> vectors =
      Parse("the 1 2\n. . . 3 4\nat name@x.org 5 6\n");
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  EXPECT_THAT(vectors->words, ElementsAre("the", ". . .", "at name@x.org"));
  EXPECT_EQ(vectors->Find(". . ."), 1);
  EXPECT_THAT(vectors->Row(2), ElementsAre(5.0f, 6.0f));
}

TEST(WordVectorsTest, DimOutsideBoundsIsRefused) {
  ExpectInvalid(Parse("2 0\na\nb\n"), {"dim 0", "[1, 4096]"});
  ExpectInvalid(Parse("1 5000\na 1\n"), {"dim 5000", "[1, 4096]"});
  ExpectInvalid(Parse("word\nother\n"), {"line 1", "dim 0"});
  std::string wide = "w";
  for (int k = 0; k < 4097; ++k) wide += " 1";
  ExpectInvalid(Parse(wide + "\n"), {"dim 4097"});
  ExpectInvalid(Parse("1 4097\nw 1\n", WordVectorsFormat::kWord2VecBinary),
                {"dim 4097"});
  // The largest dim loads.
  std::string widest = "w";
  for (int k = 0; k < 4096; ++k) widest += " 1";
  absl::StatusOr<WordVectors> vectors = Parse(widest + "\n");
  ASSERT_TRUE(vectors.ok()) << vectors.status();
  EXPECT_EQ(vectors->dim, 4096);
}

TEST(WordVectorsTest, InconsistentRowWidthsAreRefused) {
  ExpectInvalid(Parse("a 1 2 3\nb 1 2\n"),
                {"line 2", "'b'", "2 values, expected 3", "first row"});
  ExpectInvalid(Parse("a 1 2\nb 1 2 3\n"),
                {"line 2", "'b'", "3 values, expected 2"});
  ExpectInvalid(Parse("2 3\na 1 2 3\nb 1 2\n"),
                {"line 3", "2 values, expected 3", "header"});
  ExpectInvalid(Parse("2 2\na 1 2\nb 1 2 3\n", WordVectorsFormat::kGloveText),
                {"line 3", "3 values, expected 2"});
}

TEST(WordVectorsTest, NonNumbersAndNonFiniteValuesAreRefused) {
  ExpectInvalid(Parse("a 1 2\nb 1 x\n"),
                {"line 2", "'b'", "value 2", "'x'", "not a number"});
  ExpectInvalid(Parse("a 1 2\nb nan 1\n"),
                {"line 2", "value 1", "'nan'", "not a finite"});
  ExpectInvalid(Parse("a 1 inf\n"), {"line 1", "value 2", "not a finite"});
  ExpectInvalid(Parse("a 1 2\nb 1 -1e39\n"),
                {"line 2", "value 2", "not a finite"});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  ExpectInvalid(Parse(Word2VecBinary({"a", "b"}, {1, 2, 3, nan}, 2, true)),
                {"word 2", "'b'", "value 2", "not a finite"});
  ExpectInvalid(Parse(Word2VecBinary({"a"}, {-inf, 2}, 2, true)),
                {"word 1", "'a'", "value 1", "not a finite"});
  // Tiny values round to a float rather than fail.
  absl::StatusOr<WordVectors> tiny = Parse("a 1e-50 2\n");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->values[0], 0.0f);
}

TEST(WordVectorsTest, DuplicateWordsAreRefusedOrKeptFirstOnRequest) {
  const std::string text = "a 1 2\nb 3 4\na 5 6\n";
  ExpectInvalid(Parse(text), {"line 3", "'a'", "line 1", "once"});
  const std::string binary =
      Word2VecBinary({"a", "b", "a"}, {1, 2, 3, 4, 5, 6}, 2, true);
  ExpectInvalid(Parse(binary), {"word 3", "'a'", "word 1", "once"});

  WordVectorsOptions options;
  options.keep_first_duplicate = true;
  for (const std::string& bytes : {text, binary}) {
    absl::StatusOr<WordVectors> vectors = ParseWordVectors(bytes, options);
    ASSERT_TRUE(vectors.ok()) << vectors.status();
    EXPECT_THAT(vectors->words, ElementsAre("a", "b"));
    EXPECT_THAT(vectors->values, ElementsAre(1, 2, 3, 4));
    EXPECT_EQ(vectors->Find("a"), 0);
    EXPECT_EQ(vectors->duplicates_dropped, 1);
  }
  // The header counts the repeated row too.
  ExpectTestVectors(Parse(GloveText(true)));
  absl::StatusOr<WordVectors> counted =
      ParseWordVectors("3 2\n" + text, options);
  ASSERT_TRUE(counted.ok()) << counted.status();
  EXPECT_EQ(counted->size(), 2);
}

TEST(WordVectorsTest, EmptyVocabularyIsRefused) {
  ExpectInvalid(Parse(""), {"empty"});
  ExpectInvalid(Parse("\n\r\n  \n"), {"empty"});
  ExpectInvalid(Parse("0 3\n"), {"0 words", "empty"});
  ExpectInvalid(Parse("0 3\n", WordVectorsFormat::kWord2VecBinary),
                {"0 words", "empty"});
  ExpectInvalid(Parse("", WordVectorsFormat::kWord2VecBinary),
                {"count dim"});
}

TEST(WordVectorsTest, HeaderCountMustMatchTheRows) {
  ExpectInvalid(Parse("3 2\na 1 2\nb 3 4\n"),
                {"declares 3 words", "2 rows"});
  ExpectInvalid(Parse("1 2\na 1 2\nb 3 4\n"),
                {"line 3", "more rows than the 1"});
  std::string binary = Word2VecBinary({"a", "b"}, {1, 2, 3, 4}, 2, true);
  binary[0] = '1';  // header says 1 word, 2 follow
  ExpectInvalid(Parse(binary), {"more bytes follow", "1 words"});
  binary[0] = '3';
  ExpectInvalid(Parse(binary), {"declares 3 words", "ends after 2"});
}

TEST(WordVectorsTest, MaxWordsLimit) {
  WordVectorsOptions options;
  options.max_words = 2;
  ExpectInvalid(ParseWordVectors("a 1\nb 2\nc 3\n", options),
                {"line 3", "more than 2 words"});
  ExpectInvalid(ParseWordVectors("3 1\na 1\nb 2\nc 3\n", options),
                {"declares 3 words", "limit of 2"});
  ExpectInvalid(
      ParseWordVectors(Word2VecBinary({"a", "b", "c"}, {1, 2, 3}, 1, true),
                       options),
      {"declares 3 words", "limit of 2"});
  EXPECT_TRUE(ParseWordVectors("a 1\nb 2\n", options).ok());
  // The default is 2,000,000.
  ExpectInvalid(Parse("2000001 3\na 1 2 3\n"), {"limit of 2000000"});
  options.max_words = 0;
  EXPECT_EQ(ParseWordVectors("a 1\n", options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WordVectorsTest, HostileHeadersAllocateNothingLarge) {
  // A header at the limits over a few bytes: refused, fast, without
  // reserving 2,000,000 x 4096 floats.
  for (WordVectorsFormat format :
       {WordVectorsFormat::kAuto, WordVectorsFormat::kGloveText,
        WordVectorsFormat::kWord2VecBinary}) {
    absl::StatusOr<WordVectors> vectors =
        Parse("2000000 4096\nw 1 2 3\n", format);
    EXPECT_EQ(vectors.status().code(), absl::StatusCode::kInvalidArgument);
  }
  ExpectInvalid(Parse("99999999999999999999999 3\na 1 2 3\n"),
                {"limit of 2000000"});
  ExpectInvalid(Parse("2 99999999999999999999\na 1\n"), {"[1, 4096]"});
}

TEST(WordVectorsTest, LongWordsAndMissingSpacesAreRefused) {
  WordVectorsOptions options;
  options.max_word_bytes = 4;
  ExpectInvalid(ParseWordVectors("abc 1\nabcdef 2\n", options),
                {"line 2", "'abcdef'", "6 bytes", "limit of 4"});
  options.format = WordVectorsFormat::kWord2VecBinary;
  ExpectInvalid(ParseWordVectors("1 1\nabcdefgh 1234", options),
                {"word 1 of 1", "no space within 4 bytes"});
  ExpectInvalid(ParseWordVectors("1 1\nabc", options),
                {"word 1 of 1", "truncated"});
  ExpectInvalid(Parse("1 1\n 1234", WordVectorsFormat::kWord2VecBinary),
                {"word 1 of 1", "empty"});
}

TEST(WordVectorsTest, TruncatedBinaryFailsAtEveryOffset) {
  const std::string full = Word2VecBinary({"ab", "c"}, {1, -2, 3, 0.5f, 7, 8},
                                          3, true);
  ASSERT_TRUE(Parse(full).ok());
  // Only the final '\n' is optional.
  ASSERT_TRUE(Parse(full.substr(0, full.size() - 1)).ok());
  for (size_t n = 0; n + 1 < full.size(); ++n) {
    for (WordVectorsFormat format :
         {WordVectorsFormat::kAuto, WordVectorsFormat::kWord2VecBinary}) {
      absl::StatusOr<WordVectors> vectors = Parse(full.substr(0, n), format);
      EXPECT_EQ(vectors.status().code(), absl::StatusCode::kInvalidArgument)
          << "prefix of " << n << " bytes: " << vectors.status();
    }
  }
  ExpectInvalid(Parse(full.substr(0, 12)), {"word 1 of 2", "truncated"});
  ExpectInvalid(Parse(full.substr(0, 20)), {"declares 2 words",
                                            "ends after 1"});
  ExpectInvalid(Parse(full.substr(0, 23)), {"word 2 of 2", "'c'",
                                            "truncated"});
}

TEST(WordVectorsTest, ReadAsBinaryErrorsSayWhy) {
  // A text file whose rows do not fit its header is read as binary; the
  // message says so.
  ExpectInvalid(Parse("2 3\nfoo 0.5\nbar 1 2 3\n"),
                {"read as word2vec binary", "line 2"});
}

TEST(WordVectorsTest, ForcedTextOnBinaryIsRefused) {
  const std::string binary = Word2VecBinary(kWords, kValues, kDim, true);
  EXPECT_EQ(Parse(binary, WordVectorsFormat::kGloveText).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Parse(GloveText(false), WordVectorsFormat::kWord2VecBinary)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(WordVectorsTest, RandomAndMutatedBytesNeverCrash) {
  const std::vector<std::string> seeds = {
      GloveText(false), GloveText(true),
      Word2VecBinary(kWords, kValues, kDim, true)};
  std::mt19937 rng(42);
  int parsed = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string bytes = seeds[round % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      const size_t at = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[at] = static_cast<char>(rng() & 0xFF);
          break;
        case 1:
          bytes.erase(at, 1 + rng() % 8);
          break;
        default:
          bytes.insert(at, 1, " \n0.9-e"[rng() % 7]);
          break;
      }
    }
    for (WordVectorsFormat format :
         {WordVectorsFormat::kAuto, WordVectorsFormat::kGloveText,
          WordVectorsFormat::kWord2VecBinary}) {
      absl::StatusOr<WordVectors> vectors = Parse(bytes, format);
      if (vectors.ok()) {
        ++parsed;
        ASSERT_EQ(vectors->values.size(),
                  vectors->words.size() * static_cast<size_t>(vectors->dim));
        ASSERT_EQ(vectors->index.size(), vectors->words.size());
      } else {
        ASSERT_EQ(vectors.status().code(), absl::StatusCode::kInvalidArgument)
            << vectors.status();
      }
    }
  }
  EXPECT_GT(parsed, 0);  // some edits leave a valid file
}

TEST(WordVectorsTest, MissingFileIsNotFound) {
  absl::StatusOr<WordVectors> vectors =
      LoadWordVectors(::testing::TempDir() + "/no_such_vectors.txt");
  EXPECT_EQ(vectors.status().code(), absl::StatusCode::kNotFound);
}

TEST(WordVectorsTest, LoadErrorsNameThePath) {
  const std::string path = WriteTemp("bad.txt", "a 1 2\nb 1\n");
  absl::StatusOr<WordVectors> vectors = LoadWordVectors(path);
  ExpectInvalid(vectors, {path, "line 2"});
}

}  // namespace
}  // namespace tlserve
