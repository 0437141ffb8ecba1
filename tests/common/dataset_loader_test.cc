#include "common/dataset_loader.h"

#include <archive.h>
#include <archive_entry.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/input_fit.h"
#include "gtest/gtest.h"

namespace tlserve {
namespace {

using ::tlserve::v1::IDX;
using ::tlserve::v1::IMAGE_FOLDER_TAR;

constexpr char kFashionDir[] = "/usr/share/datasets/fashion-mnist";

std::string TestDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string dir = ::testing::TempDir() + "/dataset_loader_test/" +
                    info->test_suite_name() + "." + info->name();
  EXPECT_TRUE(MakeDirs(dir).ok());
  return dir;
}

std::string Idx(const std::vector<int32_t>& dims,
                const std::vector<uint8_t>& data) {
  std::string out = {0, 0, 8, static_cast<char>(dims.size())};
  for (int32_t d : dims) {
    for (int shift : {24, 16, 8, 0})
      out.push_back(static_cast<char>(d >> shift));
  }
  out.append(data.begin(), data.end());
  return out;
}

std::string Gzip(const std::string& raw) {
  z_stream zs{};
  EXPECT_EQ(
      deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY),
      Z_OK);
  std::string out(deflateBound(&zs, raw.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  zs.avail_in = raw.size();
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = out.size();
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

std::string Png(uint8_t value, int channels = 1) {
  Image image{4, 3, channels, std::vector<uint8_t>(4 * 3 * channels, value)};
  return *EncodePng(image);
}

struct Entry {
  Entry(std::string name, std::string data, mode_t type = AE_IFREG,
        std::string link = "")
      : name(std::move(name)),
        data(std::move(data)),
        type(type),
        link(std::move(link)) {}
  std::string name;
  std::string data;
  mode_t type;
  std::string link;  // symlink target
};

std::string WriteTar(const std::string& path, const std::vector<Entry>& entries,
                     bool gzip = false) {
  struct archive* a = archive_write_new();
  archive_write_set_format_pax_restricted(a);
  if (gzip) archive_write_add_filter_gzip(a);
  EXPECT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK);
  for (const Entry& e : entries) {
    struct archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, e.name.c_str());
    archive_entry_set_filetype(entry, e.type);
    archive_entry_set_perm(entry, e.type == AE_IFDIR ? 0755 : 0644);
    archive_entry_set_size(entry, e.type == AE_IFREG ? e.data.size() : 0);
    if (!e.link.empty()) archive_entry_set_symlink(entry, e.link.c_str());
    EXPECT_EQ(archive_write_header(a, entry), ARCHIVE_OK)
        << archive_error_string(a);
    if (e.type == AE_IFREG && !e.data.empty()) {
      archive_write_data(a, e.data.data(), e.data.size());
    }
    archive_entry_free(entry);
  }
  archive_write_close(a);
  archive_write_free(a);
  return path;
}

std::string WriteFile(const std::string& path, const std::string& data) {
  EXPECT_TRUE(WriteFileAtomic(path, data).ok());
  return path;
}

// Writes a small IDX dataset with the given labels (images 2x3).
DatasetFiles SmallIdx(const std::string& dir,
                      const std::vector<uint8_t>& labels,
                      int images_count = -1) {
  int n = images_count < 0 ? static_cast<int>(labels.size()) : images_count;
  std::vector<uint8_t> pixels(n * 6);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = i % 251;
  DatasetFiles files;
  files.format = IDX;
  files.paths[v1::TRAIN_IMAGES] =
      WriteFile(dir + "/train-images", Gzip(Idx({n, 2, 3}, pixels)));
  files.paths[v1::TRAIN_LABELS] =
      WriteFile(dir + "/train-labels",
                Idx({static_cast<int32_t>(labels.size())}, labels));
  return files;
}

void ExpectInvalid(const absl::Status& status, const std::string& needle) {
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find(needle), absl::string_view::npos)
      << "want '" << needle << "' in: " << status;
}

// ---- ParseIdx
// ----------------------------------------------------------------

