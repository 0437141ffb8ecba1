#include "common/word_vectors.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <system_error>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"

namespace tlserve {
namespace {

constexpr absl::string_view kUtf8Bom = "\xEF\xBB\xBF";
// A word quoted in a message: escaped, and cut so a hostile file cannot
// make the message huge.
constexpr size_t kQuotedWordBytes = 40;
// The largest max_words with every row + 2 (padding, unknown) an int32 id.
constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max() - 2;

std::string Quote(absl::string_view word) {
  std::string quoted =
      absl::StrCat("'", absl::CHexEscape(word.substr(0, kQuotedWordBytes)));
  if (word.size() > kQuotedWordBytes) absl::StrAppend(&quoted, "...");
  absl::StrAppend(&quoted, "'");
  return quoted;
}

bool IsSeparator(char c) { return c == ' ' || c == '\t'; }

// Drops a trailing '\r' and separators (fastText ends rows with a space).
absl::string_view TrimLineEnd(absl::string_view line) {
  while (!line.empty() && (IsSeparator(line.back()) || line.back() == '\r')) {
    line.remove_suffix(1);
  }
  return line;
}

// The runs of non-separators of `line`.
void SplitFields(absl::string_view line,
                 std::vector<absl::string_view>* fields) {
  fields->clear();
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && IsSeparator(line[i])) ++i;
    size_t start = i;
    while (i < line.size() && !IsSeparator(line[i])) ++i;
    if (i > start) fields->push_back(line.substr(start, i - start));
  }
}

bool AllDigits(absl::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

// A non-negative decimal; false when it has no digits, other characters or
// more than int64 holds.
bool ParseCount(absl::string_view s, int64_t* out) {
  if (!AllDigits(s)) return false;
  std::from_chars_result r =
      std::from_chars(s.data(), s.data() + s.size(), *out);
  return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

enum class FloatParse { kOk, kNotNumber, kNotFinite };

// A decimal float ("0.25", "-1e-3", "+2"); kNotFinite for nan, inf and
// values past float's range. Values too small for a float become 0 or a
// subnormal, as a C library's strtof would round them.
FloatParse ParseFloat(absl::string_view s, float* out) {
  const char* begin = s.data();
  const char* end = s.data() + s.size();
  // from_chars takes no '+'; "+-1" stays invalid.
  if (end - begin >= 2 && *begin == '+' && begin[1] != '-' &&
      begin[1] != '+') {
    ++begin;
  }
  std::from_chars_result r = std::from_chars(begin, end, *out);
  if (r.ptr != end && r.ec != std::errc::result_out_of_range) {
    return FloatParse::kNotNumber;
  }
  if (r.ec == std::errc::invalid_argument) return FloatParse::kNotNumber;
  if (r.ec == std::errc::result_out_of_range) {
    double wide = 0;
    std::from_chars_result rd = std::from_chars(begin, end, wide);
    if (rd.ptr != end) return FloatParse::kNotNumber;
    if (rd.ec != std::errc() ||
        std::fabs(wide) > std::numeric_limits<float>::max()) {
      return FloatParse::kNotFinite;
    }
    *out = static_cast<float>(wide);
  }
  return std::isfinite(*out) ? FloatParse::kOk : FloatParse::kNotFinite;
}

bool IsNumber(absl::string_view s) {
  float unused = 0;
  return ParseFloat(s, &unused) != FloatParse::kNotNumber;
}

// The line starting at `pos` (without '\n') and where the next one starts.
absl::string_view LineAt(absl::string_view bytes, size_t pos, size_t* next) {
  size_t nl = bytes.find('\n', pos);
  if (nl == absl::string_view::npos) {
    *next = bytes.size();
    return bytes.substr(pos);
  }
  *next = nl + 1;
  return bytes.substr(pos, nl - pos);
}

struct Header {
  int64_t count = 0;
  int64_t dim = 0;
};

// `count dim`: two fields of digits only. Returns false for anything else
// (a text row). A header too large for int64 is still a header: the bounds
// check below then refuses it.
bool ParseHeaderLine(absl::string_view line, Header* header) {
  std::vector<absl::string_view> fields;
  SplitFields(TrimLineEnd(line), &fields);
  if (fields.size() != 2 || !AllDigits(fields[0]) || !AllDigits(fields[1])) {
    return false;
  }
  if (!ParseCount(fields[0], &header->count)) {
    header->count = std::numeric_limits<int64_t>::max();
  }
  if (!ParseCount(fields[1], &header->dim)) {
    header->dim = std::numeric_limits<int64_t>::max();
  }
  return true;
}

absl::Status CheckDim(int64_t dim, absl::string_view where) {
  if (dim < 1 || dim > kMaxWordVectorDim) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: %s gives dim %d; the dim must be in [1, %d]: use "
        "vectors of at most %d values per word",
        where, dim, kMaxWordVectorDim, kMaxWordVectorDim));
  }
  return absl::OkStatus();
}

