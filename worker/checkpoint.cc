#include "worker/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <filesystem>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

constexpr char kFormat[] = "tlserve-checkpoint-v1";

}  // namespace

absl::Status SaveCheckpoint(const std::string& path, int epoch,
                            const torch::jit::Module& model,
                            const torch::optim::Optimizer& optimizer,
                            const std::mt19937_64& host_rng,
                            const CheckpointExtras* extras) {
  std::string bytes;
  RETURN_IF_ERROR(TorchGuard(
      absl::StrCat("serialising the checkpoint of epoch ", epoch), [&] {
        c10::Dict<std::string, at::Tensor> state;
        for (const auto& p : model.named_parameters(/*recurse=*/true)) {
          state.insert(p.name, p.value.detach());
        }
        for (const auto& b : model.named_buffers(/*recurse=*/true)) {
          state.insert(b.name, b.value.detach());
        }
        torch::serialize::OutputArchive archive;
        archive.write("format", c10::IValue(std::string(kFormat)));
        archive.write("epoch", c10::IValue(static_cast<int64_t>(epoch)));
        archive.write("model", c10::IValue(state));
        torch::serialize::OutputArchive optimizer_archive;
        optimizer.save(optimizer_archive);
        archive.write("optimizer", optimizer_archive);
        {
          at::Generator gen = at::detail::getDefaultCPUGenerator();
          std::lock_guard<std::mutex> lock(gen.mutex());
          archive.write("torch_rng", gen.get_state(), /*is_buffer=*/true);
        }
        std::ostringstream rng_text;
        rng_text << host_rng;
        archive.write("host_rng", c10::IValue(rng_text.str()));
        if (extras != nullptr) {
          archive.write("best_epoch",
                        c10::IValue(static_cast<int64_t>(extras->best_epoch)));
          archive.write("best_value", c10::IValue(extras->best_value));
          archive.write("epochs_since_best",
                        c10::IValue(static_cast<int64_t>(extras->epochs_since_best)));
          c10::Dict<std::string, at::Tensor> best;
          for (const auto& [name, tensor] : extras->best_weights) {
            best.insert(name, tensor);
          }
          archive.write("best_weights", c10::IValue(best));
        }
        std::ostringstream out;
        archive.save_to(out);
        bytes = std::move(out).str();
        return absl::OkStatus();
      }));
  return Annotate(WriteFileAtomic(path, bytes),
                  absl::StrCat("writing checkpoint ", path));
}

absl::StatusOr<int> LoadCheckpoint(const std::string& path,
                                   torch::jit::Module& model,
                                   torch::optim::Optimizer& optimizer,
                                   std::mt19937_64& host_rng,
                                   CheckpointExtras* extras) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", path, " not found"));
  }
  const std::string what = absl::StrCat("loading checkpoint ", path);
  return TorchGuardOr<int>(
      what,
      [&]() -> absl::StatusOr<int> {
        torch::serialize::InputArchive archive;
        archive.load_from(path);
        c10::IValue format;
        if (!archive.try_read("format", format) || !format.isString() ||
            format.toStringRef() != kFormat) {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": not a tlserve checkpoint"));
        }
        c10::IValue epoch;
        archive.read("epoch", epoch);
        c10::IValue state_value;
        archive.read("model", state_value);
        c10::Dict<c10::IValue, c10::IValue> state = state_value.toGenericDict();

        // Checked in full before anything is copied, so a mismatching file
        // leaves the model untouched.
        std::vector<std::pair<at::Tensor, at::Tensor>> copies;
        auto collect = [&](const std::string& name,
                           const at::Tensor& target) -> absl::Status {
          auto it = state.find(name);
          if (it == state.end()) {
            return absl::InvalidArgumentError(
                absl::StrCat(what, ": no tensor for '", name, "'"));
          }
          at::Tensor source = it->value().toTensor();
          if (!source.sizes().equals(target.sizes())) {
            return absl::InvalidArgumentError(absl::StrCat(
                what, ": '", name, "' has shape ", c10::str(source.sizes()),
                " but the model has ", c10::str(target.sizes())));
          }
          copies.emplace_back(target, source);
          return absl::OkStatus();
        };
        for (const auto& p : model.named_parameters(/*recurse=*/true)) {
          RETURN_IF_ERROR(collect(p.name, p.value));
        }
        for (const auto& b : model.named_buffers(/*recurse=*/true)) {
          RETURN_IF_ERROR(collect(b.name, b.value));
        }
        {
          at::NoGradGuard no_grad;
          for (auto& [target, source] : copies) target.copy_(source);
        }

        torch::serialize::InputArchive optimizer_archive;
        archive.read("optimizer", optimizer_archive);
        optimizer.load(optimizer_archive);

        at::Tensor torch_rng;
        archive.read("torch_rng", torch_rng, /*is_buffer=*/true);
        {
          at::Generator gen = at::detail::getDefaultCPUGenerator();
          std::lock_guard<std::mutex> lock(gen.mutex());
          gen.set_state(torch_rng);
        }
        c10::IValue rng_text;
        archive.read("host_rng", rng_text);
        std::istringstream in(rng_text.toStringRef());
        in >> host_rng;
        if (in.fail()) {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": unreadable host RNG state"));
        }
        if (extras != nullptr) {
          *extras = CheckpointExtras();
          c10::IValue value;
          if (archive.try_read("best_epoch", value)) {
            extras->best_epoch = static_cast<int>(value.toInt());
            archive.read("best_value", value);
            extras->best_value = value.toDouble();
            archive.read("epochs_since_best", value);
            extras->epochs_since_best = static_cast<int>(value.toInt());
            archive.read("best_weights", value);
            for (const auto& entry : value.toGenericDict()) {
              extras->best_weights.emplace_back(entry.key().toStringRef(),
                                                entry.value().toTensor());
            }
          }
        }
        return static_cast<int>(epoch.toInt());
      },
      absl::StatusCode::kInvalidArgument);
}

}  // namespace tlserve::worker
