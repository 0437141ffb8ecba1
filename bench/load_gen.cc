// load_gen: a load generator for tlserve's InferenceService, in the spirit
// of Triton's perf_analyzer. One process drives many concurrent calls with
// gRPC's callback API (no thread per call), either closed loop (N calls
// always outstanding) or open loop (a fixed request rate, Poisson or
// evenly spaced arrivals), and reports throughput, latency percentiles and
// errors by status code, plus one `RESULT {json}` line for scripts.
//
//   build-bench/bench/load_gen --target=127.0.0.1:50051 --model=m-1
//       --image=shoe.png --batch=4 --concurrency=8 --seconds=10
//   build-bench/bench/load_gen --target=... --model=m-1
//       --tensor_shape=1,3,224,224 --dtype=FP32 --rate=50 --arrival=poisson
//
// Latency is measured per call, from just before the call is started to its
// completion callback, with std::chrono::steady_clock. Only calls that
// complete inside the measurement window (after --warmup_seconds) count
// toward throughput and percentiles; errors anywhere are reported and make
// the exit status non-zero unless --allow_errors.

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sys/types.h>
#include <unistd.h>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/file_util.h"
#include "tlserve/v1/inference.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "server address host:port");
ABSL_FLAG(std::string, rpc, "Predict",
          "which InferenceService method to call (Predict; Embed later)");
ABSL_FLAG(std::string, model, "",
          "model_id to call (required); several, comma-separated, are called "
          "in turn");
ABSL_FLAG(std::string, image, "",
          "PNG/JPEG file sent as the input, repeated --batch times");
ABSL_FLAG(int, batch, 1, "inputs per request when sending --image");
ABSL_FLAG(std::vector<std::string>, tensor_shape, {},
          "send a raw tensor of this shape instead, e.g. 1,3,224,224 "
          "(its first dimension is the inputs per request)");
ABSL_FLAG(std::string, dtype, "FP32", "tensor dtype: FP32 or UINT8");
ABSL_FLAG(uint64_t, seed, 1, "seed of the tensor contents and arrivals");
ABSL_FLAG(int, concurrency, 1,
          "closed loop: calls kept outstanding (ignored with --rate)");
ABSL_FLAG(double, rate, 0,
          "open loop: requests per second (0: closed loop)");
ABSL_FLAG(std::string, arrival, "poisson",
          "open-loop arrivals: poisson or fixed (evenly spaced)");
ABSL_FLAG(int, max_outstanding, 4096,
          "open loop: arrivals beyond this many outstanding calls are "
          "dropped (counted, not sent) so an overloaded server cannot grow "
          "the client without bound");
ABSL_FLAG(double, warmup_seconds, 2, "load before the window, not measured");
ABSL_FLAG(double, seconds, 10, "measurement window");
ABSL_FLAG(int, timeout_ms, 10000, "deadline of each call");
ABSL_FLAG(int, top_k, 0, "PredictRequest.top_k (0: the server's default)");
ABSL_FLAG(int, channels, 1,
          "gRPC channels (TCP connections) the calls are spread over");
ABSL_FLAG(bool, echo, false,
          "instead of --target, load an InferenceService that a child "
          "process serves on 127.0.0.1, whose Predict answers at once (one "
          "empty prediction per input): one gRPC hop between two processes "
          "on this machine with the same requests, the floor under any "
          "server's latency");
ABSL_FLAG(bool, allow_errors, false, "exit 0 even when calls failed");

