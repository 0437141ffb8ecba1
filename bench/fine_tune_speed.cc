// Wall time of one fine-tune job in tlserve's trainer against the same job
// in a plain PyTorch script (bench/fine_tune_speed_peer.py), in one run on
// one machine with the same threads, data sizes, model and recipe.
//
//   build/bench/fine_tune_speed --arch=resnet18 --size=64 --per_class=200
//       --epochs=10 --modes=frozen,last_block,full --threads=2
//
// Prints one row per mode: tlserve seconds, peer seconds, the ratio
// (peer / tlserve, higher is better for tlserve) and both test accuracies.
//
// With --train_archive (an image-folder tar of JPEGs, as bench/data_pipeline
// writes), the timed span decodes that archive instead of reading the IDX
// files, as a job on an uploaded JPEG dataset does; there is no peer then.
// E2E_IMG_S counts every training image of every epoch over that whole
// span, decoding included.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/dataset_loader.h"
#include "common/file_util.h"
#include "worker/allocator.h"
#include "worker/trainer.h"

ABSL_FLAG(bool, keep_freed_memory, true,
          "glibc malloc as tlworker sets it (worker/allocator.h); false: "
          "glibc's defaults");
ABSL_FLAG(std::string, arch, "resnet18", "torchvision architecture");
ABSL_FLAG(int, size, 64, "input size (square)");
ABSL_FLAG(int, per_class, 200, "training images per class (10 classes)");
ABSL_FLAG(int, epochs, 10, "epochs");
ABSL_FLAG(int, batch_size, 32, "batch size");
ABSL_FLAG(int, threads, 2, "intra-op threads, both sides");
ABSL_FLAG(std::string, modes, "frozen,last_block,full", "freeze modes to time");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Fashion-MNIST IDX files");
ABSL_FLAG(std::string, source_dir, TLSERVE_SOURCE_DIR, "the repository");
ABSL_FLAG(std::string, work_dir, "/tmp/tlserve_fine_tune_speed", "scratch");
ABSL_FLAG(bool, peer, true,
          "also time the Python peer (false: tlserve only, for A/B runs)");
ABSL_FLAG(std::string, device, "cpu",
          "the trainer's device: cpu, or cuda:N (the job asks for cuda)");
ABSL_FLAG(std::string, precision, "fp32", "fp32 or bf16 (autocast)");
ABSL_FLAG(int, micro_batch_size, 0, "rows per pass (0: the whole batch)");
ABSL_FLAG(std::string, optimizer, "adamw",
          "adamw (the CPU peer's), or sgd (momentum 0.9, as bench/gpu_peer.py)");
ABSL_FLAG(int, loader_threads, 1, "threads preparing training batches");
ABSL_FLAG(std::string, python, "/usr/bin/python3",
          "the python3 with torch and torchvision (export and peer)");
ABSL_FLAG(std::string, train_archive, "",
          "an image-folder tar to decode in the timed span instead of the IDX "
          "files (needs --peer=false)");
ABSL_FLAG(int, decode_threads, 1, "threads decoding --train_archive");
ABSL_FLAG(bool, verbose, false,
          "print the trainer's log lines with seconds since the job started");

namespace {

using tlserve::v1::FreezePolicy;

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// Runs a shell command; its stdout.
bool RunCommand(const std::string& command, std::string* out) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return false;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out->append(buffer, n);
  return pclose(pipe) == 0;
}