TEST(ParseIdxTest, ParsesRawAndGzip) {
  std::string raw = Idx({2, 3}, {1, 2, 3, 4, 5, 6});
  for (const std::string& bytes : {raw, Gzip(raw)}) {
    absl::StatusOr<IdxArray> got = ParseIdx(bytes);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->dims, (std::vector<int32_t>{2, 3}));
    EXPECT_EQ(got->data, (std::vector<uint8_t>{1, 2, 3, 4, 5, 6}));
  }
}

TEST(ParseIdxTest, RefusesSizeMismatch) {
  std::vector<uint8_t> data(1000);
  ExpectInvalid(ParseIdx(Idx({60000, 28, 28}, data)).status(),
                "IDX: file has 1000 bytes of data but header dims 60000x28x28 "
                "need 47040000");
  ExpectInvalid(ParseIdx(Idx({10}, std::vector<uint8_t>(11))).status(),
                "has 11 bytes of data");
}

TEST(ParseIdxTest, RefusesTruncatedFiles) {
  std::string raw = Idx({100, 4}, std::vector<uint8_t>(400, 7));
  ExpectInvalid(ParseIdx(raw.substr(0, raw.size() - 1)).status(),
                "399 bytes of data");
  ExpectInvalid(ParseIdx(raw.substr(0, 6)).status(), "too short");
  std::string gz = Gzip(raw);
  ExpectInvalid(ParseIdx(gz.substr(0, gz.size() / 2)).status(), "gzip");
  std::string corrupt = gz;
  for (size_t i = 12; i < corrupt.size() - 8; ++i) corrupt[i] ^= 0x33;
  EXPECT_EQ(ParseIdx(corrupt).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ParseIdxTest, RefusesWrongMagic) {
  ExpectInvalid(ParseIdx("PK\3\4 not idx at all").status(), "bad magic");
  std::string floats = Idx({1}, {0, 0, 0, 0});
  floats[2] = 0x0D;
  ExpectInvalid(ParseIdx(floats).status(), "element type 0x0d");
  ExpectInvalid(ParseIdx("").status(), "too short");
}

TEST(ParseIdxTest, EnforcesGunzipLimit) {
  DatasetLimits limits;
  limits.max_idx_bytes = 1000;
  std::string big = Gzip(Idx({2000}, std::vector<uint8_t>(2000)));
  ExpectInvalid(ParseIdx(big, limits).status(), "after gunzip");
}

// The gzip trailer's size is the sender's claim. tests/fuzz/idx_fuzzer
// found that a forged one (4 GiB on a 31-byte file) made ParseIdx allocate
// and zero that much before inflating a byte (corpus/idx/forged_gzip_size).
TEST(ParseIdxTest, DoesNotTrustTheGzipSizeTrailer) {
  DatasetLimits limits;
  limits.max_idx_bytes = int64_t{1} << 30;
  std::string gz = Gzip(Idx({3}, {1, 2, 3}));
  for (size_t i = gz.size() - 4; i < gz.size(); ++i) gz[i] = '\xff';
  rusage before{};
  ASSERT_EQ(getrusage(RUSAGE_SELF, &before), 0);
  // zlib checks the trailer against what it inflated.
  ExpectInvalid(ParseIdx(gz, limits).status(), "corrupt gzip");
  rusage after{};
  ASSERT_EQ(getrusage(RUSAGE_SELF, &after), 0);
  // Peak resident KiB: the buggy version grew it by the whole 1 GiB.
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 64 * 1024);
}

// A gzip bomb: a few KiB that inflate to far more than the header
// declares, or a header that declares more than the limit. Neither is
// inflated past the declared size, so memory stays small.
TEST(ParseIdxTest, InflatesNoMoreThanTheHeaderDeclares) {
  DatasetLimits limits;
  limits.max_idx_bytes = int64_t{1} << 30;
  std::string raw = Idx({10}, std::vector<uint8_t>(10, 1));
  raw += std::string(64 << 20, '\0');  // 64 MiB past the declared 10 bytes
  const std::string bomb = Gzip(raw);
  ASSERT_LT(bomb.size(), 256u << 10);
  rusage before{};
  ASSERT_EQ(getrusage(RUSAGE_SELF, &before), 0);
  ExpectInvalid(ParseIdx(bomb, limits).status(),
                "more data after gunzip than header dims 10 declare");
  rusage after{};
  ASSERT_EQ(getrusage(RUSAGE_SELF, &after), 0);
  EXPECT_LT(after.ru_maxrss - before.ru_maxrss, 16 * 1024);  // KiB

  limits.max_idx_bytes = 1 << 20;
  ExpectInvalid(ParseIdx(Gzip(Idx({2000, 28, 28}, std::vector<uint8_t>(
                                                      2000 * 28 * 28))),
                         limits)
                    .status(),
                "header dims 2000x28x28 declare more than 1048576 bytes");
  // A header cut short inside the dims is reported as such.
  ExpectInvalid(ParseIdx(Gzip(raw.substr(0, 6)), limits).status(), "too short");
}

