#include "common/dataset_checks.h"

#include <algorithm>
#include <unordered_map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/sha256.h"

namespace tlserve {
namespace {

constexpr std::string_view kIndexMagic = "tlimgix1";
constexpr size_t kMaxExamples = 2;

void PutU64(uint64_t v, std::string* out) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

uint64_t GetU64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) {
    v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  }
  return v;
}

void PutSplit(const std::vector<int32_t>& labels,
              const std::vector<uint64_t>& hashes, std::string* out) {
  for (int32_t label : labels) {
    const uint32_t u = static_cast<uint32_t>(label);
    for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(u >> (8 * i)));
  }
  for (uint64_t h : hashes) PutU64(h, out);
}

void GetSplit(const char* p, size_t n, std::vector<int32_t>* labels,
              std::vector<uint64_t>* hashes) {
  labels->resize(n);
  hashes->resize(n);
  for (size_t i = 0; i < n; ++i, p += 4) {
    uint32_t u = 0;
    for (int b = 0; b < 4; ++b) u |= uint32_t{static_cast<uint8_t>(p[b])} << (8 * b);
    (*labels)[i] = static_cast<int32_t>(u);
  }
  for (size_t i = 0; i < n; ++i, p += 8) (*hashes)[i] = GetU64(p);
}

std::vector<uint64_t> HashAll(const std::vector<Image>& images) {
  std::vector<uint64_t> hashes;
  hashes.reserve(images.size());
  for (const Image& image : images) hashes.push_back(ImageContentHash(image));
  return hashes;
}

uint64_t TextContentHash(const std::string& text) {
  Sha256 hasher;
  hasher.Update("text:");
  hasher.Update(text);
  const std::string hex = hasher.FinalHex();
  uint64_t value = 0;
  if (!absl::SimpleHexAtoi(absl::string_view(hex.data(), 16), &value)) {
    return 0;
  }
  return value;
}

std::vector<uint64_t> HashAllTexts(const std::vector<std::string>& texts) {
  std::vector<uint64_t> hashes;
  hashes.reserve(texts.size());
  for (const std::string& text : texts) hashes.push_back(TextContentHash(text));
  return hashes;
}

std::vector<size_t> AllRecords(size_t n) {
  std::vector<size_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = i;
  return all;
}

}  // namespace

uint64_t ImageContentHash(const Image& image) {
  Sha256 hasher;
  hasher.Update(absl::StrCat(image.height, "x", image.width, "x",
                             image.channels, ":"));
  hasher.Update(std::string_view(
      reinterpret_cast<const char*>(image.pixels.data()), image.pixels.size()));
  const std::string hex = hasher.FinalHex();
  uint64_t value = 0;
  // 16 hex digits always parse; 0 is never returned in practice.
  if (!absl::SimpleHexAtoi(absl::string_view(hex.data(), 16), &value)) {
    return 0;
  }
  return value;
}

DatasetImageIndex IndexDatasetImages(const DecodedDataset& data) {
  DatasetImageIndex index;
  index.train_labels = data.train.labels;
  index.train_hashes = HashAll(data.train.images);
  index.test_labels = data.test.labels;
  index.test_hashes = HashAll(data.test.images);
  return index;
}

DatasetImageIndex IndexTextDataset(const std::vector<int32_t>& train_labels,
                                   const std::vector<std::string>& train_texts,
                                   const std::vector<int32_t>& test_labels,
                                   const std::vector<std::string>& test_texts) {
  DatasetImageIndex index;
  index.train_labels = train_labels;
  index.train_hashes = HashAllTexts(train_texts);
  index.test_labels = test_labels;
  index.test_hashes = HashAllTexts(test_texts);
  return index;
}

std::string EncodeDatasetImageIndex(const DatasetImageIndex& index) {
  std::string out(kIndexMagic);
  out.reserve(out.size() + 16 +
              12 * (index.train_labels.size() + index.test_labels.size()));
  PutU64(index.train_labels.size(), &out);
  PutU64(index.test_labels.size(), &out);
  PutSplit(index.train_labels, index.train_hashes, &out);
  PutSplit(index.test_labels, index.test_hashes, &out);
  return out;
}

absl::StatusOr<DatasetImageIndex> DecodeDatasetImageIndex(
    std::string_view bytes) {
  const size_t header = kIndexMagic.size() + 16;
  if (bytes.size() < header || bytes.substr(0, kIndexMagic.size()) != kIndexMagic) {
    return absl::DataLossError("dataset image index: bad header");
  }
  const uint64_t n_train = GetU64(bytes.data() + kIndexMagic.size());
  const uint64_t n_test = GetU64(bytes.data() + kIndexMagic.size() + 8);
  const uint64_t body = bytes.size() - header;
  if (n_train > body / 12 || n_test > body / 12 ||
      (n_train + n_test) * 12 != body) {
    return absl::DataLossError(absl::StrFormat(
        "dataset image index: %d bytes do not hold %d + %d records", body,
        n_train, n_test));
  }
  DatasetImageIndex index;
  const char* p = bytes.data() + header;
  GetSplit(p, n_train, &index.train_labels, &index.train_hashes);
  GetSplit(p + 12 * n_train, n_test, &index.test_labels, &index.test_hashes);
  return index;
}