namespace {

using Clock = std::chrono::steady_clock;
using tlserve::v1::InferenceService;
using tlserve::v1::PredictRequest;
using tlserve::v1::PredictResponse;

// One kind of RPC the generator can drive. Adding Embed means one more
// subclass; the loops and the statistics do not change.
class RpcDriver {
 public:
  // Reports one finished call: its status (a bad but OK response is turned
  // into an error status by the driver).
  using Done = std::function<void(grpc::Status)>;
  virtual ~RpcDriver() = default;
  // Starts one call on `stub` with `context`; `done` runs exactly once, on
  // a gRPC thread. `context` outlives the call.
  virtual void Start(InferenceService::Stub* stub,
                     grpc::ClientContext* context, Done done) = 0;
  virtual int inputs_per_request() const = 0;
};

class PredictDriver : public RpcDriver {
 public:
  // One request per model, sent in turn.
  PredictDriver(std::vector<PredictRequest> requests, int inputs)
      : requests_(std::move(requests)), inputs_(inputs) {}

  void Start(InferenceService::Stub* stub, grpc::ClientContext* context,
             Done done) override {
    auto* response = new PredictResponse();
    // The requests are shared by every call: gRPC only reads them.
    const PredictRequest& request =
        requests_[next_.fetch_add(1, std::memory_order_relaxed) %
                  requests_.size()];
    stub->async()->Predict(
        context, &request, response,
        [this, response, done = std::move(done)](grpc::Status status) {
          std::unique_ptr<PredictResponse> owned(response);
          if (status.ok() && owned->predictions_size() != inputs_) {
            status = grpc::Status(
                grpc::StatusCode::INTERNAL,
                absl::StrCat("load_gen: response has ",
                             owned->predictions_size(), " predictions for ",
                             inputs_, " inputs"));
          }
          done(status);
        });
  }
  int inputs_per_request() const override { return inputs_; }