// ---- LoadDataset: IDX
// ----------------------------------------------------------

TEST(LoadIdxDatasetTest, LoadsSmallDataset) {
  DatasetFiles files = SmallIdx(TestDir(), {0, 2, 1, 2});
  absl::StatusOr<DecodedDataset> got = LoadDataset(files);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->class_names, (std::vector<std::string>{"0", "1", "2"}));
  ASSERT_EQ(got->train.images.size(), 4u);
  EXPECT_EQ(got->train.labels, (std::vector<int32_t>{0, 2, 1, 2}));
  const Image& second = got->train.images[1];
  EXPECT_EQ(second.height, 2);
  EXPECT_EQ(second.width, 3);
  EXPECT_EQ(second.channels, 1);
  EXPECT_EQ(second.pixels, (std::vector<uint8_t>{6, 7, 8, 9, 10, 11}));
  EXPECT_TRUE(got->test.images.empty());
}

TEST(LoadIdxDatasetTest, RefusesLabelOutOfRange) {
  std::vector<uint8_t> labels(400, 3);
  labels[311] = 12;
  DatasetFiles files = SmallIdx(TestDir(), labels);
  files.class_names = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
  ExpectInvalid(LoadDataset(files).status(),
                "TRAIN_LABELS: label 12 at record 311 is outside [0, 10)");
}

TEST(LoadIdxDatasetTest, RefusesCountMismatch) {
  DatasetFiles files = SmallIdx(TestDir(), {0, 1, 1}, 4);
  ExpectInvalid(LoadDataset(files).status(),
                "TRAIN_LABELS: 3 labels but TRAIN_IMAGES has 4 images");
}

