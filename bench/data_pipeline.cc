// The data pipeline alone: read an image-folder tar entry by entry, decode,
// crop and resize, normalise to float, on one core, against the pipeline a
// PyTorch user would write (bench/data_pipeline_peer.py: PIL and
// torchvision.transforms) on the same archive.
//
//   build/bench/data_pipeline --format=jpeg,png --modes=train,eval
//
// The fixture archive is built once per format, size and count from
// Fashion-MNIST (upsampled, gray copied to RGB) and cached in --work_dir.
// Modes: train = RandomResizedCrop + horizontal flip (p = 0.5), eval =
// resize the short side to --eval_resize, centre crop; both then ToTensor
// and ImageNet Normalize. Prints images/s (wall, best pass) and images per
// CPU-second of the one thread (of that pass) for each side, the ratios
// (tlserve / peer, higher is better for tlserve), per-image stage times and
// the mean output value (a sanity check: eval means agree to about 1e-3).

#include <archive.h>
#include <archive_entry.h>
#include <time.h>
#include <turbojpeg.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/dataset_loader.h"
#include "common/file_util.h"
#include "common/image.h"
#include "common/image_transforms.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, format, "jpeg,png", "fixture formats: jpeg, png");
ABSL_FLAG(std::string, modes, "train,eval", "pipelines to time: train, eval");
ABSL_FLAG(int, count, 2000, "images in the fixture archive");
ABSL_FLAG(int, size, 224, "fixture image side (Fashion-MNIST upsampled)");
ABSL_FLAG(int, quality, 90, "JPEG quality of the fixture (4:2:0)");
ABSL_FLAG(int, out_size, 224, "output side (RandomResizedCrop / CenterCrop)");
ABSL_FLAG(int, eval_resize, 256, "eval: short side before the centre crop");
ABSL_FLAG(double, scale_min, 0.08, "train: smallest crop area fraction");
ABSL_FLAG(int, passes, 3, "passes over the archive per side and round");
ABSL_FLAG(int, rounds, 1, "rounds of (ours, peer); the best pass is kept");
ABSL_FLAG(int, seed, 1, "crop and flip seed");
ABSL_FLAG(bool, peer, true, "also run the PIL/torchvision peer");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Fashion-MNIST IDX files");
ABSL_FLAG(std::string, source_dir, TLSERVE_SOURCE_DIR, "the repository");
ABSL_FLAG(std::string, work_dir, "/tmp/tlserve_data_pipeline",
          "where fixture archives are cached");

