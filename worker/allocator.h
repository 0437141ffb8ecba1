#ifndef TLSERVE_WORKER_ALLOCATOR_H_
#define TLSERVE_WORKER_ALLOCATOR_H_

namespace tlserve::worker {

// LibTorch's CPU tensors come straight from malloc, and a training step or
// an inference batch frees and reallocates the same large activation
// buffers every time. glibc's defaults serve blocks above a (moving)
// threshold with mmap and give the heap's top back to the OS at 128 KiB,
// so those buffers can come back as fresh pages, each one faulted in and
// zeroed by the kernel, step after step: a resnet18 full fine-tune epoch
// took 9 to 16 s depending on where the threshold happened to sit, and a
// worker that had not trained yet (threshold still low) served a small
// model at less than half the rate of one that had. This keeps blocks
// under 128 MiB on the heap and up to 256 MiB of free heap in the process,
// so the buffers are reused (docs/benchmarks.md).
// Process-wide; call once at start, before any threads allocate.
void KeepFreedTensorMemoryForReuse();

}  // namespace tlserve::worker

#endif  // TLSERVE_WORKER_ALLOCATOR_H_
