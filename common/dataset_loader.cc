// IDX and image-folder tar datasets -> decoded images and labels.

#include "common/dataset_loader.h"

#include <archive.h>
#include <archive_entry.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <optional>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/input_fit.h"
#include "common/status_macros.h"

namespace tlserve {
namespace {

using ::tlserve::v1::DatasetPartRole;

// Keeps the code, puts the part's role in front of the message.
absl::Status WithRole(const absl::Status& status, DatasetPartRole role) {
  if (status.ok()) return status;
  return absl::Status(
      status.code(), absl::StrCat(tlserve::v1::DatasetPartRole_Name(role), ": ",
                                  status.message()));
}

// The image as held under `options`: resized to the fit size, if any.
Image Fit(Image image, const DatasetLoadOptions& options) {
  if (options.fit_shorter_side > 0) {
    if (std::min(image.height, image.width) <= options.fit_shorter_side) {
      return image;
    }
    int height = 0;
    int width = 0;
    ShorterSideSize(image.height, image.width, options.fit_shorter_side,
                    &height, &width);
    return ResizeBilinear(image, height, width);
  }
  const int height = options.fit_height > 0 ? options.fit_height : image.height;
  const int width = options.fit_width > 0 ? options.fit_width : image.width;
  // Only shrinking saves memory: a smaller image is held as it is and
  // resized later by the same ResizeBilinear (worker ConvertInto), so the
  // training tensors come out the same either way.
  if (int64_t{height} * width >= int64_t{image.height} * image.width) {
    return image;
  }
  return ResizeBilinear(image, height, width);
}

// ---- IDX
// ---------------------------------------------------------------------

// Inflates at most max_bytes. prefix: stopping there is success (the
// caller wants only the start); otherwise more output is an error, with
// `excess` as its message when given.
absl::StatusOr<std::vector<uint8_t>> Gunzip(std::string_view bytes,
                                            int64_t max_bytes,
                                            bool prefix = false,
                                            std::string_view excess = "") {
  z_stream zs;
  std::memset(&zs, 0, sizeof(zs));
  // 16 + MAX_WBITS: gzip wrapper only.
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) {
    return absl::ResourceExhaustedError("IDX: zlib init failed");
  }
  absl::Cleanup end = [&zs] { inflateEnd(&zs); };
  std::vector<uint8_t> out;
  // The gzip trailer's ISIZE (size mod 2^32) is a good first guess; +1 so
  // an exact guess does not force a regrow just to see the stream end.
  // It is only the sender's word, though: deflate expands at most 1032:1,
  // so a larger claim is capped there (a forged trailer on a 31-byte
  // upload once made this allocate 4 GiB before inflating anything).
  constexpr int64_t kMaxDeflateRatio = 1032;
  int64_t guess = int64_t{1} << 16;
  if (bytes.size() >= 18) {
    const auto* t =
        reinterpret_cast<const uint8_t*>(bytes.data() + bytes.size() - 4);
    const int64_t isize = (uint32_t{t[3]} << 24) | (uint32_t{t[2]} << 16) |
                          (uint32_t{t[1]} << 8) | t[0];
    guess = std::max<int64_t>(
        guess,
        std::min<int64_t>(isize, static_cast<int64_t>(bytes.size()) *
                                     kMaxDeflateRatio) +
            1);
  }
  out.resize(std::min<int64_t>(max_bytes, guess));
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  size_t in_left = bytes.size();
  size_t produced = 0;
  int ret = Z_OK;
  while (ret != Z_STREAM_END) {
    if (produced == out.size()) {
      if (static_cast<int64_t>(out.size()) >= max_bytes) {
        if (prefix) break;
        if (!excess.empty()) {
          return absl::InvalidArgumentError(std::string(excess));
        }
        return absl::InvalidArgumentError(absl::StrCat(
            "IDX: more than ", max_bytes, " bytes after gunzip (the limit)"));
      }
      out.resize(std::min<int64_t>(max_bytes, out.size() * 2));
    }
    // zlib counts in uInt; feed it at most 1 GiB at a time.
    constexpr size_t kChunk = 1u << 30;
    uInt in_now = static_cast<uInt>(std::min(in_left, kChunk));
    uInt out_now = static_cast<uInt>(std::min(out.size() - produced, kChunk));
    zs.avail_in = in_now;
    zs.next_out = out.data() + produced;
    zs.avail_out = out_now;
    ret = inflate(&zs, Z_NO_FLUSH);
    in_left -= in_now - zs.avail_in;
    produced += out_now - zs.avail_out;
    if (ret == Z_STREAM_END) break;
    if (ret == Z_BUF_ERROR && in_left == 0 && zs.avail_out > 0) {
      return absl::InvalidArgumentError(
          "IDX: gzip data is truncated (the upload may be incomplete)");
    }
    if (ret != Z_OK && ret != Z_BUF_ERROR) {
      return absl::InvalidArgumentError(absl::StrCat(
          "IDX: corrupt gzip data: ", zs.msg ? zs.msg : "inflate failed"));
    }
  }
  out.resize(produced);
  return out;
}

// A gzip'd IDX file. Its header declares the size: that is inflated first
// and checked against the limit, so a bomb (a small upload that inflates
// to gigabytes) is refused before anything large is allocated, and no
// more than the declared size is ever inflated.
absl::StatusOr<std::vector<uint8_t>> GunzipIdx(std::string_view bytes,
                                               int64_t max_bytes) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> head, Gunzip(bytes, 4, true));
  // Not an IDX header: ParseRawIdx names what is wrong with it.
  if (head.size() < 4 || head[0] != 0 || head[1] != 0 || head[2] != 0x08 ||
      head[3] == 0) {
    return head;
  }
  const int ndims = head[3];
  const int64_t header = 4 + 4 * int64_t{ndims};
  ASSIGN_OR_RETURN(head, Gunzip(bytes, header, true));
  if (static_cast<int64_t>(head.size()) < header) return head;
  std::vector<int64_t> dims;
  int64_t declared = 1;
  for (int i = 0; i < ndims; ++i) {
    const uint8_t* p = head.data() + 4 + 4 * i;
    const int64_t d = (int64_t{p[0]} << 24) | (int64_t{p[1]} << 16) |
                      (int64_t{p[2]} << 8) | int64_t{p[3]};
    dims.push_back(d);
    // Saturates past the limit, where the exact product does not matter.
    if (d != 0 && declared > (max_bytes + 1) / d) {
      declared = max_bytes + 1;
    } else {
      declared *= d;
    }
  }
  if (declared > max_bytes - header) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IDX: header dims ", absl::StrJoin(dims, "x"), " declare more than ",
        max_bytes, " bytes after gunzip, the limit"));
  }
  // One byte over the declared size, so that extra data is seen and named.
  return Gunzip(bytes, header + declared + 1, false,
                absl::StrCat("IDX: more data after gunzip than header dims ",
                             absl::StrJoin(dims, "x"), " declare"));
}