std::vector<RecordPair> FindSharedImages(
    const std::vector<uint64_t>& within_hashes,
    const std::vector<size_t>& within, const std::vector<uint64_t>& query_hashes,
    const std::vector<size_t>& query) {
  std::unordered_map<uint64_t, size_t> first;
  first.reserve(within.size());
  for (size_t record : within) first.emplace(within_hashes[record], record);
  std::vector<RecordPair> pairs;
  for (size_t record : query) {
    auto it = first.find(query_hashes[record]);
    if (it != first.end()) pairs.push_back({it->second, record});
  }
  return pairs;
}

std::string ClassLabel(const std::vector<std::string>& class_names,
                       int32_t label) {
  if (label < 0 || static_cast<size_t>(label) >= class_names.size()) {
    return absl::StrCat(label);
  }
  return absl::StrCat(label, " ('", class_names[label], "')");
}

DatasetFindings CheckDatasetImages(const std::vector<std::string>& class_names,
                                   const DatasetImageIndex& index,
                                   absl::string_view noun) {
  DatasetFindings findings;
  const size_t n_train = index.train_hashes.size();

  // Duplicates inside the training split: group by hash.
  std::unordered_map<uint64_t, std::vector<size_t>> groups;
  groups.reserve(n_train);
  for (size_t i = 0; i < n_train; ++i) groups[index.train_hashes[i]].push_back(i);
  int64_t repeated = 0;
  int64_t conflicting = 0;
  std::vector<std::vector<size_t>> examples;  // smallest first records
  std::vector<size_t> conflict_example;
  for (const auto& [hash, records] : groups) {
    if (records.size() < 2) continue;
    ++repeated;
    findings.duplicate_train_images += static_cast<int64_t>(records.size());
    examples.push_back(records);
    for (size_t r : records) {
      if (index.train_labels[r] != index.train_labels[records[0]]) {
        ++conflicting;
        if (conflict_example.empty() || records[0] < conflict_example[0]) {
          conflict_example = {records[0], r};
        }
        break;
      }
    }
  }
  if (repeated > 0) {
    // The groups with the smallest records, so the message is deterministic.
    std::sort(examples.begin(), examples.end());
    examples.resize(std::min(examples.size(), kMaxExamples));
    std::vector<std::string> shown;
    for (const auto& records : examples) {
      shown.push_back(absl::StrCat(
          "records ", absl::StrJoin(records.begin(),
                                    records.begin() + std::min<size_t>(
                                                          records.size(), 4),
                                    ", "),
          records.size() > 4 ? ", ..." : ""));
    }
    std::string warning = absl::StrFormat(
        "duplicates: %d training %ss are exact copies of another training "
        "%s (%d distinct %ss repeated), e.g. %s are identical",
        findings.duplicate_train_images, noun, noun, repeated, noun,
        absl::StrJoin(shown, "; "));
    if (conflicting > 0) {
      absl::StrAppendFormat(
          &warning,
          "; %d of these groups carry different labels (e.g. record %d is "
          "class %s, record %d is class %s)",
          conflicting, conflict_example[0],
          ClassLabel(class_names, index.train_labels[conflict_example[0]]),
          conflict_example[1],
          ClassLabel(class_names, index.train_labels[conflict_example[1]]));
    }
    findings.warnings.push_back(std::move(warning));
  }

  // Test images whose pixels occur in training.
  const std::vector<RecordPair> leaked =
      FindSharedImages(index.train_hashes, AllRecords(n_train),
                       index.test_hashes, AllRecords(index.test_hashes.size()));
  findings.test_images_in_train = static_cast<int64_t>(leaked.size());
  if (!leaked.empty()) {
    std::vector<std::string> shown;
    for (size_t i = 0; i < std::min(leaked.size(), kMaxExamples); ++i) {
      shown.push_back(absl::StrFormat("test record %d = train record %d",
                                      leaked[i].second, leaked[i].first));
    }
    findings.warnings.push_back(absl::StrFormat(
        "test-in-train leakage: %d of %d test %ss also occur in the "
        "training split (e.g. %s); test accuracy will be optimistic",
        leaked.size(), index.test_hashes.size(), noun,
        absl::StrJoin(shown, ", ")));
  }

  // Class balance of the training split.
  std::vector<int64_t> counts(class_names.size(), 0);
  for (int32_t label : index.train_labels) {
    if (label >= 0 && static_cast<size_t>(label) < counts.size()) ++counts[label];
  }
  int largest = -1;
  int smallest = -1;
  for (size_t c = 0; c < counts.size(); ++c) {
    const int label = static_cast<int>(c);
    if (counts[c] == 0) {
      findings.warnings.push_back(absl::StrFormat(
          "class %s has no training %ss; leave it out of "
          "spec.data.class_subset",
          ClassLabel(class_names, label), noun));
      continue;
    }
    if (largest < 0 || counts[c] > counts[largest]) largest = label;
    if (smallest < 0 || counts[c] < counts[smallest]) smallest = label;
  }
  if (largest >= 0 &&
      counts[largest] > kImbalanceWarnRatio * counts[smallest]) {
    findings.warnings.push_back(absl::StrFormat(
        "class imbalance: class %s has %d training %ss but class %s has "
        "only %d (%.1fx, above %.0fx); consider spec.data.samples_per_class "
        "or more %ss of the small class",
        ClassLabel(class_names, largest), counts[largest], noun,
        ClassLabel(class_names, smallest), counts[smallest],
        static_cast<double>(counts[largest]) / counts[smallest],
        kImbalanceWarnRatio, noun));
  }
  return findings;
}

}  // namespace tlserve
