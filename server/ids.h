#ifndef TLSERVE_SERVER_IDS_H_
#define TLSERVE_SERVER_IDS_H_

#include <string>
#include <string_view>

namespace tlserve {

// A new resource id: prefix, '-', 16 random hex digits ("job-3f9c...").
// Thread-safe.
std::string NewId(std::string_view prefix);

}  // namespace tlserve

#endif  // TLSERVE_SERVER_IDS_H_