TEST(LoadIdxDatasetTest, RefusesMissingOrUnpairedParts) {
  std::string dir = TestDir();
  DatasetFiles files = SmallIdx(dir, {0, 1});
  DatasetFiles no_labels = files;
  no_labels.paths.erase(v1::TRAIN_LABELS);
  ExpectInvalid(LoadDataset(no_labels).status(), "TRAIN_LABELS");

  DatasetFiles half_test = files;
  half_test.paths[v1::TEST_IMAGES] = files.paths[v1::TRAIN_IMAGES];
  ExpectInvalid(LoadDataset(half_test).status(), "both TEST_IMAGES");

  DatasetFiles wrong_role = files;
  wrong_role.paths[v1::TRAIN_ARCHIVE] = files.paths[v1::TRAIN_IMAGES];
  ExpectInvalid(LoadDataset(wrong_role).status(), "TRAIN_ARCHIVE");

  DatasetFiles swapped = files;
  std::swap(swapped.paths[v1::TRAIN_IMAGES], swapped.paths[v1::TRAIN_LABELS]);
  ExpectInvalid(LoadDataset(swapped).status(), "TRAIN_IMAGES: want 3 dims");

  DatasetFiles missing_file = files;
  missing_file.paths[v1::TRAIN_LABELS] = dir + "/nope";
  EXPECT_FALSE(LoadDataset(missing_file).ok());

  DatasetFiles no_format = files;
  no_format.format = v1::DATASET_FORMAT_UNSPECIFIED;
  EXPECT_EQ(LoadDataset(no_format).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(LoadIdxDatasetTest, LoadsRealFashionMnist) {
  std::string dir = kFashionDir;
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    GTEST_SKIP() << dir << " is missing; install dataset-fashion-mnist";
  }
  DatasetFiles files;
  files.format = IDX;
  files.paths[v1::TRAIN_IMAGES] = dir + "/train-images-idx3-ubyte.gz";
  files.paths[v1::TRAIN_LABELS] = dir + "/train-labels-idx1-ubyte.gz";
  files.paths[v1::TEST_IMAGES] = dir + "/t10k-images-idx3-ubyte.gz";
  files.paths[v1::TEST_LABELS] = dir + "/t10k-labels-idx1-ubyte.gz";
  auto start = std::chrono::steady_clock::now();
  absl::StatusOr<DecodedDataset> got = LoadDataset(files);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(got->class_names.size(), 10u);
  ASSERT_EQ(got->train.images.size(), 60000u);
  ASSERT_EQ(got->train.labels.size(), 60000u);
  EXPECT_EQ(got->test.images.size(), 10000u);
  EXPECT_EQ(got->test.labels.size(), 10000u);
  int class0 = 0;
  for (int32_t label : got->train.labels) class0 += label == 0;
  EXPECT_EQ(class0, 6000);
  EXPECT_EQ(got->train.images[0].height, 28);
  EXPECT_EQ(got->train.images[0].width, 28);
  EXPECT_EQ(got->train.images[0].channels, 1);
}

// ---- LoadDataset: IMAGE_FOLDER_TAR
// ---------------------------------------------

DatasetFiles TarFiles(const std::string& train, const std::string& test = "") {
  DatasetFiles files;
  files.format = IMAGE_FOLDER_TAR;
  files.paths[v1::TRAIN_ARCHIVE] = train;
  if (!test.empty()) files.paths[v1::TEST_ARCHIVE] = test;
  return files;
}

std::vector<Entry> GoodEntries() {
  return {{"dog/", "", AE_IFDIR},    {"dog/1.png", Png(10)},
          {"dog/2.PNG", Png(20, 3)}, {"cat/a.png", Png(30)},
          {"cat/.DS_Store", "junk"}, {".DS_Store", "junk"}};
}

TEST(LoadTarDatasetTest, LoadsTwoClassArchive) {
  std::string dir = TestDir();
  std::vector<Entry> test_entries = {{"./cat/x.png", Png(50)}};
  absl::StatusOr<DecodedDataset> got = LoadDataset(
      TarFiles(WriteTar(dir + "/train.tar", GoodEntries()),
               WriteTar(dir + "/test.tar.gz", test_entries, /*gzip=*/true)));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->class_names, (std::vector<std::string>{"cat", "dog"}));
  ASSERT_EQ(got->train.images.size(), 3u);
  // Archive order is kept; labels index the sorted class names.
  EXPECT_EQ(got->train.labels, (std::vector<int32_t>{1, 1, 0}));
  EXPECT_EQ(got->train.images[0].pixels[0], 10);
  EXPECT_EQ(got->train.images[1].channels, 3);
  EXPECT_EQ(got->train.images[2].pixels[0], 30);
  ASSERT_EQ(got->test.images.size(), 1u);
  EXPECT_EQ(got->test.labels, (std::vector<int32_t>{0}));
}

TEST(LoadTarDatasetTest, RefusesEscapingEntries) {
  std::string dir = TestDir();
  std::vector<Entry> entries = GoodEntries();
  entries.push_back({"../x.png", Png(1)});
  ExpectInvalid(
      LoadDataset(TarFiles(WriteTar(dir + "/up.tar", entries))).status(),
      "TRAIN_ARCHIVE: entry '../x.png' escapes the archive");

  entries = GoodEntries();
  entries.push_back({"/etc/x.png", Png(1)});
  ExpectInvalid(
      LoadDataset(TarFiles(WriteTar(dir + "/abs.tar", entries))).status(),
      "entry '/etc/x.png' escapes the archive");

  entries = GoodEntries();
  entries.push_back({"cat\\x.png", Png(1)});
  ExpectInvalid(
      LoadDataset(TarFiles(WriteTar(dir + "/bs.tar", entries))).status(),
      "escapes the archive");
}

