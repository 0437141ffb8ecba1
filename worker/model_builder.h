#ifndef TLSERVE_WORKER_MODEL_BUILDER_H_
#define TLSERVE_WORKER_MODEL_BUILDER_H_

// Builds and prepares the networks the worker trains. Every network is a
// torch::jit::Module: uploaded TorchScript backbones, backbones made by
// PRETRAIN and trained classifiers are the same kind of object, autograd
// runs through Module::forward, and export is Module::save, which Python's
// torch.jit.load opens.
//
// Modules are built in C++ (register_parameter/register_buffer/
// register_module + TorchScript source through Module::define). Each
// created class gets a process-unique qualified name
// (__torch__.tlserve.<nonce>.<Kind>_<n>) so a saved model never holds two
// classes of the same name.
//
// torch::jit::Module is a handle: copies share the underlying object.
// The functions here never throw; torch errors come back as statuses.

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tlserve/v1/common.pb.h"
#include "tlserve/v1/job.pb.h"

namespace tlserve::worker {

// The built-in backbone for PRETRAIN: a small ResNet for small images.
// [N, in_channels, H, W] (already normalised) -> [N, 4 * base_width].
// Top-level children: stem (conv3x3-bn-relu), layer1 (width w), layer2
// (2w, stride 2), layer3 (4w, stride 2), each one BasicBlock with a 1x1
// conv-bn shortcut where the shape changes; then global average pooling.
// Weights: kaiming-normal convs, BN weight 1 / bias 0, from `seed` alone.
absl::StatusOr<torch::jit::Module> MakeCompactResNet(int64_t in_channels,
                                                     int64_t base_width,
                                                     uint64_t seed);

// An MLP head: [N, in_dim] -> [N, num_classes] logits. Each hidden layer
// is linear -> relu -> dropout(p = dropout, training mode only). Linear
// layers use PyTorch's default init (uniform +-1/sqrt(fan_in)) from `seed`.
absl::StatusOr<torch::jit::Module> MakeHead(
    int64_t in_dim, const std::vector<int64_t>& hidden_sizes, double dropout,
    int64_t num_classes, uint64_t seed);

// A MULTITASK head ("MultiHead"): submodule "classes" and one submodule
// "task_<name>" per entry of `tasks` (names checked by the server);
//   forward(f) = cat([classes(f), task_<name>(f), ...], 1)   -> [N, sum K]
//   outputs(f) = {"classes": classes(f), "<name>": task_<name>(f), ...}
// so the classifier's forward() is still one tensor (the inference path
// splits it by head) and outputs() gives each head by name. Shares (does
// not copy) the heads.
absl::StatusOr<torch::jit::Module> MakeMultiHead(
    torch::jit::Module classes_head,
    const std::vector<std::pair<std::string, torch::jit::Module>>& tasks);

// The exported model ("TlClassifier"): submodules "backbone" and "head",
// buffers mean/std shaped [1, C, 1, 1];
//   forward(x)  = head(backbone((x - mean) / std))   [N,C,H,W] in [0,1] ->
//   logits features(x) = backbone((x - mean) / std)         -> [N, D]
// With a MultiHead head it also has outputs(x) = head.outputs(features(x)).
// The classifier shares (does not copy) backbone and head.
absl::StatusOr<torch::jit::Module> MakeClassifier(
    torch::jit::Module backbone, torch::jit::Module head,
    const tlserve::v1::InputSpec& spec);

// INVALID_ARGUMENT unless channels is 1 or 3, height/width are in
// [1, 4096] and mean/std have one value per channel (std > 0).
absl::Status ValidateInputSpec(const tlserve::v1::InputSpec& spec);

// The backbone's blocks, the units LAST_N_BLOCKS freezes and trains: dotted
// paths of submodules that hold parameters, in forward order, found from
// the module tree alone. Start with the children of `backbone` that hold
// parameters; while one entry holds at least 90% of the backbone's
// parameters and is a container (no parameters of its own, two or more
// children with parameters), replace it by those children. So a wrapper
// such as torchvision's `features` Sequential is opened up, while resnet's
// stages stay whole (layer4 holds 64-75% of resnet18/50).
//   compact ResNet: stem, layer1, layer2, layer3
//   torchvision resnet18/50: conv1, bn1, layer1, layer2, layer3, layer4
//   mobilenet_v2: features.0 .. features.18
//   densenet121: features.conv0, features.norm0, features.denseblock1,
//     features.transition1, ..., features.denseblock4, features.norm5
// Parameters held directly by an opened container (none, by the rule) or
// by the backbone itself belong to no block.
std::vector<std::string> Blocks(const torch::jit::Module& backbone);

// The submodule that a dotted block name ("layer4", "features.3") names.
// INVALID_ARGUMENT when a part of the path is not a submodule.
absl::StatusOr<torch::jit::Module> ResolveBlock(
    const torch::jit::Module& backbone, const std::string& block);

// A parameter and its dotted path in the backbone
// ("features.3.conv.0.weight").
struct NamedParameter {
  std::string name;
  torch::Tensor value;  // shares storage with the module's parameter
};

// The parameters of `block` (ResolveBlock's errors), named by their path
// in the backbone, in the module's order.
absl::StatusOr<std::vector<NamedParameter>> BlockParameters(
    const torch::jit::Module& backbone, const std::string& block);

// What a freeze policy left trainable; SetTrainingMode uses it.
struct FreezePlan {
  // True when no backbone parameter trains (FROZEN).
  bool backbone_frozen = false;
  // Names from Blocks(); ResolveBlock finds the modules.
  std::vector<std::string> trainable_blocks;
  // Kept in eval mode while the rest trains, so BatchNorm statistics and
  // dropout of frozen parts do not change.
  std::vector<std::string> frozen_blocks;
};

// Sets requires_grad on the backbone's parameters:
//   FROZEN (and MODE_UNSPECIFIED): none train;
//   LAST_N_BLOCKS: the last n_blocks entries of Blocks() train (1 <= n <=
//     number of blocks, else INVALID_ARGUMENT); parameters outside every
//     block stay frozen;
//   FULL: all train.
absl::StatusOr<FreezePlan> ApplyFreezePolicy(
    torch::jit::Module backbone, const tlserve::v1::FreezePolicy& policy);

// classifier.train(training); when training, puts the frozen parts of
// classifier.backbone (per plan) back into eval mode.
absl::Status SetTrainingMode(torch::jit::Module classifier,
                             const FreezePlan& plan, bool training);

// Fresh weights for the from-scratch baseline (BACKBONE_INIT=RANDOM):
// parameters with dim > 1 kaiming-normal (fan_out, relu), other
// parameters named *bias 0 and the rest (norm weights) 1; buffers
// running_mean 0, running_var 1, num_batches_tracked 0. Draws from a
// generator seeded with `seed` only, so the global RNG is untouched.
absl::Status ReinitializeParameters(torch::jit::Module module, uint64_t seed);

// Output width D of a backbone, from a forward of one zero input shaped
// by `spec` in eval mode (training flags are restored afterwards).
// INVALID_ARGUMENT when the backbone rejects the input or does not return
// a 2-D tensor.
absl::StatusOr<int64_t> FeatureDim(torch::jit::Module backbone,
                                   const tlserve::v1::InputSpec& spec);

// SHA-256 (64 lowercase hex digits) of a module's weights: its named
// parameters, then its named buffers (both recursive, in the module's
// order), each hashed as its dotted name, dtype, shape and contiguous CPU
// bytes (host byte order), every field length-prefixed. Equal digests mean
// equal names, dtypes, shapes and values; the code, class names and
// training flags are not part of it. The trainer compares the backbone's
// digest before and after a job to tell whether training left it
// unchanged.
absl::StatusOr<std::string> WeightsDigest(const torch::jit::Module& module);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_MODEL_BUILDER_H_
