// model_latency: the in-process baseline for the inference benchmark. Loads
// an exported TorchScript model (`tlctl model export`) and times forward
// on one fixed input, over and over, on one thread under c10::InferenceMode:
// no gRPC, no decoding, no queueing. Served latency at concurrency 1 minus
// this is what the serving path costs.
//
//   build-bench/bench/model_latency --model=model.pt --shape=1,3,224,224
//       --threads=2 --seconds=10
//
// Prints p50/p90/p99/max in ms and one `RESULT {json}` line shaped like
// load_gen's (throughput_rps is forwards per second on this one thread).
//
// With --image and --model_json (`tlctl --json model get ID`), each timed
// call is instead the worker's whole compute for one Predict request:
// InferenceRunner decodes the image, fits it to the model's input spec,
// runs the model (its optimised copy with --optimize) and picks the top
// classes. Served latency minus this is what gRPC and the batcher cost.

#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "google/protobuf/util/json_util.h"
#include "tlserve/v1/model.pb.h"
#include "worker/allocator.h"
#include "worker/inference_runner.h"
#include "worker/torch_status.h"

ABSL_FLAG(bool, keep_freed_memory, true,
          "glibc malloc as tlworker sets it (worker/allocator.h); false: "
          "glibc's defaults");
ABSL_FLAG(std::string, model, "", "TorchScript file from `tlctl model export`");
ABSL_FLAG(std::vector<std::string>, shape,
          std::vector<std::string>({"1", "3", "224", "224"}),
          "input shape N,C,H,W (float in [0, 1])");
ABSL_FLAG(int, threads, 2, "LibTorch intra-op threads (at::set_num_threads)");
ABSL_FLAG(double, warmup_seconds, 2, "forwards run before timing");
ABSL_FLAG(double, seconds, 10, "timed forwards run this long");
ABSL_FLAG(int, min_iters, 20, "and at least this many timed forwards");
ABSL_FLAG(uint64_t, seed, 1, "seed of the input");
ABSL_FLAG(double, gap_ms, 0,
          "sleep this long before each timed forward (untimed), as a server "
          "at concurrency 1 idles between calls; 0: back to back");
ABSL_FLAG(bool, channels_last, false, "module and input in channels_last layout");
ABSL_FLAG(bool, optimize, false,
          "freeze the module and run torch::jit::optimize_for_inference first "
          "(as tlserve's worker does)");

ABSL_FLAG(int64_t, single_thread_max_rows, -1,
          "with --image: InferenceRunner's option of that name (-1: chosen "
          "from the timings of its batches, as the worker does; 0: never "
          "one thread)");
ABSL_FLAG(std::string, image, "",
          "time the worker's whole Predict compute on this encoded image "
          "(needs --model_json) instead of forward on a random tensor");
ABSL_FLAG(bool, on_thread, false,
          "with --image: make every call (the model's load included) on a "
          "thread started for it, as tlworker's inference threads do, not "
          "on the main thread");
ABSL_FLAG(std::string, model_json, "",
          "the model's record, `tlctl --json model get ID`: its input spec "
          "and class names, for --image");

namespace {

using Clock = std::chrono::steady_clock;

struct Timings {
  std::vector<double> ms;
  int64_t classes = 0;
};

Clock::duration Seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(s));
}

// Calls `call` for the warm-up, then times it like Run does.
void TimeCalls(const std::function<void()>& call, Timings* timings) {
  const Clock::time_point warm_end =
      Clock::now() + Seconds(absl::GetFlag(FLAGS_warmup_seconds));
  do {
    call();
  } while (Clock::now() < warm_end);
  const Clock::time_point end =
      Clock::now() + Seconds(absl::GetFlag(FLAGS_seconds));
  const size_t min_iters = std::max(1, absl::GetFlag(FLAGS_min_iters));
  const double gap_ms = absl::GetFlag(FLAGS_gap_ms);
  while (Clock::now() < end || timings->ms.size() < min_iters) {
    if (gap_ms > 0) {
      std::this_thread::sleep_for(
          std::chrono::duration<double, std::milli>(gap_ms));
    }
    const Clock::time_point start = Clock::now();
    call();
    timings->ms.push_back(
        std::chrono::duration<double, std::milli>(Clock::now() - start)
            .count());
  }
}

