#include "worker/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

constexpr char kFormat[] = "tlserve-checkpoint-v2";

}  // namespace

absl::Status SaveCheckpoint(const std::string& path,
                            const TrainingCursor& cursor,
                            const torch::jit::Module& model,
                            const torch::optim::Optimizer& optimizer,
                            const UnchangedTensor& unchanged,
                            const CheckpointExtras* extras) {
  const std::string temp = absl::StrCat(path, ".partial");
  RETURN_IF_ERROR(TorchGuard(
      absl::StrCat("writing the checkpoint of epoch ", cursor.epoch, " batch ",
                   cursor.batch, " to ", path),
      [&] {
        c10::Dict<std::string, at::Tensor> state;
        c10::List<std::string> left_out;
        auto add = [&](const std::string& name, const at::Tensor& value) {
          if (unchanged && unchanged(name)) {
            left_out.push_back(name);
          } else {
            state.insert(name, value.detach());
          }
        };
        for (const auto& p : model.named_parameters(/*recurse=*/true)) {
          add(p.name, p.value);
        }
        for (const auto& b : model.named_buffers(/*recurse=*/true)) {
          add(b.name, b.value);
        }
        torch::serialize::OutputArchive archive;
        archive.write("format", c10::IValue(std::string(kFormat)));
        archive.write("epoch", c10::IValue(static_cast<int64_t>(cursor.epoch)));
        archive.write("batch", c10::IValue(cursor.batch));
        archive.write("loss_sum", c10::IValue(cursor.loss_sum));
        archive.write("correct", c10::IValue(cursor.correct));
        archive.write("seen", c10::IValue(cursor.seen));
        archive.write("model", c10::IValue(state));
        archive.write("unchanged", c10::IValue(left_out));
        torch::serialize::OutputArchive optimizer_archive;
        optimizer.save(optimizer_archive);
        archive.write("optimizer", optimizer_archive);
        {
          at::Generator gen = at::detail::getDefaultCPUGenerator();
          std::lock_guard<std::mutex> lock(gen.mutex());
          archive.write("torch_rng", gen.get_state(), /*is_buffer=*/true);
        }
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
        // Straight to the file: no in-memory copy of a large model.
        archive.save_to(temp);
        return absl::OkStatus();
      }));
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) {
    std::filesystem::remove(temp, error);
    return absl::InternalError(
        absl::StrCat("renaming checkpoint ", temp, " to ", path, " failed"));
  }
  return absl::OkStatus();
}

absl::StatusOr<TrainingCursor> LoadCheckpoint(const std::string& path,
                                              torch::jit::Module& model,
                                              torch::optim::Optimizer& optimizer,
                                              CheckpointExtras* extras) {
  std::error_code error;
  if (!std::filesystem::exists(path, error)) {
    return absl::NotFoundError(absl::StrCat("checkpoint ", path, " not found"));
  }
  const std::string what = absl::StrCat("loading checkpoint ", path);
  return TorchGuardOr<TrainingCursor>(
      what,
      [&]() -> absl::StatusOr<TrainingCursor> {
        torch::serialize::InputArchive archive;
        archive.load_from(path);
        c10::IValue format;
        if (!archive.try_read("format", format) || !format.isString()) {
          return absl::InvalidArgumentError(
              absl::StrCat(what, ": not a tlserve checkpoint"));
        }
        if (format.toStringRef() != kFormat) {
          return absl::InvalidArgumentError(absl::StrCat(
              what, ": format '", format.toStringRef(), "', this worker reads '",
              kFormat, "'; start the job again without the checkpoint"));
        }
        TrainingCursor cursor;
        c10::IValue value;
        archive.read("epoch", value);
        cursor.epoch = static_cast<int>(value.toInt());
        archive.read("batch", value);
        cursor.batch = value.toInt();
        archive.read("loss_sum", value);
        cursor.loss_sum = value.toDouble();
        archive.read("correct", value);
        cursor.correct = value.toInt();
        archive.read("seen", value);
        cursor.seen = value.toInt();
        c10::IValue state_value;
        archive.read("model", state_value);
        c10::Dict<c10::IValue, c10::IValue> state = state_value.toGenericDict();
        c10::IValue unchanged_value;
        archive.read("unchanged", unchanged_value);
        std::set<std::string> unchanged;
        for (const c10::IValue& name : unchanged_value.toListRef()) {
          unchanged.insert(name.toStringRef());
        }

        // Checked in full before anything is copied, so a mismatching file
        // leaves the model untouched.
        std::vector<std::pair<at::Tensor, at::Tensor>> copies;
        auto collect = [&](const std::string& name,
                           const at::Tensor& target) -> absl::Status {
          auto it = state.find(name);
          if (it == state.end()) {
            if (unchanged.count(name) > 0) return absl::OkStatus();
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
        if (extras != nullptr) {
          *extras = CheckpointExtras();
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
        return cursor;
      },
      absl::StatusCode::kInvalidArgument);
}

}  // namespace tlserve::worker
