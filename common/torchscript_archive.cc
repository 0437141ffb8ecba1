#include "common/torchscript_archive.h"

#include <archive.h>
#include <archive_entry.h>

#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tlserve {

absl::Status CheckTorchScriptArchive(const std::string& path) {
  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(),
                                                           archive_read_free);
  archive_read_support_format_zip(a.get());
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) {
    return absl::InvalidArgumentError(absl::StrCat(
        "backbone is not a TorchScript file (not a zip archive: ",
        archive_error_string(a.get()) ? archive_error_string(a.get()) : "",
        "); save it with torch.jit.save"));
  }
  bool has_data = false;
  bool has_code = false;
  archive_entry* entry = nullptr;
  int r;
  int entries = 0;
  while ((r = archive_read_next_header(a.get(), &entry)) == ARCHIVE_OK) {
    const char* name = archive_entry_pathname(entry);
    if (name != nullptr) {
      has_data |= absl::EndsWith(name, "/data.pkl");
      has_code |= absl::StrContains(name, "/code/");
    }
    if (++entries > 1'000'000) break;
    archive_read_data_skip(a.get());
  }
  if (r != ARCHIVE_EOF && r != ARCHIVE_OK) {
    return absl::InvalidArgumentError(absl::StrCat(
        "backbone archive is corrupt: ",
        archive_error_string(a.get()) ? archive_error_string(a.get()) : "?"));
  }
  if (!has_data || !has_code) {
    return absl::InvalidArgumentError(
        "backbone zip lacks data.pkl or code/: not a TorchScript module; "
        "export it with torch.jit.script(model) and torch.jit.save");
  }
  return absl::OkStatus();
}

}  // namespace tlserve
