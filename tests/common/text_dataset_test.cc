#include "common/text_dataset.h"

#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

void ExpectInvalid(const absl::StatusOr<TextDataset>& dataset,
                   const std::vector<std::string>& words) {
  ASSERT_FALSE(dataset.ok()) << "parsed " << dataset->texts.size()
                             << " records";
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument)
      << dataset.status();
  for (const std::string& word : words) {
    EXPECT_THAT(std::string(dataset.status().message()), HasSubstr(word));
  }
}

TEST(TextDatasetTest, IntegerLabels) {
  absl::StatusOr<TextDataset> dataset =
      ParseTextCsv("text,label\nhello world,1\nbye,0\nagain, 3 \n");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->texts, ElementsAre("hello world", "bye", "again"));
  EXPECT_THAT(dataset->labels, ElementsAre(1, 0, 3));
  EXPECT_THAT(dataset->class_names, ElementsAre("0", "1", "2", "3"));
}

TEST(TextDatasetTest, QuotedFieldsWithCommasQuotesAndNewlines) {
  absl::StatusOr<TextDataset> dataset = ParseTextCsv(
      "text,label\n"
      "\"Hello, \"\"world\"\"\",pos\n"
      "\"line one\nline two\",\"neg\"\n"
      "\"\"\"\",neg\n"
      "she said \"hi\",pos\n");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->texts,
              ElementsAre("Hello, \"world\"", "line one\nline two", "\"",
                          "she said \"hi\""));
  EXPECT_THAT(dataset->class_names, ElementsAre("neg", "pos"));
  EXPECT_THAT(dataset->labels, ElementsAre(1, 0, 0, 1));
}

TEST(TextDatasetTest, CrlfLineEndsAndNoFinalLineEnd) {
  absl::StatusOr<TextDataset> dataset = ParseTextCsv(
      "text,label\r\nfoo,1\r\n\"multi\r\nline\",2\r\nbar,0");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->texts, ElementsAre("foo", "multi\r\nline", "bar"));
  EXPECT_THAT(dataset->labels, ElementsAre(1, 2, 0));
}

TEST(TextDatasetTest, ReversedColumnsExtraColumnsAndHeaderCase) {
  absl::StatusOr<TextDataset> dataset = ParseTextCsv(
      "\xEF\xBB\xBFid,Label , TEXT,source\n"
      "7,b,first text,web\n"
      "8,a,second text,\n");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->texts, ElementsAre("first text", "second text"));
  EXPECT_THAT(dataset->labels, ElementsAre(1, 0));
  EXPECT_THAT(dataset->class_names, ElementsAre("a", "b"));
}

TEST(TextDatasetTest, ClassNamesGetIdsInSortedOrder) {
  absl::StatusOr<TextDataset> dataset = ParseTextCsv(
      "label,text\nzebra,z\napple,a\nmango,m\napple,a2\n");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->class_names, ElementsAre("apple", "mango", "zebra"));
  EXPECT_THAT(dataset->labels, ElementsAre(2, 0, 1, 0));
  // The same classes in another order get the same ids.
  absl::StatusOr<TextDataset> shuffled =
      ParseTextCsv("label,text\nmango,m\napple,a\nzebra,z\n");
  ASSERT_TRUE(shuffled.ok()) << shuffled.status();
  EXPECT_EQ(shuffled->class_names, dataset->class_names);
  EXPECT_THAT(shuffled->labels, ElementsAre(1, 0, 2));
}

TEST(TextDatasetTest, OneNonIntegerLabelMakesAllLabelsNames) {
  absl::StatusOr<TextDataset> dataset =
      ParseTextCsv("text,label\na,10\nb,2\nc,other\n");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->class_names, ElementsAre("10", "2", "other"));
  EXPECT_THAT(dataset->labels, ElementsAre(0, 1, 2));
}

TEST(TextDatasetTest, BlankLinesAreSkippedAndUtf8Kept) {
  absl::StatusOr<TextDataset> dataset = ParseTextCsv(
      "text,label\n\ncaf\xc3\xa9 \xf0\x9f\x98\x80,0\n\r\n\n\xe6\x9d\xb1,1\n\n");
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->texts,
              ElementsAre("caf\xc3\xa9 \xf0\x9f\x98\x80", "\xe6\x9d\xb1"));
}

