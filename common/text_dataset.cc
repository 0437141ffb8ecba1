#include "common/text_dataset.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace tlserve {
namespace {

constexpr absl::string_view kUtf8Bom = "\xEF\xBB\xBF";
constexpr size_t kQuotedBytes = 40;

std::string Quote(absl::string_view s) {
  std::string quoted =
      absl::StrCat("'", absl::CHexEscape(s.substr(0, kQuotedBytes)));
  if (s.size() > kQuotedBytes) absl::StrAppend(&quoted, "...");
  absl::StrAppend(&quoted, "'");
  return quoted;
}

// The offset of the first byte that is not part of a well-formed UTF-8
// sequence (no overlong forms, surrogates or code points past U+10FFFF),
// or npos.
size_t InvalidUtf8Offset(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int length = 0;
    unsigned char low = 0x80;  // bounds of the second byte
    unsigned char high = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) low = 0xA0;   // overlong
      if (c == 0xED) high = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) low = 0x90;   // overlong
      if (c == 0xF4) high = 0x8F;  // past U+10FFFF
    } else {
      return i;
    }
    if (s.size() - i < static_cast<size_t>(length)) return i;
    const unsigned char second = static_cast<unsigned char>(s[i + 1]);
    if (second < low || second > high) return i;
    for (int k = 2; k < length; ++k) {
      const unsigned char next = static_cast<unsigned char>(s[i + k]);
      if (next < 0x80 || next > 0xBF) return i;
    }
    i += length;
  }
  return absl::string_view::npos;
}

// Reads RFC 4180 records one at a time.
class CsvReader {
 public:
  explicit CsvReader(absl::string_view bytes) : bytes_(bytes) {}

  // The next non-blank record into `fields`, false at the end of the
  // bytes. `record` numbers the record in messages ("record 3", "the
  // header"); line() is then the line it starts on.
  absl::StatusOr<bool> Next(absl::string_view record,
                            std::vector<std::string>* fields) {
    while (pos_ < bytes_.size()) {
      record_line_ = line_;
      fields->clear();
      bool quoted_any = false;
      bool end_of_record = false;
      while (!end_of_record) {
        std::string field;
        if (pos_ < bytes_.size() && bytes_[pos_] == '"') {
          quoted_any = true;
          RETURN_IF_ERROR(ReadQuoted(record, fields->size() + 1, &field));
        } else {
          size_t end = pos_;
          while (end < bytes_.size() && bytes_[end] != ',' &&
                 bytes_[end] != '\n' && bytes_[end] != '\r') {
            ++end;
          }
          field.assign(bytes_.data() + pos_, end - pos_);
          pos_ = end;
        }
        fields->push_back(std::move(field));
        if (pos_ == bytes_.size()) {
          end_of_record = true;
        } else if (bytes_[pos_] == ',') {
          ++pos_;
        } else {
          // '\r', '\n' or "\r\n" (ReadQuoted checked what follows a quote).
          if (bytes_[pos_] == '\r') ++pos_;
          if (pos_ < bytes_.size() && bytes_[pos_] == '\n') ++pos_;
          ++line_;
          end_of_record = true;
        }
      }
      if (fields->size() == 1 && (*fields)[0].empty() && !quoted_any) {
        continue;  // a blank line
      }
      return true;
    }
    return false;
  }

  int64_t line() const { return record_line_; }

 private:
  // The quoted field at pos_ (on its opening quote).
  absl::Status ReadQuoted(absl::string_view record, size_t field_number,
                          std::string* field) {
    const int64_t open_line = line_;
    ++pos_;
    while (true) {
      size_t quote = bytes_.find('"', pos_);
      if (quote == absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "text CSV: %s (line %d): field %d opens a quote that is never "
            "closed; end the field with \", and write quotes inside it as "
            "\"\"",
            record, open_line, field_number));
      }
      const absl::string_view chunk = bytes_.substr(pos_, quote - pos_);
      line_ += CountLines(chunk);
      field->append(chunk.data(), chunk.size());
      pos_ = quote + 1;
      if (pos_ < bytes_.size() && bytes_[pos_] == '"') {
        field->push_back('"');
        ++pos_;
        continue;
      }
      break;
    }
    if (pos_ < bytes_.size() && bytes_[pos_] != ',' && bytes_[pos_] != '\n' &&
        bytes_[pos_] != '\r') {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text CSV: %s (line %d): field %d has %s after its closing quote; "
          "quote the whole field and write quotes inside it as \"\"",
          record, line_, field_number,
          Quote(bytes_.substr(pos_, 1))));
    }
    return absl::OkStatus();
  }

  // Line ends in `s`, "\r\n" counted once.
  static int64_t CountLines(absl::string_view s) {
    int64_t lines = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\n') {
        ++lines;
      } else if (s[i] == '\r' && (i + 1 == s.size() || s[i + 1] != '\n')) {
        ++lines;
      }
    }
    return lines;
  }

  absl::string_view bytes_;
  size_t pos_ = 0;
  int64_t line_ = 1;
  int64_t record_line_ = 1;
};

