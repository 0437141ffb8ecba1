#ifndef TLSERVE_COMMON_TORCHSCRIPT_ARCHIVE_H_
#define TLSERVE_COMMON_TORCHSCRIPT_ARCHIVE_H_

#include <string>

#include "absl/status/status.h"

namespace tlserve {

// Checks, without LibTorch, that a file looks like a TorchScript archive
// (torch.jit.save output): a zip holding <name>/data.pkl and <name>/code/.
// INVALID_ARGUMENT with the reason otherwise, so a wrong upload fails at
// upload time instead of in a worker.
absl::Status CheckTorchScriptArchive(const std::string& path);

}  // namespace tlserve

#endif  // TLSERVE_COMMON_TORCHSCRIPT_ARCHIVE_H_
