#include "tests/worker/test_util.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/model_builder.h"

namespace tlserve::worker::testing {

DecodedDataset SyntheticDataset(int classes, int train_per_class,
                                int test_per_class, int size, int channels,
                                uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> noise(0, 60);
  auto make = [&](int label) {
    Image image;
    image.height = size;
    image.width = size;
    image.channels = channels;
    image.pixels.resize(static_cast<size_t>(size) * size * channels);
    const int bar = (label * size) / classes;
    const int bar_height = std::max(1, size / classes);
    for (int y = 0; y < size; ++y) {
      for (int x = 0; x < size; ++x) {
        const bool on = y >= bar && y < bar + bar_height;
        for (int c = 0; c < channels; ++c) {
          image.pixels[(static_cast<size_t>(y) * size + x) * channels + c] =
              static_cast<uint8_t>((on ? 180 : 20) + noise(rng));
        }
      }
    }
    return image;
  };
  DecodedDataset data;
  for (int c = 0; c < classes; ++c) {
    data.class_names.push_back(absl::StrCat("class_", c));
  }
  // Interleaved, like a shuffled dataset.
  for (int i = 0; i < train_per_class; ++i) {
    for (int c = 0; c < classes; ++c) {
      data.train.images.push_back(make(c));
      data.train.labels.push_back(c);
    }
  }
  for (int i = 0; i < test_per_class; ++i) {
    for (int c = 0; c < classes; ++c) {
      data.test.images.push_back(make(c));
      data.test.labels.push_back(c);
    }
  }
  return data;
}

std::string MakeTempDir(const std::string& name) {
  static int counter = 0;
  const ::testing::TestInfo* info =
      ::testing::UnitTest::GetInstance()->current_test_info();
  std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) /
      absl::StrCat("tlserve_worker_", getpid(), "_",
                   info ? info->name() : "global", "_", name, "_", counter++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

tlserve::v1::InputSpec SimpleSpec(int channels, int size) {
  tlserve::v1::InputSpec spec;
  spec.set_channels(channels);
  spec.set_height(size);
  spec.set_width(size);
  for (int c = 0; c < channels; ++c) {
    spec.add_mean(0.5f);
    spec.add_std(0.25f);
  }
  return spec;
}

tlserve::v1::InputSpec ImageNetSpec(int size) {
  tlserve::v1::InputSpec spec;
  spec.set_channels(3);
  spec.set_height(size);
  spec.set_width(size);
  for (float m : {0.485f, 0.456f, 0.406f}) spec.add_mean(m);
  for (float s : {0.229f, 0.224f, 0.225f}) spec.add_std(s);
  return spec;
}

std::string SaveCompactBackbone(const std::string& dir, int channels, int width,
                                uint64_t seed) {
  absl::StatusOr<torch::jit::Module> backbone =
      MakeCompactResNet(channels, width, seed);
  EXPECT_TRUE(backbone.ok()) << backbone.status();
  const std::string path =
      (std::filesystem::path(dir) / absl::StrCat("compact_", seed, ".pt"))
          .string();
  backbone->eval();
  backbone->save(path);
  return path;
}

int RunPython(const std::string& script, std::string* output) {
  const std::string dir = MakeTempDir("python");
  const std::string script_path = dir + "/script.py";
  std::ofstream(script_path) << script;
  const std::string command =
      absl::StrCat("/usr/bin/python3 ", script_path, " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  output->clear();
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    output->append(buffer, n);
  }
  return pclose(pipe);
}

bool PythonTorchAvailable() {
  static const bool available = [] {
    std::string output;
    return RunPython("import torch\n", &output) == 0;
  }();
  return available;
}

absl::StatusOr<std::string> TorchvisionBackbone(const std::string& arch,
                                                int size) {
  static std::mutex mu;
  static std::map<std::pair<std::string, int>, std::string> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({arch, size});
  if (it != cache.end()) return it->second;
  const std::string dir = MakeTempDir("torchvision");
  const std::string out = absl::StrCat(dir, "/", arch, "_", size, ".pt");
  const std::string command = absl::StrCat(
      "/usr/bin/python3 " TLSERVE_SOURCE_DIR
      "/tools/export_backbone.py --arch ",
      arch, " --size ", size, " --out ", out, " > ", out, ".log 2>&1");
  if (std::system(command.c_str()) != 0) {
    std::ifstream log(out + ".log");
    std::stringstream text;
    text << log.rdbuf();
    return absl::InternalError(
        absl::StrCat("tools/export_backbone.py failed: ", text.str()));
  }
  cache[{arch, size}] = out;
  return out;
}

absl::StatusOr<DecodedDataset> LoadFashionMnist() {
  const std::string dir = "/usr/share/datasets/fashion-mnist";
  DatasetFiles files;
  files.format = tlserve::v1::IDX;
  files.paths[tlserve::v1::TRAIN_IMAGES] = dir + "/train-images-idx3-ubyte.gz";
  files.paths[tlserve::v1::TRAIN_LABELS] = dir + "/train-labels-idx1-ubyte.gz";
  files.paths[tlserve::v1::TEST_IMAGES] = dir + "/t10k-images-idx3-ubyte.gz";
  files.paths[tlserve::v1::TEST_LABELS] = dir + "/t10k-labels-idx1-ubyte.gz";
  for (const auto& [role, path] : files.paths) {
    if (!std::filesystem::exists(path)) {
      return absl::NotFoundError(absl::StrCat(path, " is missing"));
    }
  }
  files.class_names = {"T-shirt/top", "Trouser",   "Pullover", "Dress",
                       "Coat",        "Sandal",    "Shirt",    "Sneaker",
                       "Bag",         "Ankle boot"};
  return LoadDataset(files);
}

std::vector<std::pair<std::string, at::Tensor>> NamedState(
    const torch::jit::Module& module) {
  std::vector<std::pair<std::string, at::Tensor>> state;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    state.emplace_back(p.name, p.value.detach().clone());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true)) {
    state.emplace_back(b.name, b.value.detach().clone());
  }
  return state;
}

}  // namespace tlserve::worker::testing