namespace {

constexpr float kMean[3] = {0.485f, 0.456f, 0.406f};
constexpr float kStd[3] = {0.229f, 0.224f, 0.225f};
// Folder names; '/' in "T-shirt/top" would add a level.
constexpr const char* kClassNames[10] = {
    "tshirt_top", "trouser", "pullover", "dress", "coat",
    "sandal",     "shirt",   "sneaker",  "bag",   "ankle_boot"};

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// CPU seconds of the calling thread: what "per core" means when the
// machine is shared with other work.
double ThreadCpu() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

absl::StatusOr<std::string> EncodeJpeg(const tlserve::Image& image,
                                       int quality) {
  tjhandle tj = tjInitCompress();
  if (tj == nullptr) return absl::InternalError("tjInitCompress failed");
  absl::Cleanup destroy = [tj] { tjDestroy(tj); };
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  if (tjCompress2(tj, image.pixels.data(), image.width, 0, image.height,
                  TJPF_RGB, &buf, &size, TJSAMP_420, quality, 0) != 0) {
    return absl::InternalError(
        absl::StrCat("JPEG encoding failed: ", tjGetErrorStr2(tj)));
  }
  std::string out(reinterpret_cast<char*>(buf), size);
  tjFree(buf);
  return out;
}

// Writes `count` Fashion-MNIST training images as class_name/NNNNN.ext
// into a tar at `path` (through a temporary file, so a killed run leaves
// no half archive behind).
absl::Status BuildFixture(const std::string& format, int count, int size,
                          const std::string& path) {
  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  ASSIGN_OR_RETURN(std::string image_gz,
                   tlserve::ReadFile(dir + "/train-images-idx3-ubyte.gz"));
  ASSIGN_OR_RETURN(std::string label_gz,
                   tlserve::ReadFile(dir + "/train-labels-idx1-ubyte.gz"));
  ASSIGN_OR_RETURN(tlserve::IdxArray images, tlserve::ParseIdx(image_gz));
  ASSIGN_OR_RETURN(tlserve::IdxArray labels, tlserve::ParseIdx(label_gz));
  if (images.dims.size() != 3 || labels.dims.size() != 1 ||
      images.dims[0] < count || labels.dims[0] < count) {
    return absl::InvalidArgumentError(absl::StrCat(
        dir, " does not hold ", count, " labelled images; lower --count"));
  }
  const int h = images.dims[1], w = images.dims[2];

  const std::string tmp = path + ".tmp";
  struct archive* a = archive_write_new();
  absl::Cleanup free_archive = [a] { archive_write_free(a); };
  archive_write_set_format_ustar(a);
  if (archive_write_open_filename(a, tmp.c_str()) != ARCHIVE_OK) {
    return absl::UnavailableError(
        absl::StrCat("cannot write ", tmp, ": ", archive_error_string(a)));
  }
  struct archive_entry* entry = archive_entry_new();
  absl::Cleanup free_entry = [entry] { archive_entry_free(entry); };
  for (int i = 0; i < count; ++i) {
    tlserve::Image gray{h, w, 1, {}};
    const auto* first = images.data.data() + static_cast<size_t>(i) * h * w;
    gray.pixels.assign(first, first + static_cast<size_t>(h) * w);
    const tlserve::Image big = tlserve::ResizeBilinear(gray, size, size);
    tlserve::Image rgb{size, size, 3, {}};
    rgb.pixels.reserve(big.pixels.size() * 3);
    for (uint8_t v : big.pixels) rgb.pixels.insert(rgb.pixels.end(), 3, v);
    std::string bytes;
    if (format == "jpeg") {
      ASSIGN_OR_RETURN(bytes, EncodeJpeg(rgb, absl::GetFlag(FLAGS_quality)));
    } else {
      ASSIGN_OR_RETURN(bytes, tlserve::EncodePng(rgb));
    }
    char name[64];
    std::snprintf(name, sizeof(name), "%s/%05d.%s",
                  kClassNames[labels.data[i] % 10], i,
                  format == "jpeg" ? "jpg" : "png");
    archive_entry_clear(entry);
    archive_entry_set_pathname(entry, name);
    archive_entry_set_filetype(entry, AE_IFREG);
    archive_entry_set_perm(entry, 0644);
    archive_entry_set_size(entry, static_cast<la_int64_t>(bytes.size()));
    if (archive_write_header(a, entry) != ARCHIVE_OK ||
        archive_write_data(a, bytes.data(), bytes.size()) !=
            static_cast<la_ssize_t>(bytes.size())) {
      return absl::UnavailableError(
          absl::StrCat("writing ", tmp, ": ", archive_error_string(a)));
    }
  }
  if (archive_write_close(a) != ARCHIVE_OK) {
    return absl::UnavailableError(
        absl::StrCat("closing ", tmp, ": ", archive_error_string(a)));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    return absl::UnavailableError(
        absl::StrCat("renaming ", tmp, ": ", ec.message()));
  }
  return absl::OkStatus();
}

// One side's figures for one mode: the fastest pass, and its per-image
// stage times.
struct PassResult {
  int images = 0;
  double wall_s = 0;
  double cpu_s = 0;
  double mean = 0;  // of every output value, a sanity check
  double read_s = 0, decode_s = 0, crop_s = 0, float_s = 0;
};

// Sums in 8 independent lanes: cheap next to the transforms, so the
// checksum barely shows in the timings.
double Sum(const std::vector<float>& v) {
  float lanes[8] = {0};
  size_t i = 0;
  for (; i + 8 <= v.size(); i += 8) {
    for (int k = 0; k < 8; ++k) lanes[k] += v[i + k];
  }
  double total = 0;
  for (float lane : lanes) total += lane;
  for (; i < v.size(); ++i) total += v[i];
  return total;
}

// One pass over the archive, the way the worker would: stream entries,
// decode, crop box, CropResize (+ flip), ToFloat.
absl::StatusOr<PassResult> RunPass(const std::string& path, bool train,
                                   std::mt19937_64& rng) {
  const int out = absl::GetFlag(FLAGS_out_size);
  const int eval_resize = absl::GetFlag(FLAGS_eval_resize);
  const double scale_min = absl::GetFlag(FLAGS_scale_min);
  const int64_t plane = static_cast<int64_t>(out) * out;
  std::vector<uint8_t> planar(3 * plane);
  std::vector<float> tensor(3 * plane);
  std::bernoulli_distribution coin(0.5);
  std::string bytes;
  PassResult r;
  double sum = 0;

  const double wall0 = Now();
  const double cpu0 = ThreadCpu();
  struct archive* a = archive_read_new();
  absl::Cleanup free_archive = [a] { archive_read_free(a); };
  archive_read_support_format_tar(a);
  if (archive_read_open_filename(a, path.c_str(), 1 << 16) != ARCHIVE_OK) {
    return absl::UnavailableError(
        absl::StrCat("cannot open ", path, ": ", archive_error_string(a)));
  }
  double t = Now();
  while (true) {
    struct archive_entry* entry = nullptr;
    const int rc = archive_read_next_header(a, &entry);
    if (rc == ARCHIVE_EOF) break;
    if (rc != ARCHIVE_OK) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", archive_error_string(a)));
    }
    if (archive_entry_filetype(entry) != AE_IFREG) continue;
    bytes.resize(static_cast<size_t>(archive_entry_size(entry)));
    if (archive_read_data(a, bytes.data(), bytes.size()) !=
        static_cast<la_ssize_t>(bytes.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": short entry ", archive_entry_pathname(entry)));
    }
    const double t_read = Now();
    absl::StatusOr<tlserve::Image> image = tlserve::DecodeImage(bytes);
    if (!image.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          archive_entry_pathname(entry), ": ", image.status().message()));
    }
    const double t_decode = Now();
    tlserve::CropBox box;
    if (train) {
      box = tlserve::RandomResizedCropBox(image->height, image->width,
                                          scale_min, rng);
    } else {
      // Resize(short side = eval_resize) then CenterCrop(out), as one crop
      // of the source: out pixels there are out * short / eval_resize here.
      const int short_side = std::min(image->height, image->width);
      const int side = static_cast<int>(
          std::lround(static_cast<double>(out) * short_side / eval_resize));
      box = tlserve::CenterCropBox(image->height, image->width, side, side);
    }
    const bool flip = train && coin(rng);
    const tlserve::ImageView view{image->pixels.data(), image->channels,
                                  image->height, image->width,
                                  /*planar=*/false};
    tlserve::CropResize(view, box, out, out, flip, planar.data());
    if (image->channels == 1) {  // PIL's convert('RGB') copies gray
      std::copy_n(planar.begin(), plane, planar.begin() + plane);
      std::copy_n(planar.begin(), plane, planar.begin() + 2 * plane);
    }
    const double t_crop = Now();
    tlserve::ToFloat(planar.data(), 3, plane, tensor.data(), kMean, kStd);
    const double t_float = Now();
    sum += Sum(tensor);
    r.read_s += t_read - t;
    r.decode_s += t_decode - t_read;
    r.crop_s += t_crop - t_decode;
    r.float_s += t_float - t_crop;
    ++r.images;
    t = Now();
  }
  r.cpu_s = ThreadCpu() - cpu0;
  r.wall_s = Now() - wall0;
  r.mean = r.images > 0 ? sum / (static_cast<double>(r.images) * 3 * plane) : 0;
  return r;
}