TEST(LoadTarDatasetTest, RefusesBadLayoutAndLinks) {
  std::string dir = TestDir();
  struct Case {
    Entry extra;
    std::string needle;
  };
  std::vector<Case> cases = {
      {{"top.png", Png(1)}, "entry 'top.png' is not at class_name/file"},
      {{"cat/deep/x.png", Png(1)}, "entry 'cat/deep/x.png' is not at"},
      {{"cat/readme.txt", "hello"}, "entry 'cat/readme.txt' is not an image"},
      {{"cat/link.png", "", AE_IFLNK, "a.png"}, "symbolic link"},
  };
  int i = 0;
  for (const Case& c : cases) {
    std::vector<Entry> entries = GoodEntries();
    entries.push_back(c.extra);
    std::string path =
        WriteTar(dir + "/" + std::to_string(i++) + ".tar", entries);
    ExpectInvalid(LoadDataset(TarFiles(path)).status(), c.needle);
  }
}

TEST(LoadTarDatasetTest, RefusesCorruptImageNamingTheEntry) {
  std::string dir = TestDir();
  std::string png = Png(1);
  std::string corrupt = png.substr(0, png.size() - 20);
  std::vector<Entry> entries = GoodEntries();
  entries.push_back({"cat/bad.png", corrupt});
  ExpectInvalid(
      LoadDataset(TarFiles(WriteTar(dir + "/c.tar", entries))).status(),
      "TRAIN_ARCHIVE: entry 'cat/bad.png': corrupt PNG");
}

TEST(LoadTarDatasetTest, RefusesUnknownClassInTestArchive) {
  std::string dir = TestDir();
  std::vector<Entry> test_entries = {{"cat/x.png", Png(1)},
                                     {"bird/y.png", Png(2)}};
  ExpectInvalid(
      LoadDataset(TarFiles(WriteTar(dir + "/train.tar", GoodEntries()),
                           WriteTar(dir + "/test.tar", test_entries)))
          .status(),
      "TEST_ARCHIVE: class folder 'bird' is not a class of TRAIN_ARCHIVE");
}

TEST(LoadTarDatasetTest, RefusesEmptyDatasetAndEmptyClass) {
  std::string dir = TestDir();
  ExpectInvalid(LoadDataset(TarFiles(WriteTar(dir + "/empty.tar",
                                              {{"cat/", "", AE_IFDIR}})))
                    .status(),
                "holds no images");
  std::vector<Entry> entries = GoodEntries();
  entries.push_back({"bird/", "", AE_IFDIR});
  ExpectInvalid(
      LoadDataset(TarFiles(WriteTar(dir + "/noclass.tar", entries))).status(),
      "class folder 'bird' has no images");
}

TEST(LoadTarDatasetTest, EnforcesLimits) {
  std::string dir = TestDir();
  std::string path = WriteTar(dir + "/t.tar", GoodEntries());
  DatasetLimits limits;
  limits.max_images = 2;
  ExpectInvalid(LoadDataset(TarFiles(path), limits).status(), "more than 2");
  limits = DatasetLimits{};
  limits.max_entry_bytes = 10;
  ExpectInvalid(LoadDataset(TarFiles(path), limits).status(), "limit of 10");
  limits = DatasetLimits{};
  limits.max_archive_entries = 3;
  ExpectInvalid(LoadDataset(TarFiles(path), limits).status(), "entries");

  // The decoded images together: exactly their size passes, a byte less
  // fails, however many threads decode.
  absl::StatusOr<DecodedDataset> all = LoadDataset(TarFiles(path));
  ASSERT_TRUE(all.ok()) << all.status();
  int64_t total = 0;
  for (const Image& image : all->train.images) total += image.pixels.size();
  ASSERT_GT(total, 0);
  for (int threads : {0, 3}) {
    DatasetLoadOptions options;
    options.decode_threads = threads;
    limits = DatasetLimits{};
    limits.max_decoded_bytes = total;
    EXPECT_TRUE(LoadDataset(TarFiles(path), limits, options).ok());
    limits.max_decoded_bytes = total - 1;
    ExpectInvalid(LoadDataset(TarFiles(path), limits, options).status(),
                  absl::StrCat("decode to more than ", total - 1, " bytes"));
  }
}