TEST(TextDatasetTest, MissingColumn) {
  ExpectInvalid(ParseTextCsv("text,class\na,1\n"),
                {"header (line 1)", "no 'label' column", "'class'",
                 "text,label"});
  ExpectInvalid(ParseTextCsv("body,label\na,1\n"), {"no 'text' column"});
  ExpectInvalid(ParseTextCsv("text,label,Text\na,1,b\n"),
                {"'text' twice", "columns 1 and 3"});
}

TEST(TextDatasetTest, UnterminatedQuote) {
  ExpectInvalid(ParseTextCsv("text,label\nfine,1\n\"never closed,1\nmore,2\n"),
                {"record 2 (line 3)", "field 1", "never closed"});
  ExpectInvalid(ParseTextCsv("\"text,label\n"), {"header", "never closed"});
}

TEST(TextDatasetTest, TextAfterClosingQuote) {
  ExpectInvalid(ParseTextCsv("text,label\n\"a\"b,1\n"),
                {"record 1 (line 2)", "field 1", "'b'", "closing quote"});
}

TEST(TextDatasetTest, EmptyTextAndLabel) {
  ExpectInvalid(ParseTextCsv("text,label\nok,1\n,0\n"),
                {"record 2 (line 3)", "text is empty"});
  ExpectInvalid(ParseTextCsv("text,label\n\"  \t\",0\n"),
                {"record 1", "text is empty"});
  ExpectInvalid(ParseTextCsv("text,label\nok,\n"),
                {"record 1", "label is empty"});
}

TEST(TextDatasetTest, TooManyRecords) {
  TextCsvLimits limits;
  limits.max_records = 2;
  EXPECT_TRUE(ParseTextCsv("text,label\na,0\nb,1\n", limits).ok());
  ExpectInvalid(ParseTextCsv("text,label\na,0\nb,1\nc,0\n", limits),
                {"record 3", "more than 2 records"});
}

TEST(TextDatasetTest, WrongNumberOfFields) {
  ExpectInvalid(ParseTextCsv("text,label\na,0\nb, c,1\n"),
                {"record 2 (line 3) has 3 fields, the header 2", "quote"});
  ExpectInvalid(ParseTextCsv("text,label\nonly text\n"),
                {"record 1 (line 2) has 1 fields"});
}

TEST(TextDatasetTest, InvalidUtf8) {
  ExpectInvalid(ParseTextCsv("text,label\nok,0\nbad \xff byte,1\n"),
                {"record 2 (line 3)", "text is not valid UTF-8", "byte 4",
                 "0xff"});
  // Overlong '/', a surrogate, past U+10FFFF, a cut sequence.
  for (const char* bad :
       {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "caf\xc3"}) {
    ExpectInvalid(ParseTextCsv(absl::StrCat("text,label\n", bad, ",0\n")),
                  {"record 1", "not valid UTF-8"});
  }
  ExpectInvalid(ParseTextCsv("text,label\nok,\xe9t\xe9\n"),
                {"record 1", "label is not valid UTF-8"});
  // Ignored columns are not checked.
  EXPECT_TRUE(ParseTextCsv("text,label,x\nok,0,\xff\n").ok());
}

TEST(TextDatasetTest, LabelOverTheClassLimit) {
  TextCsvLimits limits;
  limits.max_classes = 10;
  EXPECT_TRUE(ParseTextCsv("text,label\na,9\n", limits).ok());
  ExpectInvalid(ParseTextCsv("text,label\na,1\nb,10\n", limits),
                {"record 2 (line 3)", "label '10'", "limit of 10"});
  ExpectInvalid(ParseTextCsv("text,label\na,99999999999999999999\n"),
                {"record 1", "limit of 10000"});
  std::string many = "text,label\n";
  for (int i = 0; i < 11; ++i) absl::StrAppend(&many, "t,c", i, "\n");
  ExpectInvalid(ParseTextCsv(many, limits), {"11 distinct labels"});
}

TEST(TextDatasetTest, EmptyFileAndHeaderOnly) {
  ExpectInvalid(ParseTextCsv(""), {"empty"});
  ExpectInvalid(ParseTextCsv("text,label\n"), {"no records"});
}

TEST(TextDatasetTest, LineNumbersCountEmbeddedNewlines) {
  ExpectInvalid(ParseTextCsv("text,label\n\"a\nb\r\nc\",0\n,1\n"),
                {"record 2 (line 5)"});
}

