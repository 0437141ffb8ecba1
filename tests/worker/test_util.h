#ifndef TLSERVE_TESTS_WORKER_TEST_UTIL_H_
#define TLSERVE_TESTS_WORKER_TEST_UTIL_H_

// Fixtures for the worker tests: synthetic datasets that a small network
// learns in a few steps, scratch folders, TorchScript backbones (the
// compact ResNet, and torchvision ones exported by the Python script),
// Fashion-MNIST, and a Python runner for cross-checks with torch.jit.load.

#include <torch/script.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dataset_loader.h"
#include "tlserve/v1/common.pb.h"

namespace tlserve::worker::testing {

// `classes` classes; class c is a bright horizontal bar at a class-specific
// height plus seeded noise, so a few optimizer steps separate them.
DecodedDataset SyntheticDataset(int classes, int train_per_class,
                                int test_per_class, int size, int channels,
                                uint64_t seed);

// A fresh folder under the test temp dir.
std::string MakeTempDir(const std::string& name);

// Mean 0.5, std 0.25 per channel.
tlserve::v1::InputSpec SimpleSpec(int channels, int size);
tlserve::v1::InputSpec ImageNetSpec(int size);

// Saves MakeCompactResNet(channels, width, seed) to dir/name and returns
// the path.
std::string SaveCompactBackbone(const std::string& dir, int channels, int width,
                                uint64_t seed);

// tools/export_backbone.py --arch arch --size size, once per
// process and arguments; the path of the .pt file.
absl::StatusOr<std::string> TorchvisionBackbone(const std::string& arch,
                                                int size);

// Runs /usr/bin/python3 -c script; stdout+stderr in *output.
int RunPython(const std::string& script, std::string* output);
bool PythonTorchAvailable();

// The Fashion-MNIST IDX files decoded; NOT_FOUND when not installed.
absl::StatusOr<DecodedDataset> LoadFashionMnist();

// Parameters and buffers by name.
std::vector<std::pair<std::string, at::Tensor>> NamedState(
    const torch::jit::Module& module);

}  // namespace tlserve::worker::testing

#endif  // TLSERVE_TESTS_WORKER_TEST_UTIL_H_