bool IsBlank(absl::string_view s) {
  return absl::StripAsciiWhitespace(s).empty();
}

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<TextDataset> ParseTextCsv(absl::string_view bytes,
                                         const TextCsvLimits& limits) {
  if (limits.max_records < 1 || limits.max_classes < 1 ||
      limits.max_classes > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "text CSV: limits max_records %d and max_classes %d must be "
        "positive (max_classes at most 2^30)",
        limits.max_records, limits.max_classes));
  }
  if (bytes.substr(0, kUtf8Bom.size()) == kUtf8Bom) {
    bytes.remove_prefix(kUtf8Bom.size());
  }
  CsvReader reader(bytes);
  std::vector<std::string> fields;
  ASSIGN_OR_RETURN(bool has_header, reader.Next("the header", &fields));
  if (!has_header) {
    return absl::InvalidArgumentError(
        "text CSV: the file is empty; it needs a header `text,label` and "
        "one record per text");
  }
  const size_t num_columns = fields.size();
  int text_column = -1;
  int label_column = -1;
  for (size_t i = 0; i < fields.size(); ++i) {
    const std::string name =
        absl::AsciiStrToLower(absl::StripAsciiWhitespace(fields[i]));
    int* column = name == "text" ? &text_column
                  : name == "label" ? &label_column
                                    : nullptr;
    if (column == nullptr) continue;
    if (*column >= 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text CSV: the header (line %d) names the column '%s' twice "
          "(columns %d and %d); keep one",
          reader.line(), name, *column + 1, i + 1));
    }
    *column = static_cast<int>(i);
  }
  if (text_column < 0 || label_column < 0) {
    std::vector<std::string> quoted;
    for (const std::string& f : fields) quoted.push_back(Quote(f));
    return absl::InvalidArgumentError(absl::StrFormat(
        "text CSV: the header (line %d) has no '%s' column (its columns: "
        "%s); the first line must name the columns, e.g. `text,label`",
        reader.line(), text_column < 0 ? "text" : "label",
        absl::StrJoin(quoted, ", ")));
  }

  TextDataset dataset;
  std::vector<std::string> raw_labels;
  std::vector<int64_t> record_lines;
  int64_t record = 0;
  while (true) {
    const std::string name = absl::StrCat("record ", record + 1);
    ASSIGN_OR_RETURN(bool more, reader.Next(name, &fields));
    if (!more) break;
    ++record;
    if (record > limits.max_records) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text CSV: record %d (line %d): more than %d records, the limit; "
          "upload fewer texts",
          record, reader.line(), limits.max_records));
    }
    if (fields.size() != num_columns) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text CSV: record %d (line %d) has %d fields, the header %d; "
          "quote fields that hold commas (\"a, b\") and give every record "
          "all columns",
          record, reader.line(), fields.size(), num_columns));
    }
    for (int column : {text_column, label_column}) {
      const size_t bad = InvalidUtf8Offset(fields[column]);
      if (bad != absl::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "text CSV: record %d (line %d): the %s is not valid UTF-8 "
            "(byte %d of the field is 0x%02x); save the file as UTF-8",
            record, reader.line(), column == text_column ? "text" : "label",
            bad, static_cast<unsigned char>(fields[column][bad])));
      }
    }
    if (IsBlank(fields[text_column])) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text CSV: record %d (line %d): the text is empty; give it text "
          "or remove the record",
          record, reader.line()));
    }
    absl::string_view label = absl::StripAsciiWhitespace(fields[label_column]);
    if (label.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text CSV: record %d (line %d): the label is empty; give every "
          "record a class id or name",
          record, reader.line()));
    }
    raw_labels.emplace_back(label);
    dataset.texts.push_back(std::move(fields[text_column]));
    record_lines.push_back(reader.line());
  }
  if (dataset.texts.empty()) {
    return absl::InvalidArgumentError(
        "text CSV: the file has a header but no records; add one record "
        "per text");
  }

  const bool integer_labels =
      std::all_of(raw_labels.begin(), raw_labels.end(),
                  [](const std::string& l) { return AllDigits(l); });
  dataset.labels.reserve(raw_labels.size());
  if (integer_labels) {
    int64_t largest = 0;
    for (size_t i = 0; i < raw_labels.size(); ++i) {
      absl::string_view digits = raw_labels[i];
      while (digits.size() > 1 && digits[0] == '0') digits.remove_prefix(1);
      int64_t value = 0;
      if (digits.size() > 10 ||
          !absl::SimpleAtoi(digits, &value) || value >= limits.max_classes) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "text CSV: record %d (line %d): label %s is over the limit of "
            "%d classes; number classes from 0",
            i + 1, record_lines[i], Quote(raw_labels[i]),
            limits.max_classes));
      }
      largest = std::max(largest, value);
      dataset.labels.push_back(static_cast<int32_t>(value));
    }
    for (int64_t c = 0; c <= largest; ++c) {
      dataset.class_names.push_back(absl::StrCat(c));
    }
    return dataset;
  }
  std::vector<std::string> names = raw_labels;
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  if (static_cast<int64_t>(names.size()) > limits.max_classes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "text CSV: %d distinct labels, over the limit of %d classes; check "
        "that the label column holds class names",
        names.size(), limits.max_classes));
  }
  for (const std::string& label : raw_labels) {
    auto it = std::lower_bound(names.begin(), names.end(), label);
    dataset.labels.push_back(static_cast<int32_t>(it - names.begin()));
  }
  dataset.class_names = std::move(names);
  return dataset;
}