TEST(LoadTarDatasetTest, RefusesFilesThatAreNotArchives) {
  std::string dir = TestDir();
  ExpectInvalid(
      LoadDataset(TarFiles(WriteFile(dir + "/x.tar", std::string(3000, 'x'))))
          .status(),
      "TRAIN_ARCHIVE");
  EXPECT_FALSE(LoadDataset(TarFiles(dir + "/missing.tar")).ok());
}

// ---- LoadDataset: decode threads and fitting
// ----------------------------------------

// A gradient plus seeded noise: resizing and misplaced images show.
Image Pattern(int height, int width, int channels, uint32_t seed) {
  std::mt19937 rng(seed);
  Image image{height, width, channels, {}};
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        image.pixels.push_back(
            static_cast<uint8_t>(x * 9 + y * 5 + c * 70 + rng() % 40));
      }
    }
  }
  return image;
}

std::string Jpeg(const Image& image) {
  tjhandle tj = tjInitCompress();
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  EXPECT_EQ(tjCompress2(tj, image.pixels.data(), image.width, 0, image.height,
                        image.channels == 1 ? TJPF_GRAY : TJPF_RGB, &buf, &size,
                        image.channels == 1 ? TJSAMP_GRAY : TJSAMP_420, 90, 0),
            0)
      << tjGetErrorStr2(tj);
  std::string out(reinterpret_cast<char*>(buf), size);
  tjFree(buf);
  tjDestroy(tj);
  return out;
}

// `count` PNG and JPEG images of sizes from 5x6 to 27x34, gray and RGB,
// over three classes interleaved in archive order.
std::vector<Entry> MixedEntries(int count, uint32_t seed) {
  const char* kClasses[] = {"ant", "bee", "cow"};
  std::vector<Entry> entries;
  for (int i = 0; i < count; ++i) {
    Image image = Pattern(5 + (i * 7) % 23, 6 + (i * 11) % 29,
                          i % 4 == 0 ? 1 : 3, seed + i);
    const bool png = i % 2 == 1;
    entries.push_back(
        {absl::StrCat(kClasses[i % 3], "/", i, png ? ".png" : ".jpg"),
         png ? *EncodePng(image) : Jpeg(image)});
  }
  return entries;
}

void ExpectSameImages(const LabelledImages& want, const LabelledImages& got) {
  EXPECT_EQ(want.labels, got.labels);
  ASSERT_EQ(want.images.size(), got.images.size());
  for (size_t i = 0; i < want.images.size(); ++i) {
    EXPECT_EQ(want.images[i].height, got.images[i].height) << "image " << i;
    EXPECT_EQ(want.images[i].width, got.images[i].width) << "image " << i;
    EXPECT_EQ(want.images[i].channels, got.images[i].channels) << "image " << i;
    EXPECT_EQ(want.images[i].pixels, got.images[i].pixels) << "image " << i;
  }
}

void ExpectSameDataset(const DecodedDataset& want, const DecodedDataset& got) {
  EXPECT_EQ(want.class_names, got.class_names);
  ExpectSameImages(want.train, got.train);
  ExpectSameImages(want.test, got.test);
}

DatasetLoadOptions Threads(int threads, int64_t max_pending_bytes = 0) {
  DatasetLoadOptions options;
  options.decode_threads = threads;
  if (max_pending_bytes > 0) options.max_pending_bytes = max_pending_bytes;
  return options;
}

TEST(LoadTarDatasetTest, DecodeThreadsGiveTheSameDataset) {
  std::string dir = TestDir();
  DatasetFiles files =
      TarFiles(WriteTar(dir + "/train.tar", MixedEntries(40, 1)),
               WriteTar(dir + "/test.tar.gz", MixedEntries(10, 100), true));
  absl::StatusOr<DecodedDataset> one = LoadDataset(files, {}, Threads(1));
  ASSERT_TRUE(one.ok()) << one.status();
  ASSERT_EQ(one->train.images.size(), 40u);
  EXPECT_EQ(one->class_names, (std::vector<std::string>{"ant", "bee", "cow"}));
  EXPECT_EQ(one->train.images[1].height, 12);  // 5 + 7
  EXPECT_EQ(one->train.images[1].width, 17);   // 6 + 11
  // A queue of 1 byte holds one entry at a time: the reader waits on the
  // decoders after every image.
  for (const DatasetLoadOptions& options : {Threads(3), Threads(3, 1)}) {
    for (int round = 0; round < 3; ++round) {
      absl::StatusOr<DecodedDataset> three = LoadDataset(files, {}, options);
      ASSERT_TRUE(three.ok()) << three.status();
      ExpectSameDataset(*one, *three);
    }
  }
}