// Runs a shell command; its stdout.
bool RunCommand(const std::string& command, std::string* out) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return false;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0)
    out->append(buffer, n);
  return pclose(pipe) == 0;
}

// The number after "key": in a one-line JSON object; NaN when absent.
double JsonNumber(const std::string& json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\":");
  if (at == std::string::npos) return std::nan("");
  return std::strtod(json.c_str() + at + key.size() + 3, nullptr);
}

void PrintStages(const char* who, const PassResult& r) {
  const double n = std::max(r.images, 1) / 1e6;
  std::printf(
      "    %-8s us/image: read %6.0f  decode %6.0f  crop+resize %6.0f"
      "  to_float+normalize %6.0f  mean %.5f\n",
      who, r.read_s / n, r.decode_s / n, r.crop_s / n, r.float_s / n, r.mean);
}

// Our fastest of `passes` passes; every pass draws the same boxes (same
// seed), so every pass gives the same checksum.
absl::StatusOr<PassResult> TimeOurs(const std::string& path, bool train,
                                    int passes, int count) {
  PassResult best;
  for (int p = 0; p < passes; ++p) {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
    ASSIGN_OR_RETURN(PassResult r, RunPass(path, train, rng));
    if (r.images != count) {
      return absl::InternalError(
          absl::StrCat("read ", r.images, " images, expected ", count));
    }
    if (p == 0 || r.wall_s < best.wall_s) best = r;
  }
  return best;
}

// The peer's fastest of `passes` passes, from its JSON line.
absl::StatusOr<PassResult> TimePeer(const std::string& path,
                                    const std::string& mode, int passes,
                                    int count) {
  const std::string command =
      absl::StrCat("/usr/bin/python3 ", absl::GetFlag(FLAGS_source_dir),
                   "/bench/data_pipeline_peer.py --archive ", path, " --mode ",
                   mode, " --out-size ", absl::GetFlag(FLAGS_out_size),
                   " --eval-resize ", absl::GetFlag(FLAGS_eval_resize),
                   " --scale-min ", absl::GetFlag(FLAGS_scale_min),
                   " --passes ", passes, " --seed ", absl::GetFlag(FLAGS_seed));
  std::string out;
  if (!RunCommand(command, &out)) {
    return absl::InternalError(
        absl::StrCat("peer failed: ", command, "\n", out));
  }
  PassResult r;
  r.images = static_cast<int>(JsonNumber(out, "images"));
  if (r.images != count) {
    return absl::InternalError(absl::StrCat(
        "peer read ", r.images, " images, expected ", count, ": ", out));
  }
  r.wall_s = JsonNumber(out, "wall_s");
  r.cpu_s = JsonNumber(out, "cpu_s");
  r.mean = JsonNumber(out, "mean");
  r.read_s = JsonNumber(out, "read_s");
  r.decode_s = JsonNumber(out, "decode_s");
  r.crop_s = JsonNumber(out, "crop_s");
  r.float_s = JsonNumber(out, "float_s");
  return r;
}

