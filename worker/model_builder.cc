#include "worker/model_builder.h"

#include <ATen/CPUGeneratorImpl.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"
#include "common/input_fit.h"
#include "common/status_macros.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

using torch::jit::Module;

// Two modules built in different processes can meet in one saved file (a
// PRETRAIN backbone later fine-tuned with a fresh head), so class names
// carry a per-process nonce besides the counter.
std::string UniqueClassName(absl::string_view kind) {
  static const std::string nonce = [] {
    std::random_device device;
    return absl::StrFormat("p%08x", device());
  }();
  static std::atomic<int64_t> counter{0};
  return absl::StrCat("__torch__.tlserve.", nonce, ".", kind, "_",
                      counter.fetch_add(1));
}

// Module::train()/eval() require a "training" attribute on every module.
Module NewModule(absl::string_view kind) {
  Module module(UniqueClassName(kind));
  module.register_attribute("training", c10::BoolType::get(), true);
  return module;
}

at::Generator MakeGenerator(uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

torch::Tensor Param(torch::Tensor t) { return t.requires_grad_(true); }

torch::Tensor KaimingNormal(std::vector<int64_t> shape, at::Generator& gen) {
  int64_t fan_out = shape[0];
  for (size_t i = 2; i < shape.size(); ++i) fan_out *= shape[i];
  const double std = std::sqrt(2.0 / static_cast<double>(fan_out));
  return torch::empty(shape).normal_(0.0, std, gen);
}

Module Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride,
              at::Generator& gen) {
  Module m = NewModule("Conv2d");
  m.register_parameter("weight",
                       Param(KaimingNormal({out, in, kernel, kernel}, gen)),
                       /*is_buffer=*/false);
  const int64_t pad = kernel / 2;
  m.define(absl::StrFormat(
      "def forward(self, x):\n"
      "    return torch.conv2d(x, self.weight, None, [%d, %d], [%d, %d], "
      "[1, 1], 1)\n",
      stride, stride, pad, pad));
  return m;
}

Module BatchNorm2d(int64_t channels) {
  Module m = NewModule("BatchNorm2d");
  m.register_parameter("weight", Param(torch::ones({channels})), false);
  m.register_parameter("bias", Param(torch::zeros({channels})), false);
  m.register_buffer("running_mean", torch::zeros({channels}));
  m.register_buffer("running_var", torch::ones({channels}));
  m.define(
      "def forward(self, x):\n"
      "    return torch.batch_norm(x, self.weight, self.bias, "
      "self.running_mean, self.running_var, self.training, 0.1, 1e-5, "
      "False)\n");
  return m;
}

Module Linear(int64_t in, int64_t out, at::Generator& gen) {
  Module m = NewModule("Linear");
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  m.register_parameter(
      "weight", Param(torch::empty({out, in}).uniform_(-bound, bound, gen)),
      false);
  m.register_parameter(
      "bias", Param(torch::empty({out}).uniform_(-bound, bound, gen)), false);
  m.define(
      "def forward(self, x):\n"
      "    return torch.addmm(self.bias, x, torch.t(self.weight))\n");
  return m;
}

// conv-bn, optionally followed by relu.
Module ConvBn(int64_t in, int64_t out, int64_t kernel, int64_t stride,
              bool relu, at::Generator& gen) {
  Module m = NewModule("ConvBn");
  m.register_module("conv", Conv2d(in, out, kernel, stride, gen));
  m.register_module("bn", BatchNorm2d(out));
  m.define(
      absl::StrCat("def forward(self, x):\n"
                   "    x = self.bn.forward(self.conv.forward(x))\n",
                   relu ? "    return torch.relu(x)\n" : "    return x\n"));
  return m;
}

// torchvision's BasicBlock: two 3x3 conv-bn with a residual connection.
Module BasicBlock(int64_t in, int64_t out, int64_t stride, at::Generator& gen) {
  Module m = NewModule("BasicBlock");
  m.register_module("conv1", Conv2d(in, out, 3, stride, gen));
  m.register_module("bn1", BatchNorm2d(out));
  m.register_module("conv2", Conv2d(out, out, 3, 1, gen));
  m.register_module("bn2", BatchNorm2d(out));
  const bool shortcut = stride != 1 || in != out;
  if (shortcut) {
    m.register_module("downsample", ConvBn(in, out, 1, stride, false, gen));
  }
  m.define(absl::StrCat(
      "def forward(self, x):\n"
      "    out = torch.relu(self.bn1.forward(self.conv1.forward(x)))\n"
      "    out = self.bn2.forward(self.conv2.forward(out))\n",
      shortcut ? "    return torch.relu(out + self.downsample.forward(x))\n"
               : "    return torch.relu(out + x)\n"));
  return m;
}