absl::Status CheckHeader(const Header& header, const WordVectorsOptions& options,
                         absl::string_view format_name) {
  RETURN_IF_ERROR(CheckDim(
      header.dim, absl::StrCat("the ", format_name, " header (line 1)")));
  if (header.count == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "word vectors: the ", format_name,
        " header (line 1) declares 0 words: the vocabulary is empty; "
        "upload a file with at least one word"));
  }
  if (header.count > options.max_words) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: the %s header (line 1) declares %d words, over the "
        "limit of %d; keep only the most frequent words",
        format_name, header.count, options.max_words));
  }
  return absl::OkStatus();
}

absl::Status CheckOptions(const WordVectorsOptions& options) {
  if (options.max_words < 1 || options.max_words > kMaxRows) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: max_words %d must be in [1, %d]", options.max_words,
        kMaxRows));
  }
  if (options.max_word_bytes < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: max_word_bytes %d must be at least 1",
        options.max_word_bytes));
  }
  return absl::OkStatus();
}

// Adds `word` as row `vectors->size()` unless it repeats one. `where(row)`
// names a row in messages (only built for one). Returns whether the row
// was added (false: a dropped duplicate).
template <typename WhereFn>
absl::StatusOr<bool> AddWord(absl::string_view word,
                             const WordVectorsOptions& options, WhereFn where,
                             WordVectors* vectors) {
  const int32_t row = static_cast<int32_t>(vectors->words.size());
  if (static_cast<int64_t>(word.size()) > options.max_word_bytes) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: %s: the word %s is %d bytes, over the limit of %d; "
        "remove the row",
        where(row), Quote(word), word.size(), options.max_word_bytes));
  }
  auto [it, inserted] = vectors->index.try_emplace(std::string(word), row);
  if (!inserted) {
    if (options.keep_first_duplicate) {
      ++vectors->duplicates_dropped;
      return false;
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: %s: the word %s repeats %s; every word must appear "
        "once: remove the later rows",
        where(row), Quote(word), where(it->second)));
  }
  vectors->words.emplace_back(word);
  return true;
}

absl::Status CheckNotEmpty(const WordVectors& vectors) {
  if (vectors.words.empty()) {
    return absl::InvalidArgumentError(
        "word vectors: the file holds no words: the vocabulary is empty; "
        "upload a file with one `word v1 ... vD` row per word");
  }
  return absl::OkStatus();
}

// --- Text -----------------------------------------------------------------