// The fixture archive for `format`, built on first use.
absl::StatusOr<std::string> FixturePath(const std::string& format, int count,
                                        int size) {
  std::string path = absl::StrCat(absl::GetFlag(FLAGS_work_dir), "/fmnist_",
                                  count, "_", size, "_", format);
  if (format == "jpeg")
    absl::StrAppend(&path, "_q", absl::GetFlag(FLAGS_quality));
  path += ".tar";
  if (std::filesystem::exists(path)) return path;
  const double start = Now();
  RETURN_IF_ERROR(BuildFixture(format, count, size, path));
  std::fprintf(stderr, "built %s (%.0f MB) in %.1f s\n", path.c_str(),
               std::filesystem::file_size(path) / 1e6, Now() - start);
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::filesystem::create_directories(absl::GetFlag(FLAGS_work_dir));
  const int count = absl::GetFlag(FLAGS_count);
  const int size = absl::GetFlag(FLAGS_size);
  const int out = absl::GetFlag(FLAGS_out_size);
  const int passes = std::max(1, absl::GetFlag(FLAGS_passes));
  const int rounds = std::max(1, absl::GetFlag(FLAGS_rounds));
  const bool run_peer = absl::GetFlag(FLAGS_peer);
  if (count < 1 || size < 1 || out < 1 ||
      absl::GetFlag(FLAGS_eval_resize) < 1) {
    std::cerr << "--count, --size, --out_size and --eval_resize must be >= 1\n";
    return 1;
  }

  std::printf(
      "Fashion-MNIST %d images upsampled to %dx%d RGB, out %dx%d, "
      "eval resize %d, best of %d rounds x %d passes, 1 thread each "
      "side\n",
      count, size, size, out, out, absl::GetFlag(FLAGS_eval_resize), rounds,
      passes);
  std::printf("%-5s %-6s %10s %10s %7s %12s %12s %7s\n", "FMT", "MODE",
              "TLS_IMG/S", "PEER_IMG/S", "RATIO", "TLS_IMG/CPUS",
              "PEER_IMG/CPUS", "RATIO");
  for (absl::string_view f :
       absl::StrSplit(absl::GetFlag(FLAGS_format), ',', absl::SkipEmpty())) {
    const std::string format(f);
    if (format != "jpeg" && format != "png") {
      std::cerr << "unknown --format " << format << " (jpeg or png)\n";
      return 1;
    }
    absl::StatusOr<std::string> path = FixturePath(format, count, size);
    if (!path.ok()) {
      std::cerr << "building the " << format << " fixture: " << path.status()
                << "\n";
      return 1;
    }
    for (absl::string_view m :
         absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty())) {
      const std::string mode(m);
      if (mode != "train" && mode != "eval") {
        std::cerr << "unknown mode " << mode << " (train or eval)\n";
        return 1;
      }
      // Rounds alternate the sides, so a burst of other work on a shared
      // machine does not land on one side only.
      PassResult ours, peer;
      for (int round = 0; round < rounds; ++round) {
        absl::StatusOr<PassResult> a =
            TimeOurs(*path, mode == "train", passes, count);
        if (!a.ok()) {
          std::cerr << format << " " << mode << ": " << a.status() << "\n";
          return 1;
        }
        if (round == 0 || a->wall_s < ours.wall_s) ours = *a;
        if (!run_peer) continue;
        absl::StatusOr<PassResult> b = TimePeer(*path, mode, passes, count);
        if (!b.ok()) {
          std::cerr << format << " " << mode << ": " << b.status() << "\n";
          return 1;
        }
        if (round == 0 || b->wall_s < peer.wall_s) peer = *b;
      }
      const double nan = std::nan("");
      const double theirs = run_peer ? count / peer.wall_s : nan;
      const double theirs_cpu = run_peer ? count / peer.cpu_s : nan;
      std::printf("%-5s %-6s %10.0f %10.0f %6.2fx %12.0f %12.0f %6.2fx\n",
                  format.c_str(), mode.c_str(), count / ours.wall_s, theirs,
                  peer.wall_s / ours.wall_s, count / ours.cpu_s, theirs_cpu,
                  peer.cpu_s / ours.cpu_s);
      PrintStages("tlserve", ours);
      if (run_peer) PrintStages("peer", peer);
      std::fflush(stdout);
    }
  }
  return 0;
}