// Puts a module in eval mode and, on destruction, restores every
// submodule's own training flag (frozen blocks stay in eval), so a probe
// forward changes no BatchNorm statistics.
class ScopedEval {
 public:
  explicit ScopedEval(Module module) {
    for (const Module& m : module.modules()) {
      flags_.emplace_back(m, m.is_training());
    }
    module.eval();
  }
  ~ScopedEval() {
    for (auto& [m, flag] : flags_) m.setattr("training", flag);
  }
  ScopedEval(const ScopedEval&) = delete;
  ScopedEval& operator=(const ScopedEval&) = delete;

 private:
  std::vector<std::pair<Module, bool>> flags_;
};

int64_t NumParameters(const Module& module) {
  int64_t n = 0;
  for (const torch::Tensor& p : module.parameters()) n += p.numel();
  return n;
}

struct BlockEntry {
  std::string name;
  Module module;
  int64_t num_parameters;
};

// Children of `module` that hold parameters, named `prefix` + child name.
std::vector<BlockEntry> ParameterisedChildren(const Module& module,
                                              const std::string& prefix) {
  std::vector<BlockEntry> children;
  for (const auto& child : module.named_children()) {
    const int64_t n = NumParameters(child.value);
    if (n > 0) children.push_back({prefix + child.name, child.value, n});
  }
  return children;
}

// Blocks() opens a container holding at least this share of the
// parameters. resnet's last stage holds 64% (resnet50) to 75% (resnet18)
// and must stay one block; wrappers like `features` hold 100%.
constexpr double kDominantShare = 0.9;

}  // namespace

absl::StatusOr<Module> MakeCompactResNet(int64_t in_channels,
                                         int64_t base_width, uint64_t seed) {
  if (in_channels < 1 || in_channels > 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "compact ResNet: in_channels ", in_channels, " is outside [1, 16]"));
  }
  if (base_width < 1 || base_width > 512) {
    return absl::InvalidArgumentError(absl::StrCat(
        "compact ResNet: base_width ", base_width, " is outside [1, 512]"));
  }
  return TorchGuardOr<
      Module>("building the compact ResNet", [&]() -> absl::StatusOr<Module> {
    at::Generator gen = MakeGenerator(seed);
    const int64_t w = base_width;
    Module net = NewModule("CompactResNet");
    net.register_module("stem", ConvBn(in_channels, w, 3, 1, true, gen));
    net.register_module("layer1", BasicBlock(w, w, 1, gen));
    net.register_module("layer2", BasicBlock(w, 2 * w, 2, gen));
    net.register_module("layer3", BasicBlock(2 * w, 4 * w, 2, gen));
    net.define(
        "def forward(self, x):\n"
        "    x = self.stem.forward(x)\n"
        "    x = self.layer1.forward(x)\n"
        "    x = self.layer2.forward(x)\n"
        "    x = self.layer3.forward(x)\n"
        "    return torch.flatten(torch.adaptive_avg_pool2d(x, [1, 1]), 1)\n");
    return net;
  });
}