 private:
  const std::vector<PredictRequest> requests_;
  const int inputs_;
  std::atomic<uint64_t> next_{0};
};

absl::StatusOr<std::vector<int64_t>> ParseShape(
    const std::vector<std::string>& parts) {
  std::vector<int64_t> shape;
  for (const std::string& p : parts) {
    int64_t d = 0;
    if (!absl::SimpleAtoi(p, &d) || d < 1 || d > (1 << 20)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--tensor_shape: '", p, "' is not a dimension in [1, 2^20]"));
    }
    shape.push_back(d);
  }
  if (shape.size() != 4) {
    return absl::InvalidArgumentError(
        "--tensor_shape must have 4 dimensions N,C,H,W");
  }
  return shape;
}

// The request every call sends, from the input flags.
absl::StatusOr<std::unique_ptr<RpcDriver>> MakeDriver() {
  const std::string rpc = absl::GetFlag(FLAGS_rpc);
  if (rpc != "Predict") {
    return absl::UnimplementedError(
        absl::StrCat("--rpc=", rpc, ": only Predict is implemented"));
  }
  const std::vector<std::string> models =
      absl::StrSplit(absl::GetFlag(FLAGS_model), ',', absl::SkipEmpty());
  if (models.empty()) return absl::InvalidArgumentError("--model is required");
  PredictRequest request;
  request.set_top_k(absl::GetFlag(FLAGS_top_k));
  // The same inputs for every model.
  auto per_model = [&models](const PredictRequest& r) {
    std::vector<PredictRequest> requests(models.size(), r);
    for (size_t i = 0; i < models.size(); ++i) {
      requests[i].set_model_id(models[i]);
    }
    return requests;
  };
  const std::string image_path = absl::GetFlag(FLAGS_image);
  const std::vector<std::string> shape_flag = absl::GetFlag(FLAGS_tensor_shape);
  const int batch = absl::GetFlag(FLAGS_batch);
  if (image_path.empty() == shape_flag.empty()) {
    return absl::InvalidArgumentError(
        "give exactly one input: --image FILE or --tensor_shape N,C,H,W");
  }
  if (!image_path.empty()) {
    if (batch < 1) return absl::InvalidArgumentError("--batch must be >= 1");
    absl::StatusOr<std::string> bytes = tlserve::ReadFile(image_path);
    if (!bytes.ok()) return bytes.status();
    for (int i = 0; i < batch; ++i) request.add_images(*bytes);
    return std::make_unique<PredictDriver>(per_model(request), batch);
  }
  if (batch != 1) {
    return absl::InvalidArgumentError(
        "--batch is for --image; with --tensor_shape the first dimension is "
        "the batch");
  }
  absl::StatusOr<std::vector<int64_t>> shape = ParseShape(shape_flag);
  if (!shape.ok()) return shape.status();
  int64_t count = 1;
  for (int64_t d : *shape) count *= d;
  if (count > (int64_t{1} << 28)) {
    return absl::InvalidArgumentError("--tensor_shape is too large");
  }
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  std::mt19937_64 rng(absl::GetFlag(FLAGS_seed));
  std::string contents;
  if (dtype == "FP32") {
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    std::vector<float> values(count);
    for (float& v : values) v = uniform(rng);
    // Little-endian on every host this runs on (x86-64, aarch64).
    contents.assign(reinterpret_cast<const char*>(values.data()),
                    values.size() * sizeof(float));
  } else if (dtype == "UINT8") {
    contents.resize(count);
    for (char& c : contents) c = static_cast<char>(rng() & 0xff);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--dtype=", dtype, ": use FP32 or UINT8"));
  }
  tlserve::v1::RawTensor* tensor = request.mutable_tensor();
  for (int64_t d : *shape) tensor->add_shape(d);
  tensor->set_dtype(dtype);
  tensor->set_contents(std::move(contents));
  return std::make_unique<PredictDriver>(per_model(request),
                                         static_cast<int>((*shape)[0]));
}

// --echo: Predict answered at once, on gRPC's own thread, one empty
// prediction per input, so a call costs what gRPC and the loopback cost.
class EchoService final : public InferenceService::CallbackService {
 public:
  grpc::ServerUnaryReactor* Predict(grpc::CallbackServerContext* context,
                                    const PredictRequest* request,
                                    PredictResponse* response) override {
    int inputs = request->images_size();
    if (inputs == 0 && request->tensor().shape_size() > 0) {
      inputs = static_cast<int>(request->tensor().shape(0));
    }
    for (int i = 0; i < inputs; ++i) response->add_predictions();
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

// Forks the --echo server (before this process has touched gRPC, so the
// child starts clean) and returns its port. The child serves until its
// pipe from this process closes, that is until this process exits,
// however it exits.
absl::StatusOr<int> StartEchoProcess() {
  int to_child[2];
  int from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) {
    return absl::InternalError("--echo: pipe() failed");
  }
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("--echo: fork() failed");
  if (pid == 0) {
    close(to_child[1]);
    close(from_child[0]);
    EchoService echo;
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port);
    builder.SetMaxReceiveMessageSize(-1);
    builder.RegisterService(&echo);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr) port = 0;
    (void)!write(from_child[1], &port, sizeof(port));
    char byte;
    while (read(to_child[0], &byte, 1) > 0) {
    }
    std::_Exit(0);  // no destructors: the server's threads are still up
  }
  close(to_child[0]);
  close(from_child[1]);
  int port = 0;
  if (read(from_child[0], &port, sizeof(port)) != sizeof(port) || port == 0) {
    return absl::UnavailableError("--echo: the echo server did not start");
  }
  close(from_child[0]);
  return port;  // to_child[1] stays open until this process exits
}

// Where a call completed, relative to the measurement window.
enum class Phase { kWarmup, kWindow, kAfter };

struct ErrorCount {
  int64_t count = 0;
  std::string first_message;
};

// Runs the load and collects results. Thread-safe: completions arrive on
// gRPC's threads.
class LoadRun {
 public:
  struct Options {
    int concurrency = 1;
    double rate = 0;  // > 0: open loop
    bool poisson = true;
    int max_outstanding = 4096;
    absl::Duration warmup;
    absl::Duration window;
    absl::Duration timeout;
    uint64_t seed = 1;
  };

  LoadRun(Options options, RpcDriver* driver,
          std::vector<std::unique_ptr<InferenceService::Stub>> stubs)
      : options_(options), driver_(driver), stubs_(std::move(stubs)) {}