// The data after the header, with dims checked against its size.
absl::StatusOr<IdxArray> ParseRawIdx(std::vector<uint8_t> bytes) {
  if (bytes.size() < 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IDX: file has ", bytes.size(), " bytes, too short for a header"));
  }
  if (bytes[0] != 0 || bytes[1] != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX: bad magic %02x %02x %02x %02x (want 00 00 08 <ndims>); is this "
        "an IDX file?",
        bytes[0], bytes[1], bytes[2], bytes[3]));
  }
  if (bytes[2] != 0x08) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "IDX: element type 0x%02x is not supported; only unsigned bytes "
        "(0x08)",
        bytes[2]));
  }
  const int ndims = bytes[3];
  if (ndims == 0) return absl::InvalidArgumentError("IDX: header has 0 dims");
  const size_t header = 4 + 4 * static_cast<size_t>(ndims);
  if (bytes.size() < header) {
    return absl::InvalidArgumentError(
        absl::StrCat("IDX: file has ", bytes.size(), " bytes, too short for a ",
                     ndims, "-dim header (", header, " bytes)"));
  }
  IdxArray array;
  uint64_t need = 1;
  bool overflow = false;
  for (int i = 0; i < ndims; ++i) {
    const uint8_t* p = bytes.data() + 4 + 4 * i;
    uint32_t d = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
                 (uint32_t{p[2]} << 8) | uint32_t{p[3]};
    if (d > 0x7fffffffu) {
      return absl::InvalidArgumentError(
          absl::StrCat("IDX: dim ", i, " is ", d, ", too large"));
    }
    array.dims.push_back(static_cast<int32_t>(d));
    if (d != 0 && need > (uint64_t{1} << 62) / d) overflow = true;
    need *= d;
  }
  const uint64_t have = bytes.size() - header;
  if (overflow || have != need) {
    return absl::InvalidArgumentError(absl::StrCat(
        "IDX: file has ", have, " bytes of data but header dims ",
        absl::StrJoin(array.dims, "x"), " need ",
        overflow ? std::string("more than 2^62") : absl::StrCat(need)));
  }
  bytes.erase(bytes.begin(), bytes.begin() + header);
  array.data = std::move(bytes);
  return array;
}