absl::StatusOr<WordVectors> ParseText(absl::string_view bytes,
                                      const WordVectorsOptions& options) {
  if (bytes.substr(0, kUtf8Bom.size()) == kUtf8Bom) {
    bytes.remove_prefix(kUtf8Bom.size());
  }
  WordVectors vectors;
  std::vector<int64_t> row_lines;  // line of each row, for messages
  std::vector<absl::string_view> fields;
  Header header;
  bool has_header = false;
  int64_t dim = 0;
  int64_t line_number = 0;
  int64_t rows_seen = 0;  // duplicates included, as a header counts them
  size_t pos = 0;
  while (pos < bytes.size()) {
    size_t next = 0;
    absl::string_view line = TrimLineEnd(LineAt(bytes, pos, &next));
    pos = next;
    ++line_number;
    if (line.empty()) continue;
    if (dim == 0) {
      // The first non-blank line: a `count dim` header or the first row.
      if (ParseHeaderLine(line, &header)) {
        RETURN_IF_ERROR(CheckHeader(header, options, "text"));
        has_header = true;
        dim = header.dim;
        // At least 2 bytes per value (digit, separator) and 2 per word: a
        // header cannot make us reserve more than the bytes can hold.
        const int64_t fit =
            static_cast<int64_t>(bytes.size()) / (2 * dim + 2) + 1;
        const int64_t reserve = std::min(header.count, fit);
        vectors.words.reserve(reserve);
        vectors.values.reserve(reserve * dim);
        row_lines.reserve(reserve);
        continue;
      }
      // Without a header the first row sets the width: its trailing
      // fields that read as numbers, all but the word.
      SplitFields(line, &fields);
      int64_t numeric = 0;
      while (numeric < static_cast<int64_t>(fields.size()) &&
             IsNumber(fields[fields.size() - 1 - numeric])) {
        ++numeric;
      }
      dim = std::min<int64_t>(numeric,
                              static_cast<int64_t>(fields.size()) - 1);
      RETURN_IF_ERROR(CheckDim(
          dim, absl::StrFormat("line %d (the first row, %d values after the "
                               "word)",
                               line_number, dim)));
      const int64_t fit = static_cast<int64_t>(bytes.size()) /
                              static_cast<int64_t>(line.size() + 1) +
                          1;
      const int64_t reserve = std::min(options.max_words, fit);
      vectors.words.reserve(reserve);
      vectors.values.reserve(reserve * dim);
      row_lines.reserve(reserve);
    }

    ++rows_seen;
    if (has_header && rows_seen > header.count) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: line %d: more rows than the %d words the header "
          "(line 1) declares; fix the count in the header",
          line_number, header.count));
    }
    if (rows_seen > options.max_words) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: line %d: more than %d words, the limit; keep only "
          "the most frequent words",
          line_number, options.max_words));
    }
    SplitFields(line, &fields);
    const int64_t num_fields = static_cast<int64_t>(fields.size());
    if (num_fields < dim + 1) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: line %d (word %s): %d values, expected %d (%s); "
          "every row must be a word and the same number of values",
          line_number, Quote(fields[0]), num_fields - 1, dim,
          has_header ? "the header's dim" : "the width of the first row"));
    }
    // The last dim fields are the values; the rest is the word, which may
    // hold spaces, but not numbers after its first piece: that is a row
    // with too many values.
    const int64_t word_fields = num_fields - dim;
    for (int64_t k = 1; k < word_fields; ++k) {
      if (IsNumber(fields[k])) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "word vectors: line %d (word %s): %d values, expected %d (%s); "
            "every row must be a word and the same number of values",
            line_number, Quote(fields[0]), num_fields - 1, dim,
            has_header ? "the header's dim" : "the width of the first row"));
      }
    }
    const absl::string_view first_value = fields[word_fields];
    absl::string_view word =
        line.substr(fields[0].data() - line.data(),
                    first_value.data() - fields[0].data());
    while (!word.empty() && IsSeparator(word.back())) word.remove_suffix(1);
    for (int64_t k = 0; k < dim; ++k) {
      float value = 0;
      const absl::string_view field = fields[word_fields + k];
      FloatParse parsed = ParseFloat(field, &value);
      if (parsed != FloatParse::kOk) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "word vectors: line %d (word %s): value %d is %s, %s; fix or "
            "remove the row",
            line_number, Quote(word), k + 1, Quote(field),
            parsed == FloatParse::kNotNumber ? "not a number"
                                             : "not a finite float"));
      }
      vectors.values.push_back(value);
    }
    absl::StatusOr<bool> added = AddWord(
        word, options,
        [&row_lines, line_number](int32_t row) {
          return absl::StrFormat(
              "line %d", row < static_cast<int32_t>(row_lines.size())
                             ? row_lines[row]
                             : line_number);
        },
        &vectors);
    if (!added.ok()) return added.status();
    if (*added) {
      row_lines.push_back(line_number);
    } else {
      vectors.values.resize(vectors.values.size() - dim);
    }
  }
  if (has_header && rows_seen != header.count) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: the header (line 1) declares %d words but the file "
        "has %d rows; fix the count in the header or the missing rows",
        header.count, rows_seen));
  }
  RETURN_IF_ERROR(CheckNotEmpty(vectors));
  vectors.dim = static_cast<int>(dim);
  return vectors;
}

// --- word2vec binary ------------------------------------------------------