  // Returns false if calls were still outstanding after the deadline plus a
  // margin: then the run must not be destroyed.
  bool Run() {
    start_ = Clock::now();
    window_start_ = start_ + absl::ToChronoNanoseconds(options_.warmup);
    window_end_ = window_start_ + absl::ToChronoNanoseconds(options_.window);
    if (options_.rate > 0) {
      OpenLoop();
    } else {
      for (int i = 0; i < options_.concurrency; ++i) StartOne();
      std::this_thread::sleep_until(window_end_);
    }
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    // Every call has a deadline, so this ends; the margin covers a server
    // that answers late.
    absl::MutexLock lock(&mu_);
    auto drained = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return outstanding_ == 0;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&drained),
                                options_.timeout + absl::Seconds(5));
  }

  // Prints the report and the RESULT line; returns the number of failed
  // calls (in any phase).
  int64_t Report(const std::string& target, const std::string& model,
                 const std::string& rpc) {
    absl::MutexLock lock(&mu_);
    std::vector<double> sorted = window_latency_ms_;
    std::sort(sorted.begin(), sorted.end());
    auto percentile = [&](double p) {
      if (sorted.empty()) return 0.0;
      // Nearest rank.
      size_t rank = static_cast<size_t>(std::ceil(p * sorted.size()));
      return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
    };
    double mean = 0;
    for (double v : sorted) mean += v;
    if (!sorted.empty()) mean /= sorted.size();
    const double window_s = absl::ToDoubleSeconds(options_.window);
    const int64_t ok = static_cast<int64_t>(sorted.size());
    const double rps = ok / window_s;
    const double ips = rps * driver_->inputs_per_request();
    int64_t failed = 0;
    for (const auto& [code, e] : errors_) failed += e.count;
    const int64_t window_errors = window_errors_;

    const std::string mode =
        options_.rate > 0
            ? absl::StrFormat("open loop %.1f req/s (%s)", options_.rate,
                              options_.poisson ? "poisson" : "fixed")
            : absl::StrCat("closed loop, concurrency ", options_.concurrency);
    std::printf("load_gen: %s model=%s target=%s, %s, %d inputs/request\n",
                rpc.c_str(), model.c_str(), target.c_str(), mode.c_str(),
                driver_->inputs_per_request());
    std::printf("  window %.1f s after %.1f s warmup\n", window_s,
                absl::ToDoubleSeconds(options_.warmup));
    std::printf("  completed %lld ok, %lld failed in window (%lld failed in all)",
                static_cast<long long>(ok),
                static_cast<long long>(window_errors),
                static_cast<long long>(failed));
    if (dropped_ > 0) {
      std::printf(", %lld dropped at the client", static_cast<long long>(dropped_));
    }
    std::printf("\n  throughput %.2f req/s, %.2f inputs/s\n", rps, ips);
    std::printf("  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  mean %.3f\n",
                percentile(0.5), percentile(0.9), percentile(0.99),
                sorted.empty() ? 0.0 : sorted.back(), mean);
    for (const auto& [code, e] : errors_) {
      std::printf("  error %s x%lld, first: %s\n", code.c_str(),
                  static_cast<long long>(e.count), e.first_message.c_str());
    }

    std::string errors_json;
    for (const auto& [code, e] : errors_) {
      absl::StrAppend(&errors_json, errors_json.empty() ? "" : ",", "\"", code,
                      "\":{\"count\":", e.count, ",\"first_message\":",
                      JsonString(e.first_message), "}");
    }
    std::printf(
        "RESULT {\"tool\":\"load_gen\",\"rpc\":%s,\"target\":%s,\"model\":%s,"
        "\"mode\":\"%s\",\"concurrency\":%d,\"rate\":%g,"
        "\"inputs_per_request\":%d,\"warmup_s\":%g,\"window_s\":%g,"
        "\"completed\":%lld,\"window_errors\":%lld,\"errors\":%lld,"
        "\"dropped\":%lld,\"throughput_rps\":%.3f,\"throughput_ips\":%.3f,"
        "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
        "\"mean_ms\":%.3f,\"errors_by_code\":{%s}}\n",
        JsonString(rpc).c_str(), JsonString(target).c_str(),
        JsonString(model).c_str(), options_.rate > 0 ? "open" : "closed",
        options_.rate > 0 ? 0 : options_.concurrency, options_.rate,
        driver_->inputs_per_request(), absl::ToDoubleSeconds(options_.warmup),
        window_s, static_cast<long long>(ok),
        static_cast<long long>(window_errors), static_cast<long long>(failed),
        static_cast<long long>(dropped_), rps, ips, percentile(0.5),
        percentile(0.9), percentile(0.99), sorted.empty() ? 0.0 : sorted.back(),
        mean, errors_json.c_str());
    std::fflush(stdout);
    return failed;
  }

 private:
  struct Call {
    grpc::ClientContext context;
    Clock::time_point sent;
  };

  static std::string JsonString(const std::string& s) {
    std::string out = "\"";
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c < 0x20) {
        absl::StrAppendFormat(&out, "\\u%04x", c);
      } else {
        out += static_cast<char>(c);
      }
    }
    return out + "\"";
  }

  // Starts one call unless the run is stopping. Closed loop: called again
  // from each completion, so `concurrency` calls stay outstanding.
  void StartOne() {
    size_t stub_index = 0;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      ++outstanding_;
      stub_index = next_stub_++ % stubs_.size();
    }
    auto* call = new Call();
    call->context.set_deadline(std::chrono::system_clock::now() +
                               absl::ToChronoMilliseconds(options_.timeout));
    call->sent = Clock::now();
    driver_->Start(stubs_[stub_index].get(), &call->context,
                   [this, call](grpc::Status status) {
                     const Clock::time_point done = Clock::now();
                     const double ms =
                         std::chrono::duration<double, std::milli>(done -
                                                                   call->sent)
                             .count();
                     delete call;
                     Finish(status, done, ms);
                   });
  }

  void Finish(const grpc::Status& status, Clock::time_point done, double ms) {
    const Phase phase = done < window_start_ ? Phase::kWarmup
                        : done < window_end_ ? Phase::kWindow
                                             : Phase::kAfter;
    bool restart = false;
    {
      absl::MutexLock lock(&mu_);
      --outstanding_;
      if (status.ok()) {
        if (phase == Phase::kWindow) window_latency_ms_.push_back(ms);
      } else {
        const std::string code = absl::StatusCodeToString(
            static_cast<absl::StatusCode>(status.error_code()));
        ErrorCount& e = errors_[code];
        if (e.count++ == 0) e.first_message = status.error_message();
        if (phase == Phase::kWindow) ++window_errors_;
      }
      restart = options_.rate <= 0 && !stopping_;
    }
    if (restart) StartOne();
  }

  void OpenLoop() {
    std::mt19937_64 rng(options_.seed);
    std::exponential_distribution<double> exponential(options_.rate);
    const double fixed_gap = 1.0 / options_.rate;
    Clock::time_point next = start_;
    while (next < window_end_) {
      std::this_thread::sleep_until(next);
      bool full = false;
      {
        absl::MutexLock lock(&mu_);
        full = outstanding_ >= options_.max_outstanding;
        if (full && next >= window_start_) ++dropped_;
      }
      if (!full) StartOne();
      const double gap = options_.poisson ? exponential(rng) : fixed_gap;
      next += std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(gap));
    }
    std::this_thread::sleep_until(window_end_);
  }

  const Options options_;
  RpcDriver* const driver_;
  const std::vector<std::unique_ptr<InferenceService::Stub>> stubs_;
  Clock::time_point start_;
  Clock::time_point window_start_;
  Clock::time_point window_end_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  size_t next_stub_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<double> window_latency_ms_ ABSL_GUARDED_BY(mu_);
  // Keyed by the code's name, so the report is sorted and readable.
  std::map<std::string, ErrorCount> errors_ ABSL_GUARDED_BY(mu_);
  int64_t window_errors_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "load generator for tlserve.v1.InferenceService (see bench/load_gen.cc)");
  absl::ParseCommandLine(argc, argv);
  auto fail = [](const absl::Status& status) {
    std::fprintf(stderr, "load_gen: %s\n", status.ToString().c_str());
    return 2;
  };
  absl::StatusOr<std::unique_ptr<RpcDriver>> driver = MakeDriver();
  if (!driver.ok()) return fail(driver.status());

  LoadRun::Options options;
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  options.rate = absl::GetFlag(FLAGS_rate);
  options.max_outstanding = absl::GetFlag(FLAGS_max_outstanding);
  options.warmup = absl::Seconds(absl::GetFlag(FLAGS_warmup_seconds));
  options.window = absl::Seconds(absl::GetFlag(FLAGS_seconds));
  options.timeout = absl::Milliseconds(absl::GetFlag(FLAGS_timeout_ms));
  options.seed = absl::GetFlag(FLAGS_seed);
  const std::string arrival = absl::GetFlag(FLAGS_arrival);
  if (arrival != "poisson" && arrival != "fixed") {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("--arrival=", arrival, ": use poisson or fixed")));
  }
  options.poisson = arrival == "poisson";
  if (options.rate < 0 || (options.rate == 0 && options.concurrency < 1) ||
      options.max_outstanding < 1) {
    return fail(absl::InvalidArgumentError(
        "need --concurrency >= 1, or --rate > 0 with --max_outstanding >= 1"));
  }
  if (options.window <= absl::ZeroDuration() ||
      options.warmup < absl::ZeroDuration() ||
      options.timeout <= absl::ZeroDuration()) {
    return fail(absl::InvalidArgumentError(
        "need --seconds > 0, --warmup_seconds >= 0 and --timeout_ms > 0"));
  }
  const int num_channels = absl::GetFlag(FLAGS_channels);
  if (num_channels < 1) {
    return fail(absl::InvalidArgumentError("--channels must be >= 1"));
  }

  std::string target = absl::GetFlag(FLAGS_target);
  if (absl::GetFlag(FLAGS_echo)) {
    absl::StatusOr<int> port = StartEchoProcess();
    if (!port.ok()) return fail(port.status());
    target = absl::StrCat("127.0.0.1:", *port);
  }
  std::vector<std::unique_ptr<InferenceService::Stub>> stubs;
  for (int i = 0; i < num_channels; ++i) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    args.SetMaxSendMessageSize(-1);
    // A distinct argument per channel keeps gRPC from sharing one
    // connection between them.
    args.SetInt("tlserve.load_gen_channel", i);
    auto channel = grpc::CreateCustomChannel(
        target, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(std::chrono::system_clock::now() +
                                   std::chrono::seconds(10))) {
      return fail(absl::UnavailableError(
          absl::StrCat("cannot connect to ", target, " within 10 s")));
    }
    stubs.push_back(InferenceService::NewStub(channel));
  }

  auto run = std::make_unique<LoadRun>(options, driver->get(), std::move(stubs));
  const bool drained = run->Run();
  const int64_t failed = run->Report(target, absl::GetFlag(FLAGS_model),
                                     absl::GetFlag(FLAGS_rpc));
  if (!drained) {
    // Callbacks may still arrive and touch the run: leave it (and the
    // driver) alive and exit without destructors.
    std::fprintf(stderr, "load_gen: calls outlived their deadline; exiting\n");
    std::fflush(nullptr);
    std::_Exit(3);
  }
  return failed > 0 && !absl::GetFlag(FLAGS_allow_errors) ? 1 : 0;
}