// The worker's compute for one Predict request of one image, through
// InferenceRunner as the worker runs it (its thread count, its optimised
// copy when --optimize).
absl::Status RunThroughRunner(const std::string& path, int threads,
                              Timings* timings) {
  ASSIGN_OR_RETURN(std::string json,
                   tlserve::ReadFile(absl::GetFlag(FLAGS_model_json)));
  tlserve::v1::Model record;
  google::protobuf::util::JsonParseOptions parse;
  parse.ignore_unknown_fields = true;
  if (auto st =
          google::protobuf::util::JsonStringToMessage(json, &record, parse);
      !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--model_json: ", std::string(st.message())));
  }
  ASSIGN_OR_RETURN(std::string image,
                   tlserve::ReadFile(absl::GetFlag(FLAGS_image)));
  tlserve::worker::InferenceRunner::Options options;
  options.num_threads = threads;
  options.optimize = absl::GetFlag(FLAGS_optimize);
  options.single_thread_max_rows = absl::GetFlag(FLAGS_single_thread_max_rows);
  tlserve::worker::InferenceRunner runner(options);
  tlserve::worker::InferenceRunner::ModelFile file;
  file.model_id = record.id().empty() ? "model" : record.id();
  file.path = path;
  file.input_spec = record.input_spec();
  file.class_names.assign(record.class_names().begin(),
                          record.class_names().end());
  file.tasks.assign(record.tasks().begin(), record.tasks().end());
  // As the server serves it (with its default --share_backbones): a model
  // with a frozen backbone runs on a shared one.
  if (!record.backbone_digest().empty()) {
    file.shared_backbone =
        absl::StrCat(record.backbone_id(), "/", record.backbone_digest());
  }
  tlserve::v1::PredictRequest request;
  request.add_images(image);
  request.set_top_k(3);
  // A bad image or model fails here, before any timing.
  RETURN_IF_ERROR(runner.Predict(file, request).status());
  auto print_threads = [&runner](const char* when) {
    for (const auto& loaded : runner.LoadedModels()) {
      std::printf("model_latency: %s, batches of up to %lld rows run on one "
                  "thread%s\n",
                  when, static_cast<long long>(loaded.single_thread_max_rows),
                  loaded.threads_chosen_per_batch
                      ? " (chosen from the timings of its batches)"
                      : "");
    }
  };
  print_threads("after the first call");
  absl::Status failed;
  TimeCalls(
      [&] {
        absl::StatusOr<tlserve::v1::PredictResponse> response =
            runner.Predict(file, request);
        if (!response.ok()) {
          failed = response.status();
        } else {
          timings->classes = static_cast<int64_t>(file.class_names.size());
        }
      },
      timings);
  print_threads("after the timed calls");
  return failed;
}

