#include "worker/intra_op_threads.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

namespace tlserve::worker {
namespace {

using SetThreadsFn = void (*)(int);

// omp_set_num_threads as LibTorch's CPU library resolves it: looked up
// from that library's handle, so the search follows its own dependencies.
SetThreadsFn FindSetThreads() {
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) == 0 ||
      info.dli_fname == nullptr) {
    return nullptr;
  }
  void* handle = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return nullptr;
  // Kept open: the library stays loaded for the life of the process anyway.
  return reinterpret_cast<SetThreadsFn>(dlsym(handle, "omp_set_num_threads"));
}

SetThreadsFn SetThreads() {
  static const SetThreadsFn fn = FindSetThreads();
  return fn;
}

}  // namespace

bool ScopedIntraOpThreads::Supported() { return SetThreads() != nullptr; }

ScopedIntraOpThreads::ScopedIntraOpThreads(int threads) {
  const SetThreadsFn set = SetThreads();
  if (set == nullptr || threads <= 0) return;
  // Also runs LibTorch's once-per-thread initialisation, which would
  // otherwise overwrite the count at this thread's first parallel op.
  const int current = at::get_num_threads();
  if (current == threads) return;
  set(threads);
  previous_ = current;
}

ScopedIntraOpThreads::~ScopedIntraOpThreads() {
  if (previous_ > 0) SetThreads()(previous_);
}

}  // namespace tlserve::worker
