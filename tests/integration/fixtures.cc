#include "tests/integration/fixtures.h"

#include <archive.h>
#include <archive_entry.h>

#include <cstdlib>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/dataset_loader.h"
#include "common/file_util.h"
#include "common/image.h"
#include "common/status_macros.h"
#include "tests/integration/cluster.h"

namespace tlserve::testing {

std::vector<std::string> FashionMnistClassNames() {
  return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
          "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
}

absl::Status WriteIdx(const std::string& path, const std::vector<int>& dims,
                      const std::vector<uint8_t>& data) {
  std::string bytes = {0, 0, 8, static_cast<char>(dims.size())};
  for (int d : dims) {
    for (int shift : {24, 16, 8, 0}) bytes.push_back(static_cast<char>((d >> shift) & 0xff));
  }
  bytes.append(data.begin(), data.end());
  return WriteFileAtomic(path, bytes);
}

absl::StatusOr<DatasetParts> WriteFashionMnistSubset(
    const std::string& dir, const std::vector<int>& classes,
    int train_per_class, int test_per_class, bool invert, int skip_per_class) {
  DatasetParts parts;
  for (const auto& [split, per_class] :
       std::vector<std::pair<std::string, int>>{{"train", train_per_class},
                                                {"t10k", test_per_class}}) {
    ASSIGN_OR_RETURN(std::string image_bytes,
                     ReadFile(absl::StrCat(kFashionMnistDir, "/", split,
                                           "-images-idx3-ubyte.gz")));
    ASSIGN_OR_RETURN(std::string label_bytes,
                     ReadFile(absl::StrCat(kFashionMnistDir, "/", split,
                                           "-labels-idx1-ubyte.gz")));
    ASSIGN_OR_RETURN(IdxArray images, ParseIdx(image_bytes));
    ASSIGN_OR_RETURN(IdxArray labels, ParseIdx(label_bytes));
    const int pixels = images.dims[1] * images.dims[2];
    std::map<int, int> taken;
    std::map<int, int> skipped;
    std::vector<uint8_t> out_images, out_labels;
    for (size_t i = 0; i < labels.data.size(); ++i) {
      int label = labels.data[i];
      bool wanted = false;
      for (int c : classes) wanted |= c == label;
      if (!wanted || taken[label] >= per_class) continue;
      if (skipped[label] < skip_per_class) {
        ++skipped[label];
        continue;
      }
      ++taken[label];
      out_labels.push_back(static_cast<uint8_t>(label));
      for (int64_t p = i * pixels; p < static_cast<int64_t>(i + 1) * pixels; ++p) {
        const uint8_t v = images.data[p];
        out_images.push_back(invert ? static_cast<uint8_t>(255 - v) : v);
      }
    }
    const int n = static_cast<int>(out_labels.size());
    const std::string img_path = absl::StrCat(dir, "/", split, "-images.idx");
    const std::string lbl_path = absl::StrCat(dir, "/", split, "-labels.idx");
    RETURN_IF_ERROR(WriteIdx(img_path, {n, images.dims[1], images.dims[2]}, out_images));
    RETURN_IF_ERROR(WriteIdx(lbl_path, {n}, out_labels));
    const bool train = split == "train";
    parts.emplace_back(train ? tlserve::v1::TRAIN_IMAGES : tlserve::v1::TEST_IMAGES, img_path);
    parts.emplace_back(train ? tlserve::v1::TRAIN_LABELS : tlserve::v1::TEST_LABELS, lbl_path);
  }
  return parts;
}

absl::StatusOr<std::string> ExportResNet18(const std::string& dir, int size) {
  const std::string out = dir + "/resnet18.pt";
  const std::string cmd = absl::StrCat(
      "/usr/bin/python3 ", SourceDir(), "/tools/export_backbone.py",
      " --arch resnet18 --size ", size, " --out ", out, " > ", dir,
      "/export.log 2>&1");
  if (std::system(cmd.c_str()) != 0) {
    auto log = ReadFile(dir + "/export.log");
    return absl::InternalError("export failed: " + (log.ok() ? *log : ""));
  }
  return out;
}

absl::Status WriteTar(const std::string& path,
                      const std::vector<std::pair<std::string, std::string>>& entries) {
  archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (archive_write_open_filename(a, path.c_str()) != ARCHIVE_OK) {
    archive_write_free(a);
    return absl::InternalError("cannot open " + path);
  }
  for (const auto& [name, bytes] : entries) {
    archive_entry* e = archive_entry_new();
    archive_entry_set_pathname(e, name.c_str());
    archive_entry_set_size(e, static_cast<la_int64_t>(bytes.size()));
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0644);
    archive_write_header(a, e);
    archive_write_data(a, bytes.data(), bytes.size());
    archive_entry_free(e);
  }
  archive_write_close(a);
  archive_write_free(a);
  return absl::OkStatus();
}

std::string TinyPng(int seed) {
  Image image;
  image.height = 16;
  image.width = 16;
  image.channels = 1;
  for (int i = 0; i < 256; ++i) image.pixels.push_back(static_cast<uint8_t>((i * seed) & 0xff));
  return *EncodePng(image);
}

}  // namespace tlserve::testing