TEST(LoadTarDatasetTest, DecodeThreadsReportTheFirstBadEntry) {
  std::string dir = TestDir();
  std::vector<Entry> entries = MixedEntries(40, 7);
  // Entry 20 fails late (most of a large JPEG decodes first); 23 fails at
  // once; a layout error follows. With threads 23 usually fails first, yet
  // 20 is the first in archive order.
  std::string big = Jpeg(Pattern(700, 900, 3, 5));
  entries[20] = {"bee/20.jpg", big.substr(0, big.size() * 9 / 10)};
  entries[23] = {"cow/23.png", "not an image at all"};
  entries.push_back({"deep/er/x.png", Png(1)});
  const std::string path = WriteTar(dir + "/bad.tar", entries);
  absl::Status one = LoadDataset(TarFiles(path), {}, Threads(1)).status();
  ExpectInvalid(one, "TRAIN_ARCHIVE: entry 'bee/20.jpg': corrupt JPEG");
  for (const DatasetLoadOptions& options : {Threads(3), Threads(3, 1)}) {
    for (int round = 0; round < 3; ++round) {
      EXPECT_EQ(LoadDataset(TarFiles(path), {}, options).status(), one);
    }
  }

  // Without entry 20, 23 is first; without both, the reader's error.
  entries[20] = {"bee/20.jpg", Jpeg(Pattern(7, 9, 3, 5))};
  const std::string path23 = WriteTar(dir + "/bad23.tar", entries);
  absl::Status one23 = LoadDataset(TarFiles(path23), {}, Threads(1)).status();
  ExpectInvalid(one23, "TRAIN_ARCHIVE: entry 'cow/23.png': not a PNG or JPEG");
  EXPECT_EQ(LoadDataset(TarFiles(path23), {}, Threads(3)).status(), one23);
  entries[23] = {"cow/23.png", Png(3)};
  const std::string layout = WriteTar(dir + "/layout.tar", entries);
  absl::Status one_layout =
      LoadDataset(TarFiles(layout), {}, Threads(1)).status();
  ExpectInvalid(one_layout, "entry 'deep/er/x.png' is not at class_name");
  EXPECT_EQ(LoadDataset(TarFiles(layout), {}, Threads(3)).status(), one_layout);
}

TEST(LoadTarDatasetTest, FitsImagesThatShrinkToTheGivenSize) {
  std::string dir = TestDir();
  DatasetFiles files =
      TarFiles(WriteTar(dir + "/train.tar", MixedEntries(40, 3)),
               WriteTar(dir + "/test.tar", MixedEntries(6, 300)));
  absl::StatusOr<DecodedDataset> plain = LoadDataset(files);
  ASSERT_TRUE(plain.ok()) << plain.status();
  // Images with more than 16 x 12 pixels are shrunk to it; smaller ones
  // are kept as stored (enlarging them would only cost memory).
  DecodedDataset want = *plain;
  int shrunk = 0;
  int kept = 0;
  for (LabelledImages* split : {&want.train, &want.test}) {
    for (Image& image : split->images) {
      if (image.height * image.width > 16 * 12) {
        image = ResizeBilinear(image, 16, 12);
        ++shrunk;
      } else {
        ++kept;
      }
    }
  }
  ASSERT_GT(shrunk, 0);
  ASSERT_GT(kept, 0);
  for (int threads : {1, 3}) {
    DatasetLoadOptions options = Threads(threads);
    options.fit_height = 16;
    options.fit_width = 12;
    absl::StatusOr<DecodedDataset> fitted = LoadDataset(files, {}, options);
    ASSERT_TRUE(fitted.ok()) << fitted.status();
    ASSERT_EQ(fitted->train.images.size(), 40u);
    EXPECT_EQ(fitted->train.images[0].channels, 1);
    EXPECT_EQ(fitted->train.images[1].channels, 3);
    for (const Image& image : fitted->train.images) {
      EXPECT_TRUE((image.height == 16 && image.width == 12) ||
                  image.height * image.width <= 16 * 12)
          << image.height << "x" << image.width;
    }
    ExpectSameDataset(want, *fitted);
  }
  DatasetLoadOptions bad;
  bad.fit_height = -1;
  ExpectInvalid(LoadDataset(files, {}, bad).status(), "fit size -1x0");
}