absl::Status Run(const std::string& path, const std::vector<int64_t>& shape,
                 Timings* timings) {
  return tlserve::worker::TorchGuard(
      absl::StrCat("timing model ", path), [&]() -> absl::Status {
        torch::jit::Module module = torch::jit::load(path);
        module.eval();
        if (absl::GetFlag(FLAGS_optimize)) {
          module = torch::jit::optimize_for_inference(module);
        }
        if (absl::GetFlag(FLAGS_channels_last)) {
          for (at::Tensor p : module.parameters()) {
            if (p.dim() == 4) p.set_data(p.contiguous(at::MemoryFormat::ChannelsLast));
          }
        }
        module.eval();
        // InferenceMode is thread-local; this thread runs every forward.
        c10::InferenceMode inference_mode;
        at::manual_seed(absl::GetFlag(FLAGS_seed));
        const at::Tensor input =
            absl::GetFlag(FLAGS_channels_last)
                ? at::rand(shape).contiguous(at::MemoryFormat::ChannelsLast)
                : at::rand(shape);
        TimeCalls(
            [&] {
              at::Tensor out = module.forward({input}).toTensor();
              timings->classes = out.dim() == 2 ? out.size(1) : 0;
            },
            timings);
        if (timings->classes == 0) {
          return absl::FailedPreconditionError(
              "the model does not return [N, classes] logits");
        }
        return absl::OkStatus();
      });
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "in-process forward latency of a TorchScript model (bench/model_latency.cc)");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_keep_freed_memory)) {
    tlserve::worker::KeepFreedTensorMemoryForReuse();
  }
  const std::string path = absl::GetFlag(FLAGS_model);
  if (path.empty()) {
    std::fprintf(stderr, "model_latency: --model is required\n");
    return 2;
  }
  std::vector<int64_t> shape;
  for (const std::string& part : absl::GetFlag(FLAGS_shape)) {
    int64_t d = 0;
    if (!absl::SimpleAtoi(part, &d) || d < 1) {
      std::fprintf(stderr, "model_latency: --shape: '%s' is not a dimension\n",
                   part.c_str());
      return 2;
    }
    shape.push_back(d);
  }
  if (shape.size() != 4) {
    std::fprintf(stderr, "model_latency: --shape must be N,C,H,W\n");
    return 2;
  }
  const int threads = absl::GetFlag(FLAGS_threads);
  if (threads < 1) {
    std::fprintf(stderr, "model_latency: --threads must be >= 1\n");
    return 2;
  }
  at::set_num_threads(threads);

  const bool through_runner = !absl::GetFlag(FLAGS_image).empty();
  if (through_runner && absl::GetFlag(FLAGS_model_json).empty()) {
    std::fprintf(stderr, "model_latency: --image needs --model_json\n");
    return 2;
  }
  Timings timings;
  absl::Status status;
  if (through_runner && absl::GetFlag(FLAGS_on_thread)) {
    std::thread([&] { status = RunThroughRunner(path, threads, &timings); })
        .join();
  } else {
    status = through_runner ? RunThroughRunner(path, threads, &timings)
                            : Run(path, shape, &timings);
  }
  if (!status.ok()) {
    std::fprintf(stderr, "model_latency: %s\n", status.ToString().c_str());
    return 1;
  }
  std::vector<double> sorted = timings.ms;
  std::sort(sorted.begin(), sorted.end());
  auto percentile = [&](double p) {
    const size_t rank = static_cast<size_t>(std::ceil(p * sorted.size()));
    return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
  };
  double total = 0;
  for (double v : sorted) total += v;
  const double mean = total / sorted.size();
  const double rps = 1000.0 / mean;
  if (through_runner) {
    std::printf("model_latency: %s, Predict on %s through InferenceRunner "
                "(%s), %d threads, %zu calls, %lld classes\n",
                path.c_str(), absl::GetFlag(FLAGS_image).c_str(),
                absl::GetFlag(FLAGS_optimize) ? "optimised copies"
                                              : "as exported",
                threads, sorted.size(),
                static_cast<long long>(timings.classes));
    shape[0] = 1;
  } else {
    std::printf("model_latency: %s, input [%lld,%lld,%lld,%lld], %d threads, "
                "%zu forwards, %lld classes\n",
                path.c_str(), static_cast<long long>(shape[0]),
                static_cast<long long>(shape[1]),
                static_cast<long long>(shape[2]),
                static_cast<long long>(shape[3]), threads, sorted.size(),
                static_cast<long long>(timings.classes));
  }
  std::printf("  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n",
              percentile(0.5), percentile(0.9), percentile(0.99), sorted.back(),
              mean);
  std::printf(
      "RESULT {\"tool\":\"model_latency\",\"threads\":%d,\"batch\":%lld,"
      "\"completed\":%zu,\"throughput_rps\":%.3f,\"throughput_ips\":%.3f,"
      "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
      "\"mean_ms\":%.3f}\n",
      threads, static_cast<long long>(shape[0]), sorted.size(), rps,
      rps * shape[0], percentile(0.5), percentile(0.9), percentile(0.99),
      sorted.back(), mean);
  return 0;
}