// ---- IDX datasets
// ------------------------------------------------------------

absl::StatusOr<IdxArray> LoadIdxPart(const DatasetFiles& files,
                                     DatasetPartRole role,
                                     const DatasetLimits& limits) {
  absl::StatusOr<std::string> bytes = ReadFile(files.paths.at(role));
  if (!bytes.ok()) return WithRole(bytes.status(), role);
  absl::StatusOr<IdxArray> array = ParseIdx(*bytes, limits);
  if (!array.ok()) return WithRole(array.status(), role);
  return array;
}

// Reads one split; labels are checked against the class count later.
absl::Status LoadIdxSplit(const DatasetFiles& files,
                          DatasetPartRole images_role,
                          DatasetPartRole labels_role,
                          const DatasetLimits& limits,
                          const DatasetLoadOptions& options,
                          int64_t* images_so_far, LabelledImages* out) {
  const std::string images_name =
      tlserve::v1::DatasetPartRole_Name(images_role);
  ASSIGN_OR_RETURN(IdxArray images, LoadIdxPart(files, images_role, limits));
  if (images.dims.size() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        images_name, ": want 3 dims [N, height, width], got ",
        images.dims.size(), " (", absl::StrJoin(images.dims, "x"), ")"));
  }
  const int64_t n = images.dims[0];
  const int h = images.dims[1];
  const int w = images.dims[2];
  if (h <= 0 || w <= 0 || h > limits.image.max_side ||
      w > limits.image.max_side || int64_t{h} * w > limits.image.max_pixels) {
    return absl::InvalidArgumentError(
        absl::StrCat(images_name, ": image size ", h, "x", w,
                     " is empty or over the image limits"));
  }
  *images_so_far += n;
  if (*images_so_far > limits.max_images) {
    return absl::InvalidArgumentError(
        absl::StrCat(images_name, ": dataset has more than ", limits.max_images,
                     " images (the limit)"));
  }
  ASSIGN_OR_RETURN(IdxArray labels, LoadIdxPart(files, labels_role, limits));
  const std::string labels_name =
      tlserve::v1::DatasetPartRole_Name(labels_role);
  if (labels.dims.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(labels_name, ": want 1 dim [N], got ", labels.dims.size(),
                     " (", absl::StrJoin(labels.dims, "x"), ")"));
  }
  if (labels.dims[0] != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(labels_name, ": ", labels.dims[0], " labels but ",
                     images_name, " has ", n, " images"));
  }
  const size_t image_bytes = static_cast<size_t>(h) * w;
  out->images.resize(n);
  out->labels.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    Image image;
    image.height = h;
    image.width = w;
    image.channels = 1;
    const uint8_t* src = images.data.data() + i * image_bytes;
    image.pixels.assign(src, src + image_bytes);
    out->images[i] = Fit(std::move(image), options);
    out->labels[i] = labels.data[i];
  }
  return absl::OkStatus();
}