TEST(LoadTarDatasetTest, FitsTheShorterSideAndCropsTheSameAsUnfitted) {
  std::string dir = TestDir();
  DatasetFiles files =
      TarFiles(WriteTar(dir + "/train.tar", MixedEntries(40, 5)),
               WriteTar(dir + "/test.tar", MixedEntries(6, 500)));
  absl::StatusOr<DecodedDataset> plain = LoadDataset(files);
  ASSERT_TRUE(plain.ok()) << plain.status();
  // The worker loads at the shorter side a RESIZE_CENTER_CROP fit resizes
  // to; the crop it then cuts must equal the crop of the image as stored,
  // which is what inference fits.
  tlserve::v1::InputSpec spec;
  spec.set_channels(3);
  spec.set_height(7);
  spec.set_width(7);
  spec.mutable_fit()->set_mode(tlserve::v1::InputFit::RESIZE_CENTER_CROP);
  spec.mutable_fit()->set_shorter_side(9);
  for (int threads : {1, 3}) {
    DatasetLoadOptions options = Threads(threads);
    options.fit_shorter_side = 9;
    absl::StatusOr<DecodedDataset> fitted = LoadDataset(files, {}, options);
    ASSERT_TRUE(fitted.ok()) << fitted.status();
    ASSERT_EQ(fitted->train.images.size(), plain->train.images.size());
    int shrunk = 0;
    for (size_t i = 0; i < plain->train.images.size(); ++i) {
      const Image& stored = plain->train.images[i];
      const Image& held = fitted->train.images[i];
      if (std::min(stored.height, stored.width) > 9) {
        // Shrunk with its aspect ratio: the shorter side is 9.
        EXPECT_EQ(std::min(held.height, held.width), 9) << i;
        ++shrunk;
      } else {
        EXPECT_EQ(held.pixels, stored.pixels) << i;
      }
      EXPECT_EQ(FitImage(held, spec).pixels, FitImage(stored, spec).pixels)
          << "image " << i << " " << stored.height << "x" << stored.width;
    }
    EXPECT_GT(shrunk, 0);
  }
  DatasetLoadOptions bad;
  bad.fit_shorter_side = -2;
  ExpectInvalid(LoadDataset(files, {}, bad).status(), "fit shorter side -2");
}

TEST(LoadIdxDatasetTest, FitsImagesOnlyWhenTheyShrink) {
  DatasetFiles files = SmallIdx(TestDir(), {0, 2, 1, 2});
  absl::StatusOr<DecodedDataset> plain = LoadDataset(files);
  ASSERT_TRUE(plain.ok()) << plain.status();
  DatasetLoadOptions options;
  options.fit_height = 1;
  options.fit_width = 2;
  absl::StatusOr<DecodedDataset> fitted = LoadDataset(files, {}, options);
  ASSERT_TRUE(fitted.ok()) << fitted.status();
  EXPECT_EQ(fitted->train.labels, plain->train.labels);
  ASSERT_EQ(fitted->train.images.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const Image want = ResizeBilinear(plain->train.images[i], 1, 2);
    EXPECT_EQ(fitted->train.images[i].height, 1);
    EXPECT_EQ(fitted->train.images[i].width, 2);
    EXPECT_EQ(fitted->train.images[i].pixels, want.pixels) << i;
  }
  // Larger than stored, or the same size: kept as stored.
  for (auto [h, w] : {std::pair{5, 4}, std::pair{2, 3}}) {
    options.fit_height = h;
    options.fit_width = w;
    fitted = LoadDataset(files, {}, options);
    ASSERT_TRUE(fitted.ok()) << fitted.status();
    ExpectSameDataset(*plain, *fitted);
  }
}

}  // namespace
}  // namespace tlserve