// The number after "key": in a one-line JSON object.
double JsonNumber(const std::string& json, const std::string& key) {
  const size_t at = json.find("\"" + key + "\":");
  if (at == std::string::npos) return -1;
  return std::stod(json.substr(at + key.size() + 3));
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_keep_freed_memory)) {
    tlserve::worker::KeepFreedTensorMemoryForReuse();
  }
  const std::string work = absl::GetFlag(FLAGS_work_dir);
  std::filesystem::create_directories(work);
  const std::string arch = absl::GetFlag(FLAGS_arch);
  const int size = absl::GetFlag(FLAGS_size);
  const std::string backbone = absl::StrCat(work, "/", arch, "_", size, ".pt");
  std::string out;
  if (!std::filesystem::exists(backbone) &&
      !RunCommand(absl::StrCat(absl::GetFlag(FLAGS_python), " ",
                               absl::GetFlag(FLAGS_source_dir),
                               "/tools/export_backbone.py --arch ", arch,
                               " --size ", size, " --out ", backbone),
                  &out)) {
    std::cerr << "exporting " << arch << " failed: " << out << "\n";
    return 1;
  }

  tlserve::DatasetFiles files;
  tlserve::DatasetLoadOptions load_options;
  const std::string dir = absl::GetFlag(FLAGS_data_dir);
  const std::string archive = absl::GetFlag(FLAGS_train_archive);
  if (!archive.empty()) {
    if (absl::GetFlag(FLAGS_peer)) {
      std::cerr << "--train_archive has no peer here (bench/gpu_peer.py "
                   "--mode frozen is its peer): add --peer=false\n";
      return 1;
    }
    if (!std::filesystem::exists(archive)) {
      std::cerr << "--train_archive " << archive << " does not exist; "
                << "bench/data_pipeline --format=jpeg --modes= builds one\n";
      return 1;
    }
    files.format = tlserve::v1::IMAGE_FOLDER_TAR;
    files.paths[tlserve::v1::TRAIN_ARCHIVE] = archive;
    // As the worker decodes an uploaded archive for a job at this size.
    load_options.fit_height = size;
    load_options.fit_width = size;
    load_options.decode_threads = absl::GetFlag(FLAGS_decode_threads);
  } else {
    files.format = tlserve::v1::IDX;
    files.paths[tlserve::v1::TRAIN_IMAGES] = dir + "/train-images-idx3-ubyte.gz";
    files.paths[tlserve::v1::TRAIN_LABELS] = dir + "/train-labels-idx1-ubyte.gz";
    files.paths[tlserve::v1::TEST_IMAGES] = dir + "/t10k-images-idx3-ubyte.gz";
    files.paths[tlserve::v1::TEST_LABELS] = dir + "/t10k-labels-idx1-ubyte.gz";
  }

  tlserve::v1::InputSpec spec;
  spec.set_channels(3);
  spec.set_height(size);
  spec.set_width(size);
  for (float m : {0.485f, 0.456f, 0.406f}) spec.add_mean(m);
  for (float s : {0.229f, 0.224f, 0.225f}) spec.add_std(s);

  std::printf("%s %dx%d, %d images/class x 10 classes (10%% validation), "
              "1000 test, %d epochs, batch %d, %d threads\n",
              arch.c_str(), size, size, absl::GetFlag(FLAGS_per_class),
              absl::GetFlag(FLAGS_epochs), absl::GetFlag(FLAGS_batch_size),
              absl::GetFlag(FLAGS_threads));
  const std::string device = absl::GetFlag(FLAGS_device);
  const bool bf16 = absl::GetFlag(FLAGS_precision) == "bf16";
  if (!bf16 && absl::GetFlag(FLAGS_precision) != "fp32") {
    std::cerr << "--precision must be fp32 or bf16\n";
    return 1;
  }
  std::printf("device %s, %s, passes of %d rows, %d loader threads\n",
              device.c_str(), bf16 ? "bf16 autocast" : "fp32",
              absl::GetFlag(FLAGS_micro_batch_size),
              absl::GetFlag(FLAGS_loader_threads));
  // TRAIN_IMG_S: the trainer's own rate (EpochMetrics.samples_per_second)
  // of its fastest epoch after the first, which pays cuDNN's autotuning.
  // E2E_IMG_S: training images of all epochs over TLSERVE_S.
  std::printf("%-11s %12s %12s %8s %10s %10s %12s %10s\n", "MODE", "TLSERVE_S",
              "PEER_S", "RATIO", "TLS_ACC", "PEER_ACC", "TRAIN_IMG_S",
              "E2E_IMG_S");
  for (absl::string_view mode :
       absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty())) {
    tlserve::worker::TrainJobInput input;
    input.spec.set_kind(tlserve::v1::FINE_TUNE);
    input.spec.set_epochs(absl::GetFlag(FLAGS_epochs));
    input.spec.set_batch_size(absl::GetFlag(FLAGS_batch_size));
    input.spec.set_seed(1);
    input.spec.mutable_data()->set_samples_per_class(absl::GetFlag(FLAGS_per_class));
    input.spec.mutable_data()->set_validation_fraction(0.1f);
    input.spec.mutable_data()->set_max_test_samples(1000);
    if (absl::GetFlag(FLAGS_optimizer) == "sgd") {
      input.spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::SGD);
      input.spec.mutable_optimizer()->set_learning_rate(0.01f);
      input.spec.mutable_optimizer()->set_momentum(0.9f);
    } else {
      input.spec.mutable_optimizer()->set_kind(tlserve::v1::OptimizerSpec::ADAMW);
      input.spec.mutable_optimizer()->set_learning_rate(1e-3f);
    }
    input.spec.mutable_schedule()->set_kind(tlserve::v1::ScheduleSpec::COSINE);
    FreezePolicy* freeze = input.spec.mutable_freeze();
    freeze->set_backbone_lr_scale(0.1f);
    if (mode == "frozen") {
      freeze->set_mode(FreezePolicy::FROZEN);
    } else if (mode == "last_block") {
      freeze->set_mode(FreezePolicy::LAST_N_BLOCKS);
      freeze->set_n_blocks(1);
    } else if (mode == "full") {
      freeze->set_mode(FreezePolicy::FULL);
    } else {
      std::cerr << "unknown mode " << mode << "\n";
      return 1;
    }
    input.work_dir = absl::StrCat(work, "/job_", mode);
    std::filesystem::create_directories(input.work_dir);
    input.backbone_path = backbone;
    input.backbone_input_spec = spec;
    input.num_threads = absl::GetFlag(FLAGS_threads);
    input.worker_device = device;
    input.spec.set_device(device == "cpu" ? "cpu" : "cuda");
    input.spec.set_precision(bf16 ? tlserve::v1::PRECISION_BF16
                                  : tlserve::v1::PRECISION_FP32);
    input.spec.set_micro_batch_size(absl::GetFlag(FLAGS_micro_batch_size));
    input.spec.set_loader_threads(absl::GetFlag(FLAGS_loader_threads));

    // The timed span matches the peer's: reading the gzip files to the
    // test accuracy.
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<tlserve::DecodedDataset> data =
        tlserve::LoadDataset(files, {}, load_options);
    if (!data.ok()) {
      std::cerr << data.status() << "\n";
      return 1;
    }
    tlserve::worker::TrainerCallbacks callbacks;
    double train_rate = 0;
    double trained_images = 0;
    callbacks.on_epoch_end = [&train_rate, &trained_images](
                                 const tlserve::v1::EpochMetrics& m,
                                 const std::string&) {
      trained_images += m.samples_per_second() * m.seconds();
      if (m.epoch() > 1 || train_rate == 0) {
        train_rate = m.epoch() > 1 ? std::max(train_rate, m.samples_per_second())
                                   : m.samples_per_second();
      }
      return absl::OkStatus();
    };
    if (absl::GetFlag(FLAGS_verbose)) {
      std::printf("  %6.2f s  dataset loaded\n", Seconds(start));
      callbacks.on_log = [&start](const std::string& line) {
        std::printf("  %6.2f s  %s\n", Seconds(start), line.c_str());
      };
      callbacks.on_epoch_end = [&start, &train_rate, &trained_images](
                                   const tlserve::v1::EpochMetrics& m,
                                   const std::string&) {
        trained_images += m.samples_per_second() * m.seconds();
        std::printf("  %6.2f s  epoch %d done (%.2f s, %.0f images/s)\n",
                    Seconds(start), m.epoch(), m.seconds(),
                    m.samples_per_second());
        if (m.epoch() > 1 || train_rate == 0) {
          train_rate = m.epoch() > 1 ? std::max(train_rate, m.samples_per_second())
                                     : m.samples_per_second();
        }
        return absl::OkStatus();
      };
    }
    absl::StatusOr<tlserve::worker::TrainJobOutput> job =
        tlserve::worker::RunTrainingJob(input, *data, callbacks);
    const double ours = Seconds(start);
    if (!job.ok()) {
      std::cerr << mode << ": " << job.status() << "\n";
      return 1;
    }

    if (!absl::GetFlag(FLAGS_peer)) {
      std::printf("%-11s %12.1f %12s %8s %10.4f %10s %12.0f %10.0f\n",
                  std::string(mode).c_str(), ours, "-", "-",
                  job->result.test_accuracy(), "-", train_rate,
                  trained_images / ours);
      std::fflush(stdout);
      continue;
    }
    std::string peer_out;
    const std::string peer = absl::StrCat(
        absl::GetFlag(FLAGS_python), " ", absl::GetFlag(FLAGS_source_dir),
        "/bench/fine_tune_speed_peer.py --backbone ", backbone, " --mode ", mode,
        " --size ", size, " --per-class ", absl::GetFlag(FLAGS_per_class),
        " --epochs ", absl::GetFlag(FLAGS_epochs), " --batch-size ",
        absl::GetFlag(FLAGS_batch_size), " --threads ",
        absl::GetFlag(FLAGS_threads), " --data-dir ", dir);
    if (!RunCommand(peer, &peer_out)) {
      std::cerr << "peer failed: " << peer_out << "\n";
      return 1;
    }
    const double theirs = JsonNumber(peer_out, "seconds");
    if (absl::GetFlag(FLAGS_verbose)) std::printf("  peer: %s", peer_out.c_str());
    std::printf("%-11s %12.1f %12.1f %7.2fx %10.4f %10.4f %12.0f %10.0f\n",
                std::string(mode).c_str(), ours, theirs, theirs / ours,
                job->result.test_accuracy(),
                JsonNumber(peer_out, "test_accuracy"), train_rate,
                trained_images / ours);
    std::fflush(stdout);
  }
  return 0;
}