absl::Status CheckLabels(const LabelledImages& split, DatasetPartRole role,
                         size_t num_classes) {
  for (size_t i = 0; i < split.labels.size(); ++i) {
    if (split.labels[i] < 0 ||
        static_cast<size_t>(split.labels[i]) >= num_classes) {
      return absl::InvalidArgumentError(absl::StrCat(
          tlserve::v1::DatasetPartRole_Name(role), ": label ", split.labels[i],
          " at record ", i, " is outside [0, ", num_classes, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<DecodedDataset> LoadIdxDataset(
    const DatasetFiles& files, const DatasetLimits& limits,
    const DatasetLoadOptions& options) {
  for (DatasetPartRole role : {v1::TRAIN_IMAGES, v1::TRAIN_LABELS}) {
    if (!files.paths.count(role)) {
      return absl::InvalidArgumentError(
          absl::StrCat("IDX datasets need ", v1::DatasetPartRole_Name(role),
                       " (and TRAIN_IMAGES, TRAIN_LABELS); it is missing"));
    }
  }
  const bool has_test_images = files.paths.count(v1::TEST_IMAGES) > 0;
  const bool has_test_labels = files.paths.count(v1::TEST_LABELS) > 0;
  if (has_test_images != has_test_labels) {
    return absl::InvalidArgumentError(
        "IDX datasets need both TEST_IMAGES and TEST_LABELS, or neither");
  }
  DecodedDataset dataset;
  int64_t total = 0;
  RETURN_IF_ERROR(LoadIdxSplit(files, v1::TRAIN_IMAGES, v1::TRAIN_LABELS,
                               limits, options, &total, &dataset.train));
  if (dataset.train.images.empty()) {
    return absl::InvalidArgumentError("TRAIN_IMAGES: the file holds no images");
  }
  if (has_test_images) {
    RETURN_IF_ERROR(LoadIdxSplit(files, v1::TEST_IMAGES, v1::TEST_LABELS,
                                 limits, options, &total, &dataset.test));
  }
  if (!files.class_names.empty()) {
    dataset.class_names = files.class_names;
  } else {
    int32_t max_label = 0;
    for (const LabelledImages* split : {&dataset.train, &dataset.test}) {
      for (int32_t label : split->labels)
        max_label = std::max(max_label, label);
    }
    for (int32_t k = 0; k <= max_label; ++k) {
      dataset.class_names.push_back(absl::StrCat(k));
    }
  }
  RETURN_IF_ERROR(
      CheckLabels(dataset.train, v1::TRAIN_LABELS, dataset.class_names.size()));
  RETURN_IF_ERROR(
      CheckLabels(dataset.test, v1::TEST_LABELS, dataset.class_names.size()));
  return dataset;
}

// ---- image-folder tar datasets
// -----------------------------------------------

// Images of one archive, labelled by folder name until classes are known.
struct FolderImages {
  std::vector<Image> images;
  std::vector<std::string> folders;   // same length as images
  std::vector<std::string> entries;   // tar paths, same length as images
  std::set<std::string> all_folders;  // including empty ones
};

bool IsImageExtension(std::string_view name) {
  size_t dot = name.rfind('.');
  if (dot == std::string_view::npos) return false;
  std::string ext = absl::AsciiStrToLower(
      absl::string_view(name.data() + dot + 1, name.size() - dot - 1));
  return ext == "png" || ext == "jpg" || ext == "jpeg";
}

// Decodes and fits the images of one archive in the order they are added:
// on the calling thread (decode_threads <= 1), or on decode_threads threads
// fed through a queue bounded in encoded bytes. Whichever thread decodes
// an image, it lands at its index, and Finish() reports the failure of the
// earliest failing image, so the outcome does not depend on the thread
// count. One reader thread calls Add and Finish; the destructor stops and
// joins the threads.
class EntryDecoder {
 public:
  struct Failure {
    std::string entry;  // the tar path
    absl::Status status;
  };

  // max_decoded_bytes: the most pixel bytes the archive's images may hold
  // together (0: no bound).
  EntryDecoder(const ImageLimits& limits, const DatasetLoadOptions& options,
               int64_t max_decoded_bytes)
      : limits_(limits),
        options_(options),
        max_decoded_bytes_(max_decoded_bytes) {
    if (options.decode_threads <= 1) return;
    for (int i = 0; i < options.decode_threads; ++i) {
      // Fewer threads (none: decode on the caller) only cost speed.
      try {
        threads_.emplace_back([this] { Loop(); });
      } catch (const std::system_error&) {
        break;
      }
    }
  }

  ~EntryDecoder() {
    {
      absl::MutexLock lock(&mu_);
      stop_ = true;
    }
    work_cv_.SignalAll();
    for (std::thread& thread : threads_) thread.join();
  }

  EntryDecoder(const EntryDecoder&) = delete;
  EntryDecoder& operator=(const EntryDecoder&) = delete;

  // Decodes `bytes` of entry `name` or queues them, waiting while the queue
  // is full. False once an added image has failed: later entries cannot
  // change the outcome, so the reader may stop.
  bool Add(std::string name, std::string bytes) {
    if (threads_.empty()) {
      absl::StatusOr<Image> image = DecodeAndFit(bytes);
      absl::MutexLock lock(&mu_);
      images_.emplace_back();
      Store(static_cast<int64_t>(images_.size()) - 1, name, std::move(image));
      return failed_index_ < 0;
    }
    const int64_t size = static_cast<int64_t>(bytes.size());
    {
      absl::MutexLock lock(&mu_);
      // One entry always fits, so an entry over the bound cannot block.
      while (failed_index_ < 0 && pending_bytes_ > 0 &&
             pending_bytes_ + size > options_.max_pending_bytes) {
        done_cv_.Wait(&mu_);
      }
      if (failed_index_ >= 0) return false;
      images_.emplace_back();
      queue_.push_back(Job{static_cast<int64_t>(images_.size()) - 1,
                           std::move(name), std::move(bytes)});
      pending_bytes_ += size;
    }
    work_cv_.Signal();
    return true;
  }

  // Waits for every added image; the earliest failure, if any.
  std::optional<Failure> Finish() {
    absl::MutexLock lock(&mu_);
    while (!queue_.empty() || busy_ > 0) done_cv_.Wait(&mu_);
    if (failed_index_ < 0) return std::nullopt;
    return failure_;
  }

  // After Finish: the images in the order they were added.
  std::vector<Image> TakeImages() {
    absl::MutexLock lock(&mu_);
    return std::move(images_);
  }

 private:
  struct Job {
    int64_t index = 0;
    std::string name;
    std::string bytes;
  };

  absl::StatusOr<Image> DecodeAndFit(const std::string& bytes) const {
    absl::StatusOr<Image> image = DecodeImage(bytes, limits_);
    if (!image.ok()) return image;
    return Fit(*std::move(image), options_);
  }

  void Store(int64_t index, const std::string& name,
             absl::StatusOr<Image> image) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (image.ok()) {
      decoded_bytes_ += static_cast<int64_t>(image->pixels.size());
      // Small images that decode to gigabytes together (a tar of large
      // PNGs of one colour compresses to almost nothing) stop here, at the
      // image that crosses the bound.
      if (max_decoded_bytes_ > 0 && decoded_bytes_ > max_decoded_bytes_) {
        image = absl::InvalidArgumentError(absl::StrCat(
            "the archive's images decode to more than ", max_decoded_bytes_,
            " bytes, the limit"));
      }
    }
    if (image.ok()) {
      images_[index] = *std::move(image);
    } else if (failed_index_ < 0 || index < failed_index_) {
      failed_index_ = index;
      failure_ = Failure{name, image.status()};
    }
  }

  void Loop() {
    while (true) {
      Job job;
      bool skip = false;
      {
        absl::MutexLock lock(&mu_);
        while (!stop_ && queue_.empty()) work_cv_.Wait(&mu_);
        if (stop_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
        ++busy_;
        // An earlier image failed: this one cannot change the outcome.
        skip = failed_index_ >= 0 && job.index > failed_index_;
      }
      absl::StatusOr<Image> image =
          skip ? absl::StatusOr<Image>(Image{}) : DecodeAndFit(job.bytes);
      {
        absl::MutexLock lock(&mu_);
        Store(job.index, job.name, std::move(image));
        pending_bytes_ -= static_cast<int64_t>(job.bytes.size());
        --busy_;
      }
      done_cv_.SignalAll();
    }
  }

  const ImageLimits limits_;
  const DatasetLoadOptions options_;
  const int64_t max_decoded_bytes_;
  absl::Mutex mu_;
  int64_t decoded_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  absl::CondVar work_cv_;  // queue_ gained a job, or stop_
  absl::CondVar done_cv_;  // a job finished
  std::deque<Job> queue_ ABSL_GUARDED_BY(mu_);
  // Encoded bytes queued or being decoded.
  int64_t pending_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int busy_ ABSL_GUARDED_BY(mu_) = 0;  // jobs being decoded
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Image> images_ ABSL_GUARDED_BY(mu_);  // by index of Add
  int64_t failed_index_ ABSL_GUARDED_BY(mu_) = -1;
  Failure failure_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_;
};

// Reads entries in archive order and hands the images to `decoder`. An
// error here is later in the archive than every image added so far.
absl::Status ReadEntries(struct archive* a, const std::string& role_name,
                         const DatasetLimits& limits, int64_t* images_so_far,
                         EntryDecoder* decoder, FolderImages* out) {
  int64_t entries = 0;
  while (true) {
    struct archive_entry* entry = nullptr;
    int r = archive_read_next_header(a, &entry);
    if (r == ARCHIVE_EOF) break;
    if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
      return absl::InvalidArgumentError(absl::StrCat(
          role_name, ": not a readable tar archive: ",
          archive_error_string(a) ? archive_error_string(a) : "unknown error"));
    }
    if (++entries > limits.max_archive_entries) {
      return absl::InvalidArgumentError(absl::StrCat(role_name, ": more than ",
                                                     limits.max_archive_entries,
                                                     " entries (the limit)"));
    }
    const char* raw_name = archive_entry_pathname(entry);
    if (raw_name == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(role_name, ": entry ", entries, " has no path"));
    }
    const std::string name = raw_name;
    // `why` starts with its separator: " escapes ..." or ": corrupt PNG".
    auto refuse = [&](std::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat(role_name, ": entry '", name, "'",
                       absl::string_view(why.data(), why.size())));
    };
    if (name.empty() || name[0] == '/' ||
        name.find('\\') != std::string::npos) {
      return refuse(" escapes the archive (absolute path or backslash)");
    }
    // "./cls/a.png" (tar -C dir .) and trailing slashes of folders are
    // harmless; every other component must be a plain name.
    std::vector<std::string> parts;
    bool hidden = false;
    for (absl::string_view part : absl::StrSplit(name, '/')) {
      if (part.empty() || part == ".") continue;
      if (part == "..") return refuse(" escapes the archive");
      if (part[0] == '.') hidden = true;
      parts.emplace_back(part);
    }
    const mode_t type = archive_entry_filetype(entry);
    if (archive_entry_hardlink(entry) != nullptr) {
      return refuse(" is a hard link; links are not allowed");
    }
    if (type == AE_IFLNK || archive_entry_symlink(entry) != nullptr) {
      return refuse(" is a symbolic link; links are not allowed");
    }
    // Hidden files (.DS_Store, ._x.png) are editor/OS litter, not data.
    if (hidden) continue;
    if (type == AE_IFDIR) {
      if (parts.size() == 1) out->all_folders.insert(parts[0]);
      if (parts.size() > 1) {
        return refuse(" is a nested folder; want class_name/file.png");
      }
      continue;
    }
    if (type != AE_IFREG) return refuse(" is not a regular file");
    if (parts.size() != 2) {
      return refuse(" is not at class_name/file.(png|jpg|jpeg)");
    }
    if (!IsImageExtension(parts[1])) {
      return refuse(" is not an image; want .png, .jpg or .jpeg files");
    }
    if (archive_entry_size_is_set(entry) &&
        archive_entry_size(entry) > limits.max_entry_bytes) {
      return refuse(absl::StrCat(" has ", archive_entry_size(entry),
                                 " bytes, more than the limit of ",
                                 limits.max_entry_bytes));
    }
    if (++*images_so_far > limits.max_images) {
      return absl::InvalidArgumentError(
          absl::StrCat(role_name, ": dataset has more than ", limits.max_images,
                       " images (the limit)"));
    }
    // Read entry by entry, so memory holds one encoded image at a time
    // here (plus the decoder's bounded queue).
    std::string data;
    if (archive_entry_size_is_set(entry) && archive_entry_size(entry) > 0) {
      data.reserve(static_cast<size_t>(archive_entry_size(entry)));
    }
    char buf[1 << 16];
    while (true) {
      la_ssize_t n = archive_read_data(a, buf, sizeof(buf));
      if (n == 0) break;
      if (n < 0) {
        return refuse(
            absl::StrCat(" cannot be read: ", archive_error_string(a)
                                                  ? archive_error_string(a)
                                                  : "unknown error"));
      }
      data.append(buf, static_cast<size_t>(n));
      if (static_cast<int64_t>(data.size()) > limits.max_entry_bytes) {
        return refuse(absl::StrCat(" has more than the limit of ",
                                   limits.max_entry_bytes, " bytes"));
      }
    }
    out->folders.push_back(parts[0]);
    out->entries.push_back(name);
    out->all_folders.insert(parts[0]);
    // An earlier image failed; the caller reports it.
    if (!decoder->Add(name, std::move(data))) return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status ReadArchive(const std::string& path, DatasetPartRole role,
                         const DatasetLimits& limits,
                         const DatasetLoadOptions& options,
                         int64_t* images_so_far, FolderImages* out) {
  const std::string role_name = tlserve::v1::DatasetPartRole_Name(role);
  struct archive* a = archive_read_new();
  if (a == nullptr) return absl::ResourceExhaustedError("libarchive init");
  absl::Cleanup free_archive = [a] { archive_read_free(a); };
  archive_read_support_filter_gzip(a);
  archive_read_support_format_tar(a);
  archive_read_support_format_gnutar(a);
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) != ARCHIVE_OK) {
    int err = archive_errno(a);
    // The part's role names it; the path is the server's own business.
    std::string msg = absl::StrCat(
        role_name, ": not a readable tar archive: ",
        archive_error_string(a) ? archive_error_string(a) : std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(msg);
    return absl::InvalidArgumentError(msg);
  }
  EntryDecoder decoder(limits.image, options, limits.max_decoded_bytes);
  const absl::Status read =
      ReadEntries(a, role_name, limits, images_so_far, &decoder, out);
  // A failed image comes before anything the reader refused, since the
  // reader stops at its first error.
  if (std::optional<EntryDecoder::Failure> failure = decoder.Finish()) {
    return absl::InvalidArgumentError(
        absl::StrCat(role_name, ": entry '", failure->entry,
                     "': ", failure->status.message()));
  }
  RETURN_IF_ERROR(read);
  out->images = decoder.TakeImages();
  if (out->images.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(role_name,
                     ": the archive holds no images; want "
                     "class_name/file.png entries"));
  }
  return absl::OkStatus();
}

absl::StatusOr<DecodedDataset> LoadTarDataset(
    const DatasetFiles& files, const DatasetLimits& limits,
    const DatasetLoadOptions& options) {
  auto train_it = files.paths.find(v1::TRAIN_ARCHIVE);
  if (train_it == files.paths.end()) {
    return absl::InvalidArgumentError(
        "IMAGE_FOLDER_TAR datasets need TRAIN_ARCHIVE; it is missing");
  }
  int64_t total = 0;
  FolderImages train;
  RETURN_IF_ERROR(ReadArchive(train_it->second, v1::TRAIN_ARCHIVE, limits,
                              options, &total, &train));
  DecodedDataset dataset;
  dataset.class_names.assign(train.all_folders.begin(),
                             train.all_folders.end());
  std::map<std::string, int32_t> label_of;
  for (size_t k = 0; k < dataset.class_names.size(); ++k) {
    label_of[dataset.class_names[k]] = static_cast<int32_t>(k);
  }
  std::vector<int64_t> counts(dataset.class_names.size());
  for (const std::string& folder : train.folders) ++counts[label_of[folder]];
  for (size_t k = 0; k < counts.size(); ++k) {
    if (counts[k] == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("TRAIN_ARCHIVE: class folder '", dataset.class_names[k],
                       "' has no images"));
    }
  }
  dataset.train.images = std::move(train.images);
  for (const std::string& folder : train.folders) {
    dataset.train.labels.push_back(label_of[folder]);
  }
  auto test_it = files.paths.find(v1::TEST_ARCHIVE);
  if (test_it != files.paths.end()) {
    FolderImages test;
    RETURN_IF_ERROR(ReadArchive(test_it->second, v1::TEST_ARCHIVE, limits,
                                options, &total, &test));
    for (const std::string& folder : test.all_folders) {
      if (!label_of.count(folder)) {
        // Name the first entry in it, so the record can be found.
        auto it = std::find(test.folders.begin(), test.folders.end(), folder);
        const std::string where =
            it == test.folders.end()
                ? absl::StrCat("it is the folder entry '", folder, "/'")
                : absl::StrCat("entry '",
                               test.entries[it - test.folders.begin()],
                               "' is in it");
        return absl::InvalidArgumentError(
            absl::StrCat("TEST_ARCHIVE: class folder '", folder,
                         "' is not a class of TRAIN_ARCHIVE (classes: ",
                         absl::StrJoin(dataset.class_names, ", "), "); ",
                         where));
      }
    }
    dataset.test.images = std::move(test.images);
    for (const std::string& folder : test.folders) {
      dataset.test.labels.push_back(label_of[folder]);
    }
  }
  return dataset;
}

}  // namespace

