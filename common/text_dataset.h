#ifndef TLSERVE_COMMON_TEXT_DATASET_H_
#define TLSERVE_COMMON_TEXT_DATASET_H_

// Text-classification datasets as CSV, the format of text jobs. The server
// validates uploads with it and the worker trains on what it returns.
//
// The file: UTF-8 (a leading byte order mark is ignored), RFC 4180 CSV:
// fields separated by ',', records ended by "\r\n", "\n" or "\r" (the last
// one optionally), a field in double quotes may hold ',', line ends and
// quotes written twice (""). A quote inside an unquoted field is kept as
// it is; after a closing quote only ',' or a line end may follow. Lines
// with nothing on them are skipped.
//
// The first record is the header. It must name a `text` and a `label`
// column, in any order, case-insensitively and ignoring spaces around the
// names; other columns are ignored. Every record has as many fields as
// the header.
//
// Labels (spaces around them ignored):
//  - all of them non-negative integers: those are the class ids, and the
//    class names are "0" ... "K-1" for the largest label K-1 (a class with
//    no record keeps its id);
//  - otherwise every label is a class name, and ids follow the names'
//    sorted (byte-wise) order, not the order of the file: the same classes
//    get the same ids in a train and a test file, however each is shuffled.
// Texts are kept exactly as written (tokenisation comes later); a text
// that is empty or only white space is an error.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tlserve {

struct TextCsvLimits {
  int64_t max_records = 1'000'000;  // data records, the header not counted
  int64_t max_classes = 10'000;     // integer labels must be below it
};

struct TextDataset {
  std::vector<std::string> texts;
  std::vector<int32_t> labels;  // one per text, in [0, class_names.size())
  std::vector<std::string> class_names;
};

// INVALID_ARGUMENT naming the record (1 = the first after the header) and
// its line, with what is wrong and what to do.
absl::StatusOr<TextDataset> ParseTextCsv(absl::string_view bytes,
                                         const TextCsvLimits& limits = {});

// Reads `path` whole, then ParseTextCsv.
absl::StatusOr<TextDataset> LoadTextCsv(const std::string& path,
                                        const TextCsvLimits& limits = {});

// A stored TEXT_CSV dataset: its training file and optional test file on
// one class list.
struct TextDatasetSplits {
  std::vector<std::string> class_names;
  TextDataset train;
  TextDataset test;  // empty (no texts) without a test file
};

// Parses the training file and, when test_path is not empty, the test file,
// and puts both on the training file's classes, as the server does at
// upload and the worker before training, so both see the same ids:
//  - integer labels: `class_names` (the upload header's), when given, name
//    ids 0..K-1 and every label must be below K; else the names are "0"
//    up to the largest label of either file;
//  - named labels: `class_names` must be empty or the training file's own
//    (sorted) names, as stored at upload; every test class must be a
//    training class (test ids are mapped to the training ones).
// Both files must label the same way. INVALID_ARGUMENT naming the file.
absl::StatusOr<TextDatasetSplits> LoadTextDatasetFiles(
    const std::string& train_path, const std::string& test_path,
    const std::vector<std::string>& class_names,
    const TextCsvLimits& limits = {});

}  // namespace tlserve

#endif  // TLSERVE_COMMON_TEXT_DATASET_H_