absl::StatusOr<Module> MakeHead(int64_t in_dim,
                                const std::vector<int64_t>& hidden_sizes,
                                double dropout, int64_t num_classes,
                                uint64_t seed) {
  if (in_dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("head: input width ", in_dim, " must be positive"));
  }
  if (num_classes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("head: ", num_classes, " classes; need at least 1"));
  }
  if (!(dropout >= 0.0 && dropout < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("head: dropout ", dropout, " is outside [0, 1)"));
  }
  for (int64_t h : hidden_sizes) {
    if (h < 1 || h > 65536) {
      return absl::InvalidArgumentError(
          absl::StrCat("head: hidden size ", h, " is outside [1, 65536]"));
    }
  }
  return TorchGuardOr<Module>(
      "building the head", [&]() -> absl::StatusOr<Module> {
        at::Generator gen = MakeGenerator(seed);
        Module head = NewModule("Head");
        std::string source = "def forward(self, x):\n";
        int64_t width = in_dim;
        for (size_t i = 0; i < hidden_sizes.size(); ++i) {
          const std::string name = absl::StrCat("fc", i);
          head.register_module(name, Linear(width, hidden_sizes[i], gen));
          absl::StrAppend(&source, "    x = torch.relu(self.", name,
                          ".forward(x))\n");
          if (dropout > 0) {
            absl::StrAppend(&source, "    x = torch.dropout(x, ",
                            absl::StrFormat("%.17g", dropout),
                            ", self.training)\n");
          }
          width = hidden_sizes[i];
        }
        head.register_module("out", Linear(width, num_classes, gen));
        absl::StrAppend(&source, "    return self.out.forward(x)\n");
        head.define(source);
        return head;
      });
}

absl::StatusOr<Module> MakeMultiHead(
    Module classes_head,
    const std::vector<std::pair<std::string, Module>>& tasks) {
  if (tasks.empty()) {
    return absl::InvalidArgumentError("multi-head: no task heads");
  }
  return TorchGuardOr<Module>(
      "building the multitask head", [&]() -> absl::StatusOr<Module> {
        Module head = NewModule("MultiHead");
        head.register_module("classes", classes_head);
        std::vector<std::string> parts = {"self.classes.forward(f)"};
        std::vector<std::string> entries = {
            "\"classes\": self.classes.forward(f)"};
        for (const auto& [name, module] : tasks) {
          head.register_module(absl::StrCat("task_", name), module);
          parts.push_back(absl::StrCat("self.task_", name, ".forward(f)"));
          entries.push_back(absl::StrCat("\"", name, "\": self.task_", name,
                                         ".forward(f)"));
        }
        head.define(absl::StrCat(
            "def forward(self, f):\n"
            "    return torch.cat([",
            absl::StrJoin(parts, ", "),
            "], 1)\n"
            "def outputs(self, f):\n"
            "    return {",
            absl::StrJoin(entries, ", "), "}\n"));
        return head;
      });
}

absl::Status ValidateInputSpec(const tlserve::v1::InputSpec& spec) {
  if (spec.channels() != 1 && spec.channels() != 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "input spec: channels is ", spec.channels(), "; must be 1 or 3"));
  }
  if (spec.height() < 1 || spec.height() > 4096 || spec.width() < 1 ||
      spec.width() > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("input spec: size ", spec.height(), "x", spec.width(),
                     " is outside [1, 4096]"));
  }
  if (spec.mean_size() != spec.channels() ||
      spec.std_size() != spec.channels()) {
    return absl::InvalidArgumentError(
        absl::StrCat("input spec: mean and std need ", spec.channels(),
                     " values (one per channel); got ", spec.mean_size(),
                     " and ", spec.std_size()));
  }
  for (float s : spec.std()) {
    if (!(s > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("input spec: std ", s, " must be positive"));
    }
  }
  return ValidateInputFit(spec.fit(), spec.height(), spec.width(),
                          "input spec: fit");
}

absl::StatusOr<Module> MakeClassifier(Module backbone, Module head,
                                      const tlserve::v1::InputSpec& spec) {
  RETURN_IF_ERROR(ValidateInputSpec(spec));
  return TorchGuardOr<Module>(
      "building the classifier", [&]() -> absl::StatusOr<Module> {
        Module classifier = NewModule("TlClassifier");
        classifier.register_module("backbone", backbone);
        classifier.register_module("head", head);
        const int64_t c = spec.channels();
        std::vector<float> mean(spec.mean().begin(), spec.mean().end());
        std::vector<float> std(spec.std().begin(), spec.std().end());
        classifier.register_buffer(
            "mean", torch::tensor(mean, torch::kFloat).reshape({1, c, 1, 1}));
        classifier.register_buffer(
            "std", torch::tensor(std, torch::kFloat).reshape({1, c, 1, 1}));
        classifier.define(
            "def features(self, x):\n"
            "    return self.backbone.forward((x - self.mean) / self.std)\n"
            "def forward(self, x):\n"
            "    return self.head.forward(self.features(x))\n");
        if (head.find_method("outputs").has_value()) {
          classifier.define(
              "def outputs(self, x):\n"
              "    return self.head.outputs(self.features(x))\n");
        }
        classifier.train(backbone.is_training());
        return classifier;
      });
}

