#include "worker/backbone_split.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "worker/torch_status.h"

namespace tlserve::worker {
namespace {

using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// Dotted path from the graph's `self` to a module value ("" for self),
// or nullopt when the value is not such a chain of attribute reads.
std::optional<std::string> ModulePath(const Value* value, const Value* self) {
  if (value == self) return std::string();
  const Node* node = value->node();
  if (node->kind() != c10::prim::GetAttr) return std::nullopt;
  std::optional<std::string> parent = ModulePath(node->input(0), self);
  if (!parent) return std::nullopt;
  const std::string& name = node->s(c10::attr::name);
  return parent->empty() ? name : absl::StrCat(*parent, ".", name);
}

bool Inside(const std::string& path, const std::string& block) {
  return path == block || absl::StartsWith(path, block + ".");
}

// True when `path` holds `block` (strictly above it; "" holds everything).
bool Holds(const std::string& path, const std::string& block) {
  return path.empty() || absl::StartsWith(block, path + ".");
}

// Whether any node of `block` (recursively) reads an attribute inside one
// of `blocks`, except `allowed`'s module input.
bool TouchesTrainable(torch::jit::Block* block, const Value* self,
                      const std::vector<std::string>& blocks) {
  for (Node* node : block->nodes()) {
    for (torch::jit::Block* sub : node->blocks()) {
      if (TouchesTrainable(sub, self, blocks)) return true;
    }
    if (node->kind() != c10::prim::GetAttr) continue;
    std::optional<std::string> path = ModulePath(node->output(), self);
    if (!path) continue;
    for (const std::string& b : blocks) {
      if (Inside(*path, b)) return true;
    }
  }
  return false;
}

std::string Identifier(const std::string& block) {
  return absl::StrReplaceAll(block, {{".", "_"}});
}

}  // namespace

absl::StatusOr<BackboneCut> SplitAtFirstTrainableBlock(
    torch::jit::Module& backbone,
    const std::vector<std::string>& trainable_blocks) {
  if (trainable_blocks.empty()) {
    return absl::FailedPreconditionError("no block trains: nothing to cut at");
  }
  return TorchGuardOr<BackboneCut>(
      "splitting the backbone at its first trainable block",
      [&]() -> absl::StatusOr<BackboneCut> {
        std::shared_ptr<Graph> graph =
            backbone.get_method("forward").graph()->copy();
        if (graph->inputs().size() != 2 || graph->outputs().size() != 1) {
          return absl::FailedPreconditionError(
              "forward does not take one input and return one output");
        }
        const Value* self = graph->inputs()[0];

        // Inline calls into modules holding a trainable block until a
        // trainable block's own call is a top-level node.
        Node* cut = nullptr;
        std::string cut_block;
        size_t cut_index = 0;
        for (bool inlined = true; inlined && cut == nullptr;) {
          inlined = false;
          size_t index = 0;
          for (Node* node : graph->nodes()) {
            if (node->kind() == c10::prim::CallMethod) {
              std::optional<std::string> path =
                  ModulePath(node->input(0), self);
              if (!path) {
                return absl::FailedPreconditionError(
                    "a method is called on a module that is not an attribute");
              }
              for (const std::string& b : trainable_blocks) {
                if (Inside(*path, b)) {
                  cut = node;
                  cut_block = b;
                  break;
                }
              }
              if (cut != nullptr) {
                cut_index = index;
                break;
              }
              bool holds = false;
              for (const std::string& b : trainable_blocks) {
                holds = holds || Holds(*path, b);
              }
              if (holds) {
                auto type = node->input(0)->type()->expect<c10::ClassType>();
                torch::jit::Function* callee =
                    type->findMethod(node->s(c10::attr::name));
                if (callee == nullptr) {
                  return absl::FailedPreconditionError(absl::StrCat(
                      "method ", node->s(c10::attr::name), " of '", *path,
                      "' not found"));
                }
                // false: the callee's own graph, calls still calls (true
                // would inline its optimised, fully inlined graph).
                torch::jit::inlineCallTo(
                    node, &torch::jit::toGraphFunction(*callee), false);
                inlined = true;
                break;
              }
            } else {
              for (torch::jit::Block* sub : node->blocks()) {
                if (TouchesTrainable(sub, self, trainable_blocks)) {
                  return absl::FailedPreconditionError(
                      "the first trainable block runs inside a loop or branch");
                }
              }
            }
            ++index;
          }
        }
        if (cut == nullptr) {
          return absl::FailedPreconditionError(
              "no call of a trainable block found in forward");
        }
        if (cut->inputs().size() != 2 ||
            !cut->input(1)->type()->isSubtypeOf(*c10::TensorType::get())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "block '", cut_block, "' does not take a single tensor"));
        }
        // Nothing before the cut may read a trainable block, or the cached
        // activation would go stale as it trains.
        for (Node* node : graph->nodes()) {
          if (node == cut) break;
          if (node->kind() == c10::prim::GetAttr) continue;  // module refs
          for (torch::jit::Block* sub : node->blocks()) {
            if (TouchesTrainable(sub, self, trainable_blocks)) {
              return absl::FailedPreconditionError(
                  "the frozen part reads a trainable block");
            }
          }
          for (const Value* input : node->inputs()) {
            if (input->node()->kind() != c10::prim::GetAttr) continue;
            std::optional<std::string> path = ModulePath(input, self);
            if (!path) continue;
            for (const std::string& b : trainable_blocks) {
              if (Inside(*path, b)) {
                return absl::FailedPreconditionError(
                    "the frozen part reads a trainable block");
              }
            }
          }
        }

        auto node_at = [](const std::shared_ptr<Graph>& g, size_t i) {
          auto it = g->nodes().begin();
          for (size_t k = 0; k < i; ++k) ++it;
          return *it;
        };
        // Frozen part: the same graph returning the cut's input.
        std::shared_ptr<Graph> frozen = graph->copy();
        Value* activation = node_at(frozen, cut_index)->input(1);
        frozen->block()->return_node()->replaceInput(0, activation);
        // Method calls count as side effects; the halves drop each
        // other's calls.
        const auto drop = torch::jit::DCESideEffectPolicy::
            ALLOW_DELETING_NODES_WITH_SIDE_EFFECTS;
        torch::jit::EliminateDeadCode(frozen->block(), true, drop);
        // Trainable part: the cut's input becomes the graph's input; all
        // before it must then be dead.
        std::shared_ptr<Graph> trainable = graph->copy();
        Value* input = trainable->addInput("activation");
        input->setType(c10::TensorType::get());
        node_at(trainable, cut_index)->input(1)->replaceAllUsesWith(input);
        torch::jit::EliminateDeadCode(trainable->block(), true, drop);
        if (trainable->inputs()[1]->hasUses()) {
          return absl::FailedPreconditionError(absl::StrCat(
              "the part from '", cut_block,
              "' on uses more of the input than the activation at the cut"));
        }
        trainable->eraseInput(1);

        BackboneCut out;
        out.block = cut_block;
        out.frozen_part = absl::StrCat("tl_until_", Identifier(cut_block));
        out.trainable_part = absl::StrCat("tl_from_", Identifier(cut_block));
        c10::ClassTypePtr type = backbone.type();
        auto unit = backbone._ivalue()->compilation_unit();
        for (const auto& [name, g] :
             {std::make_pair(out.frozen_part, frozen),
              std::make_pair(out.trainable_part, trainable)}) {
          if (type->findMethod(name) != nullptr) continue;
          torch::jit::Function* fn = unit->create_function(
              c10::QualifiedName(*type->name(), name), g);
          type->addMethod(fn);
        }
        return out;
      });
}

}  // namespace tlserve::worker