absl::StatusOr<TextDataset> LoadTextCsv(const std::string& path,
                                        const TextCsvLimits& limits) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  absl::StatusOr<TextDataset> dataset = ParseTextCsv(bytes, limits);
  if (!dataset.ok()) {
    return absl::Status(dataset.status().code(),
                        absl::StrCat(path, ": ", dataset.status().message()));
  }
  return dataset;
}

namespace {

// Integer-labelled files get the names "0".."K-1" (ParseTextCsv); named ones
// never do, since labels that all parse as integers are integer labels.
bool HasIntegerLabels(const TextDataset& dataset) {
  for (size_t c = 0; c < dataset.class_names.size(); ++c) {
    if (dataset.class_names[c] != absl::StrCat(c)) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<TextDatasetSplits> LoadTextDatasetFiles(
    const std::string& train_path, const std::string& test_path,
    const std::vector<std::string>& class_names,
    const TextCsvLimits& limits) {
  // Named by role, not path: on the server the paths are blob names.
  auto load = [&](const std::string& path,
                  const char* role) -> absl::StatusOr<TextDataset> {
    ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
    absl::StatusOr<TextDataset> dataset = ParseTextCsv(bytes, limits);
    if (!dataset.ok()) {
      return absl::Status(dataset.status().code(),
                          absl::StrCat(role, ": ", dataset.status().message()));
    }
    return dataset;
  };
  TextDatasetSplits splits;
  ASSIGN_OR_RETURN(splits.train, load(train_path, "the training file"));
  const bool has_test = !test_path.empty();
  if (has_test) {
    ASSIGN_OR_RETURN(splits.test, load(test_path, "the test file"));
  }
  const bool integer = HasIntegerLabels(splits.train);
  if (has_test && HasIntegerLabels(splits.test) != integer) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "text CSV: the training file's labels are %s but the test file's "
        "are %s; label both files the same way",
        integer ? "class ids" : "class names",
        integer ? "class names" : "class ids"));
  }
  if (integer) {
    const size_t k = std::max(splits.train.class_names.size(),
                              splits.test.class_names.size());
    if (class_names.empty()) {
      for (size_t c = 0; c < k; ++c) splits.class_names.push_back(absl::StrCat(c));
    } else if (class_names.size() < k) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "text CSV: label %d is outside the %d class names given; give a "
          "name for every class id from 0",
          k - 1, class_names.size()));
    } else {
      splits.class_names = class_names;
    }
  } else {
    // The worker passes the names stored at upload: those must match.
    if (!class_names.empty() && class_names != splits.train.class_names) {
      return absl::InvalidArgumentError(
          "text CSV: class names were given, but the label column already "
          "names the classes; leave the class names out (they are for "
          "integer labels)");
    }
    splits.class_names = splits.train.class_names;
    std::vector<int32_t> to_train(splits.test.class_names.size(), -1);
    for (size_t c = 0; c < splits.test.class_names.size(); ++c) {
      const auto& names = splits.train.class_names;
      auto it = std::lower_bound(names.begin(), names.end(),
                                 splits.test.class_names[c]);
      if (it == names.end() || *it != splits.test.class_names[c]) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "text CSV: the test file's class %s has no training text; test "
            "only classes the training file has",
            Quote(splits.test.class_names[c])));
      }
      to_train[c] = static_cast<int32_t>(it - names.begin());
    }
    for (int32_t& label : splits.test.labels) label = to_train[label];
  }
  splits.train.class_names = splits.class_names;
  if (has_test) splits.test.class_names = splits.class_names;
  return splits;
}

}  // namespace tlserve
