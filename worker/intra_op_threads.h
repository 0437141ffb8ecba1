#ifndef TLSERVE_WORKER_INTRA_OP_THREADS_H_
#define TLSERVE_WORKER_INTRA_OP_THREADS_H_

namespace tlserve::worker {

// Sets the calling thread's LibTorch intra-op thread count for a scope and
// puts the old count back when it ends.
//
// Why not at::set_num_threads: it also changes the process-wide default
// that threads started later inherit, and rebuilds the pthreadpool, about
// 90 us a call here; an inference batch needs neither. LibTorch's OpenMP
// build takes each parallel region's width from the calling thread's own
// OpenMP setting, so this sets only that, through the OpenMP runtime that
// LibTorch itself links (a CUDA LibTorch ships its own copy, which a
// direct call from this binary would not reach).
//
// Where LibTorch has no OpenMP runtime the guard does nothing
// (Supported() is false).
class ScopedIntraOpThreads {
 public:
  explicit ScopedIntraOpThreads(int threads);
  ~ScopedIntraOpThreads();
  ScopedIntraOpThreads(const ScopedIntraOpThreads&) = delete;
  ScopedIntraOpThreads& operator=(const ScopedIntraOpThreads&) = delete;

  static bool Supported();

 private:
  int previous_ = 0;  // 0: nothing to put back
};

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_INTRA_OP_THREADS_H_