float LittleEndianFloat(const char* p) {
  uint32_t bits = 0;
  for (int i = 3; i >= 0; --i) {
    bits = (bits << 8) | static_cast<uint8_t>(p[i]);
  }
  float value = 0;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

absl::StatusOr<WordVectors> ParseBinary(absl::string_view bytes,
                                        const WordVectorsOptions& options) {
  size_t pos = 0;
  absl::string_view header_line = LineAt(bytes, 0, &pos);
  Header header;
  if (pos > bytes.size() || header_line.size() == bytes.size() ||
      !ParseHeaderLine(header_line, &header)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "word vectors: word2vec binary files start with a line `count dim`; "
        "this one starts with ",
        Quote(header_line),
        ": upload a word2vec binary or a GloVe/word2vec text file"));
  }
  RETURN_IF_ERROR(CheckHeader(header, options, "word2vec binary"));
  const int64_t dim = header.dim;
  const size_t vector_bytes = static_cast<size_t>(dim) * 4;
  // Each word takes at least one byte, a space and its floats.
  const int64_t fit =
      static_cast<int64_t>((bytes.size() - pos) / (vector_bytes + 2)) + 1;
  WordVectors vectors;
  const int64_t reserve = std::min(header.count, fit);
  vectors.words.reserve(reserve);
  vectors.values.reserve(reserve * dim);
  std::vector<size_t> row_offsets;  // byte offset of each row, for messages
  row_offsets.reserve(reserve);
  for (int64_t i = 0; i < header.count; ++i) {
    // The '\n' that word2vec writes after each vector.
    while (pos < bytes.size() && bytes[pos] == '\n') ++pos;
    if (pos == bytes.size()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: the word2vec binary header declares %d words but "
          "the file ends after %d: it is truncated, or the count is wrong",
          header.count, i));
    }
    const size_t word_start = pos;
    const size_t scan_end = std::min(
        bytes.size(),
        word_start + static_cast<size_t>(options.max_word_bytes) + 1);
    size_t space = bytes.find(' ', word_start);
    if (space == absl::string_view::npos || space >= scan_end) {
      if (scan_end == bytes.size()) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "word vectors: word %d of %d (byte %d): the file ends inside the "
            "word: it is truncated",
            i + 1, header.count, word_start));
      }
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: word %d of %d (byte %d): no space within %d bytes: "
          "the word is too long, or the vectors before it are not %d floats "
          "(the header's dim)",
          i + 1, header.count, word_start, options.max_word_bytes, dim));
    }
    const absl::string_view word = bytes.substr(word_start, space - word_start);
    if (word.empty()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: word %d of %d (byte %d) is empty; the vectors "
          "before it may not be %d floats (the header's dim)",
          i + 1, header.count, word_start, dim));
    }
    if (word.find('\n') != absl::string_view::npos) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: word %d of %d (byte %d) %s holds a newline; the "
          "vectors before it may not be %d floats (the header's dim)",
          i + 1, header.count, word_start, Quote(word), dim));
    }
    pos = space + 1;
    if (bytes.size() - pos < vector_bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "word vectors: word %d of %d (byte %d) %s: the file ends after %d "
          "of its %d vector bytes: it is truncated",
          i + 1, header.count, word_start, Quote(word), bytes.size() - pos,
          vector_bytes));
    }
    for (int64_t k = 0; k < dim; ++k) {
      const float value = LittleEndianFloat(bytes.data() + pos + 4 * k);
      if (!std::isfinite(value)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "word vectors: word %d of %d (byte %d) %s: value %d is %f, not "
            "a finite float; fix or remove the word",
            i + 1, header.count, word_start, Quote(word), k + 1, value));
      }
      vectors.values.push_back(value);
    }
    pos += vector_bytes;
    absl::StatusOr<bool> added = AddWord(
        word, options,
        [&row_offsets, i, word_start](int32_t row) {
          // Rows and words differ only once duplicates were dropped, and
          // then no message is made.
          return row < static_cast<int32_t>(row_offsets.size())
                     ? absl::StrFormat("word %d (byte %d)", row + 1,
                                       row_offsets[row])
                     : absl::StrFormat("word %d (byte %d)", i + 1,
                                       word_start);
        },
        &vectors);
    if (!added.ok()) return added.status();
    if (*added) {
      row_offsets.push_back(word_start);
    } else {
      vectors.values.resize(vectors.values.size() - dim);
    }
  }
  // Only line ends may follow the last vector.
  while (pos < bytes.size() && absl::ascii_isspace(bytes[pos])) ++pos;
  if (pos != bytes.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "word vectors: %d more bytes follow the %d words the word2vec binary "
        "header declares (from byte %d): the count in the header is too "
        "small, or the file is not word2vec binary",
        bytes.size() - pos, header.count, pos));
  }
  RETURN_IF_ERROR(CheckNotEmpty(vectors));
  vectors.dim = static_cast<int>(dim);
  return vectors;
}