TEST(TextDatasetTest, LoadFromFile) {
  const std::string path = ::testing::TempDir() + "/text_dataset_test.csv";
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << "text,label\n\"x, y\",spam\nz,ham\n";
  }
  absl::StatusOr<TextDataset> dataset = LoadTextCsv(path);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_THAT(dataset->texts, ElementsAre("x, y", "z"));
  EXPECT_THAT(dataset->labels, ElementsAre(1, 0));
  EXPECT_EQ(LoadTextCsv(path + ".missing").status().code(),
            absl::StatusCode::kNotFound);
}

std::string WriteCsv(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
  return path;
}

TEST(TextDatasetFilesTest, NamedTestLabelsMapToTheTrainingIds) {
  // The test file lacks "b", so on its own its "c" would be id 1.
  const std::string train = WriteCsv("named_train.csv", "text,label\nx,c\ny,a\nz,b\n");
  const std::string test = WriteCsv("named_test.csv", "text,label\nu,c\nv,a\n");
  absl::StatusOr<TextDatasetSplits> splits = LoadTextDatasetFiles(train, test, {});
  ASSERT_TRUE(splits.ok()) << splits.status();
  EXPECT_THAT(splits->class_names, ElementsAre("a", "b", "c"));
  EXPECT_THAT(splits->train.labels, ElementsAre(2, 0, 1));
  EXPECT_THAT(splits->test.labels, ElementsAre(2, 0));
  EXPECT_EQ(splits->test.class_names, splits->class_names);

  // The names stored at upload, as the worker passes them.
  EXPECT_TRUE(LoadTextDatasetFiles(train, test, {"a", "b", "c"}).ok());

  absl::StatusOr<TextDatasetSplits> no_test = LoadTextDatasetFiles(train, "", {});
  ASSERT_TRUE(no_test.ok()) << no_test.status();
  EXPECT_TRUE(no_test->test.texts.empty());
}

TEST(TextDatasetFilesTest, IntegerLabelsTakeTheGivenNamesAndTheLargestLabel) {
  const std::string train = WriteCsv("int_train.csv", "text,label\nx,0\ny,1\n");
  const std::string test = WriteCsv("int_test.csv", "text,label\nu,2\n");
  absl::StatusOr<TextDatasetSplits> splits = LoadTextDatasetFiles(train, test, {});
  ASSERT_TRUE(splits.ok()) << splits.status();
  EXPECT_THAT(splits->class_names, ElementsAre("0", "1", "2"));
  EXPECT_THAT(splits->test.labels, ElementsAre(2));

  splits = LoadTextDatasetFiles(train, test, {"neg", "pos", "mixed", "unused"});
  ASSERT_TRUE(splits.ok()) << splits.status();
  EXPECT_THAT(splits->class_names, ElementsAre("neg", "pos", "mixed", "unused"));
  EXPECT_EQ(splits->train.class_names, splits->class_names);

  splits = LoadTextDatasetFiles(train, test, {"neg", "pos"});
  ASSERT_FALSE(splits.ok());
  EXPECT_THAT(std::string(splits.status().message()),
              HasSubstr("label 2 is outside the 2 class names"));
}

TEST(TextDatasetFilesTest, RefusesMismatchesNamingTheFile) {
  const std::string named = WriteCsv("m_named.csv", "text,label\nx,cat\ny,dog\n");
  const std::string ids = WriteCsv("m_ids.csv", "text,label\nx,0\n");
  const std::string other = WriteCsv("m_other.csv", "text,label\nx,bird\n");
  const std::string broken = WriteCsv("m_broken.csv", "text,label\nx\n");
  auto message = [](const absl::StatusOr<TextDatasetSplits>& s) {
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(s.status().message());
  };
  EXPECT_THAT(message(LoadTextDatasetFiles(named, ids, {})),
              HasSubstr("label both files the same way"));
  EXPECT_THAT(message(LoadTextDatasetFiles(named, other, {})),
              HasSubstr("the test file's class 'bird' has no training text"));
  EXPECT_THAT(message(LoadTextDatasetFiles(named, "", {"a", "b"})),
              HasSubstr("leave the class names out"));
  EXPECT_THAT(message(LoadTextDatasetFiles(named, broken, {})),
              HasSubstr("the test file: text CSV: record 1"));
}

}  // namespace
}  // namespace tlserve