std::vector<std::string> Blocks(const Module& backbone) {
  std::vector<BlockEntry> blocks = ParameterisedChildren(backbone, "");
  const double total = static_cast<double>(NumParameters(backbone));
  // Each pass opens one entry a level deeper, so this ends.
  for (bool opened = true; opened;) {
    opened = false;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].num_parameters < kDominantShare * total) continue;
      if (blocks[i].module.parameters(/*recurse=*/false).size() > 0) continue;
      std::vector<BlockEntry> children =
          ParameterisedChildren(blocks[i].module, blocks[i].name + ".");
      if (children.size() < 2) continue;
      blocks.erase(blocks.begin() + static_cast<std::ptrdiff_t>(i));
      blocks.insert(blocks.begin() + static_cast<std::ptrdiff_t>(i),
                    children.begin(), children.end());
      opened = true;
      break;
    }
  }
  std::vector<std::string> names;
  names.reserve(blocks.size());
  for (const BlockEntry& block : blocks) names.push_back(block.name);
  return names;
}

absl::StatusOr<Module> ResolveBlock(const Module& backbone,
                                    const std::string& block) {
  return TorchGuardOr<Module>(
      absl::StrCat("finding block '", block, "' in the backbone"),
      [&]() -> absl::StatusOr<Module> {
        Module module = backbone;
        for (absl::string_view part : absl::StrSplit(block, '.')) {
          const std::string name(part);
          if (name.empty() || !module.hasattr(name) ||
              !module.attr(name).isModule()) {
            return absl::InvalidArgumentError(
                absl::StrCat("block '", block, "': '", name,
                             "' is not a submodule; the backbone's blocks are ",
                             absl::StrJoin(Blocks(backbone), ", ")));
          }
          module = module.attr(name).toModule();
        }
        return module;
      },
      absl::StatusCode::kInvalidArgument);
}

absl::StatusOr<std::vector<NamedParameter>> BlockParameters(
    const Module& backbone, const std::string& block) {
  ASSIGN_OR_RETURN(Module module, ResolveBlock(backbone, block));
  return TorchGuardOr<std::vector<NamedParameter>>(
      absl::StrCat("listing the parameters of block '", block, "'"),
      [&]() -> absl::StatusOr<std::vector<NamedParameter>> {
        std::vector<NamedParameter> params;
        for (const auto& p : module.named_parameters(/*recurse=*/true)) {
          params.push_back({absl::StrCat(block, ".", p.name), p.value});
        }
        return params;
      });
}

absl::StatusOr<FreezePlan> ApplyFreezePolicy(
    Module backbone, const tlserve::v1::FreezePolicy& policy) {
  using tlserve::v1::FreezePolicy;
  const std::vector<std::string> blocks = Blocks(backbone);
  FreezePlan plan;
  switch (policy.mode()) {
    case FreezePolicy::MODE_UNSPECIFIED:
    case FreezePolicy::FROZEN:
      plan.backbone_frozen = true;
      plan.frozen_blocks = blocks;
      break;
    case FreezePolicy::FULL:
      plan.trainable_blocks = blocks;
      break;
    case FreezePolicy::LAST_N_BLOCKS: {
      const int n = policy.n_blocks();
      if (n < 1 || n > static_cast<int>(blocks.size())) {
        return absl::InvalidArgumentError(absl::StrCat(
            "freeze policy LAST_N_BLOCKS: n_blocks ", n, " is outside [1, ",
            blocks.size(), "]; the backbone's blocks are ",
            absl::StrJoin(blocks, ", ")));
      }
      const size_t first = blocks.size() - n;
      plan.frozen_blocks.assign(blocks.begin(), blocks.begin() + first);
      plan.trainable_blocks.assign(blocks.begin() + first, blocks.end());
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("freeze policy: unknown mode ", policy.mode()));
  }
  RETURN_IF_ERROR(TorchGuard("applying the freeze policy", [&] {
    for (torch::Tensor p : backbone.parameters()) p.requires_grad_(false);
    for (const std::string& name : plan.trainable_blocks) {
      ASSIGN_OR_RETURN(std::vector<NamedParameter> params,
                       BlockParameters(backbone, name));
      for (NamedParameter& p : params) p.value.requires_grad_(true);
    }
    return absl::OkStatus();
  }));
  return plan;
}