// Auto-detection. A file that does not start with a `count dim` line is
// text (GloVe). One that does is word2vec text or binary: the line after
// the header is then read as a text row. In a text file it is the word and
// dim numbers. In a binary file the bytes after the first word are raw
// float32: for them to read as dim decimal numbers separated by spaces and
// ended by '\n', every one of 4 x dim bytes would have to be a digit, sign,
// '.', 'e' or separator, which real vectors (magnitudes near 1, whose
// float32 exponent bytes are 0x3A-0x41 or 0xBA-0xC1, not digits) never
// are. So: text if that line is a text row of the declared width, else
// binary. A file holding only the header is text (and then empty).
WordVectorsFormat DetectFormat(absl::string_view bytes) {
  if (bytes.substr(0, kUtf8Bom.size()) == kUtf8Bom) {
    return WordVectorsFormat::kGloveText;
  }
  size_t next = 0;
  absl::string_view first = LineAt(bytes, 0, &next);
  Header header;
  if (!ParseHeaderLine(first, &header)) return WordVectorsFormat::kGloveText;
  if (next >= bytes.size()) return WordVectorsFormat::kGloveText;
  size_t after = 0;
  absl::string_view second = TrimLineEnd(LineAt(bytes, next, &after));
  if (after == bytes.size() && second.empty()) {
    return WordVectorsFormat::kGloveText;
  }
  if (header.dim < 1 || header.dim > kMaxWordVectorDim) {
    // Either parser refuses the dim; text words its error more plainly.
    return WordVectorsFormat::kGloveText;
  }
  std::vector<absl::string_view> fields;
  SplitFields(second, &fields);
  if (static_cast<int64_t>(fields.size()) < header.dim + 1) {
    return WordVectorsFormat::kWord2VecBinary;
  }
  for (int64_t k = 0; k < header.dim; ++k) {
    if (!IsNumber(fields[fields.size() - 1 - k])) {
      return WordVectorsFormat::kWord2VecBinary;
    }
  }
  return WordVectorsFormat::kGloveText;
}

}  // namespace

int32_t WordVectors::Find(absl::string_view word) const {
  auto it = index.find(word);
  return it == index.end() ? -1 : it->second;
}

absl::Span<const float> WordVectors::Row(int32_t row) const {
  return absl::Span<const float>(values.data() + static_cast<size_t>(row) * dim,
                                 static_cast<size_t>(dim));
}

absl::StatusOr<WordVectors> ParseWordVectors(
    absl::string_view bytes, const WordVectorsOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  switch (options.format) {
    case WordVectorsFormat::kGloveText:
      return ParseText(bytes, options);
    case WordVectorsFormat::kWord2VecBinary:
      return ParseBinary(bytes, options);
    case WordVectorsFormat::kAuto:
      break;
  }
  if (DetectFormat(bytes) == WordVectorsFormat::kGloveText) {
    return ParseText(bytes, options);
  }
  absl::StatusOr<WordVectors> vectors = ParseBinary(bytes, options);
  if (!vectors.ok()) {
    return absl::Status(
        vectors.status().code(),
        absl::StrCat(vectors.status().message(),
                     " (read as word2vec binary: line 2 is not a text row of "
                     "the header's dim; a text file needs `word v1 ... vD` "
                     "rows)"));
  }
  return vectors;
}

absl::StatusOr<WordVectors> LoadWordVectors(
    const std::string& path, const WordVectorsOptions& options) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  absl::StatusOr<WordVectors> vectors = ParseWordVectors(bytes, options);
  if (!vectors.ok()) {
    return absl::Status(vectors.status().code(),
                        absl::StrCat(path, ": ", vectors.status().message()));
  }
  return vectors;
}

}  // namespace tlserve