absl::StatusOr<IdxArray> ParseIdx(std::string_view bytes,
                                  const DatasetLimits& limits) {
  if (bytes.size() >= 2 && static_cast<uint8_t>(bytes[0]) == 0x1f &&
      static_cast<uint8_t>(bytes[1]) == 0x8b) {
    ASSIGN_OR_RETURN(std::vector<uint8_t> raw,
                     GunzipIdx(bytes, limits.max_idx_bytes));
    return ParseRawIdx(std::move(raw));
  }
  if (static_cast<int64_t>(bytes.size()) > limits.max_idx_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("IDX: file has ",
                                                   bytes.size(),
                                                   " bytes, more than the "
                                                   "limit of ",
                                                   limits.max_idx_bytes));
  }
  return ParseRawIdx(std::vector<uint8_t>(bytes.begin(), bytes.end()));
}

absl::StatusOr<DecodedDataset> LoadDataset(const DatasetFiles& files,
                                           const DatasetLimits& limits,
                                           const DatasetLoadOptions& options) {
  // Checked like a decoded image's size: the fit size bounds the memory of
  // every image held.
  const int fit_height = options.fit_height;
  const int fit_width = options.fit_width;
  if (fit_height < 0 || fit_width < 0 || fit_height > limits.image.max_side ||
      fit_width > limits.image.max_side ||
      int64_t{fit_height} * fit_width > limits.image.max_pixels) {
    return absl::InvalidArgumentError(
        absl::StrCat("fit size ", fit_height, "x", fit_width,
                     " is negative or over the image limits"));
  }
  if (options.fit_shorter_side < 0 ||
      options.fit_shorter_side > limits.image.max_side) {
    return absl::InvalidArgumentError(
        absl::StrCat("fit shorter side ", options.fit_shorter_side,
                     " is negative or over the image limits"));
  }
  for (const auto& [role, path] : files.paths) {
    const bool idx_role = role == v1::TRAIN_IMAGES ||
                          role == v1::TRAIN_LABELS || role == v1::TEST_IMAGES ||
                          role == v1::TEST_LABELS;
    const bool tar_role = role == v1::TRAIN_ARCHIVE || role == v1::TEST_ARCHIVE;
    if ((files.format == v1::IDX && !idx_role) ||
        (files.format == v1::IMAGE_FOLDER_TAR && !tar_role)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "part role ", v1::DatasetPartRole_Name(role), " does not belong to ",
          v1::DatasetFormat_Name(files.format), " datasets"));
    }
  }
  switch (files.format) {
    case v1::IDX:
      return LoadIdxDataset(files, limits, options);
    case v1::IMAGE_FOLDER_TAR:
      return LoadTarDataset(files, limits, options);
    default:
      return absl::InvalidArgumentError(absl::StrCat(
          "unsupported dataset format ", v1::DatasetFormat_Name(files.format)));
  }
}

}  // namespace tlserve