absl::Status SetTrainingMode(Module classifier, const FreezePlan& plan,
                             bool training) {
  return TorchGuard("setting the training mode", [&] {
    classifier.train(training);
    if (!training) return absl::OkStatus();
    Module backbone = classifier.attr("backbone").toModule();
    if (plan.backbone_frozen) {
      backbone.eval();
      return absl::OkStatus();
    }
    for (const std::string& name : plan.frozen_blocks) {
      ASSIGN_OR_RETURN(Module block, ResolveBlock(backbone, name));
      block.eval();
    }
    return absl::OkStatus();
  });
}

absl::Status ReinitializeParameters(Module module, uint64_t seed) {
  return TorchGuard("re-initialising parameters", [&] {
    at::NoGradGuard no_grad;
    at::Generator gen = MakeGenerator(seed);
    for (const auto& p : module.named_parameters(/*recurse=*/true)) {
      torch::Tensor t = p.value;
      if (t.dim() > 1) {
        int64_t fan_out = t.size(0);
        for (int64_t i = 2; i < t.dim(); ++i) fan_out *= t.size(i);
        t.normal_(0.0, std::sqrt(2.0 / static_cast<double>(fan_out)), gen);
      } else if (absl::EndsWith(p.name, "bias")) {
        t.zero_();
      } else {
        t.fill_(1.0);
      }
    }
    for (const auto& b : module.named_buffers(/*recurse=*/true)) {
      torch::Tensor t = b.value;
      if (absl::EndsWith(b.name, "running_var")) {
        t.fill_(1.0);
      } else if (absl::EndsWith(b.name, "running_mean") ||
                 absl::EndsWith(b.name, "num_batches_tracked")) {
        t.zero_();
      }
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<int64_t> FeatureDim(Module backbone,
                                   const tlserve::v1::InputSpec& spec) {
  RETURN_IF_ERROR(ValidateInputSpec(spec));
  const std::string what =
      absl::StrCat("running the backbone on a [1, ", spec.channels(), ", ",
                   spec.height(), ", ", spec.width(), "] input");
  return TorchGuardOr<int64_t>(
      what,
      [&]() -> absl::StatusOr<int64_t> {
        ScopedEval scoped_eval(backbone);
        at::NoGradGuard no_grad;
        torch::jit::IValue out = backbone.forward(
            {torch::zeros({1, spec.channels(), spec.height(), spec.width()})});
        if (!out.isTensor() || out.toTensor().dim() != 2) {
          return absl::InvalidArgumentError(absl::StrCat(
              what, ": the backbone must return a [N, D] tensor; got ",
              out.isTensor() ? absl::StrCat(out.toTensor().dim(), "-D tensor")
                             : out.tagKind()));
        }
        return out.toTensor().size(1);
      },
      absl::StatusCode::kInvalidArgument);
}

absl::StatusOr<std::string> WeightsDigest(const Module& module) {
  return TorchGuardOr<std::string>(
      "hashing the module's weights", [&]() -> absl::StatusOr<std::string> {
        Sha256 hasher;
        // Length prefixes keep field boundaries unambiguous.
        auto field = [&hasher](std::string_view data) {
          hasher.Update(absl::StrCat(data.size(), ":"));
          hasher.Update(data);
        };
        auto tensor = [&](std::string_view kind, const std::string& name,
                          const torch::Tensor& value) {
          field(kind);
          field(name);
          field(c10::toString(value.scalar_type()));
          field(absl::StrJoin(value.sizes(), ","));
          const torch::Tensor bytes =
              value.detach().to(torch::kCPU).contiguous();
          field(std::string_view(static_cast<const char*>(bytes.data_ptr()),
                                 bytes.nbytes()));
        };
        for (const auto& p : module.named_parameters(/*recurse=*/true)) {
          tensor("parameter", p.name, p.value);
        }
        for (const auto& b : module.named_buffers(/*recurse=*/true)) {
          tensor("buffer", b.name, b.value);
        }
        return hasher.FinalHex();
      });
}

}  // namespace tlserve::worker
