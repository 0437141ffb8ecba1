#ifndef TLSERVE_WORKER_BACKBONE_SPLIT_H_
#define TLSERVE_WORKER_BACKBONE_SPLIT_H_

// Cuts a TorchScript backbone's forward in two at the first trainable
// block, so a job that trains only the last blocks can run the frozen part
// once per sample and train on its output (the activation cache).
//
// Generic over the module tree: the forward graph is copied, calls into
// modules that contain the cut block (self helpers like ResNet's
// _forward_impl, containers like MobileNet's `features`) are inlined until
// the cut block's own call appears, and the graph is split at that call's
// input. The split is refused, never approximated, when the later part
// needs anything of the earlier part besides that one tensor (a skip
// connection around the cut, a shape check on the input), when the
// earlier part touches a trainable block, or when the cut happens inside
// a loop or branch.

#include <torch/script.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tlserve::worker {

struct BackboneCut {
  std::string block;         // the first trainable block, where the cut is
  std::string frozen_part;   // method: input -> activation at the cut
  std::string trainable_part;  // method: that activation -> features
};

// Adds the two methods to `backbone`'s type (or finds them from an earlier
// call) and returns their names. `trainable_blocks` are names from
// Blocks(). FAILED_PRECONDITION with the reason when the graph has no
// clean cut; the caller then trains the usual way.
absl::StatusOr<BackboneCut> SplitAtFirstTrainableBlock(
    torch::jit::Module& backbone,
    const std::vector<std::string>& trainable_blocks);

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_BACKBONE_SPLIT_H_
