#ifndef TLSERVE_TESTS_INTEGRATION_FIXTURES_H_
#define TLSERVE_TESTS_INTEGRATION_FIXTURES_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "tlserve/v1/dataset.pb.h"

namespace tlserve::testing {

inline constexpr char kFashionMnistDir[] = "/usr/share/datasets/fashion-mnist";

using DatasetParts =
    std::vector<std::pair<tlserve::v1::DatasetPartRole, std::string>>;

// Writes IDX files holding the first `train_per_class` training and
// `test_per_class` test images of each listed Fashion-MNIST class (labels
// kept as in Fashion-MNIST), after skipping `skip_per_class` of each;
// `invert` stores 255 - pixel (a shifted domain). Returns the four parts.
absl::StatusOr<DatasetParts> WriteFashionMnistSubset(
    const std::string& dir, const std::vector<int>& classes,
    int train_per_class, int test_per_class, bool invert = false,
    int skip_per_class = 0);

// Writes an IDX file of unsigned bytes.
absl::Status WriteIdx(const std::string& path, const std::vector<int>& dims,
                      const std::vector<uint8_t>& data);

// Exports a randomly initialised torchvision ResNet-18 (fc = Identity) as
// TorchScript with /usr/bin/python3; returns its path.
absl::StatusOr<std::string> ExportResNet18(const std::string& dir, int size);

// A tar archive (pax) of (entry name, bytes).
absl::Status WriteTar(const std::string& path,
                      const std::vector<std::pair<std::string, std::string>>& entries);

// A small gray PNG with a pattern.
std::string TinyPng(int seed);

std::vector<std::string> FashionMnistClassNames();

}  // namespace tlserve::testing

#endif  // TLSERVE_TESTS_INTEGRATION_FIXTURES_H_
