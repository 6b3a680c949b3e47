// Host emulation of the few CUDA features the raw kernels in csrc/cuda/*_kernel.cuh use, so
// tests/cuda/test_kernels_emulated.py can run them on a machine without a GPU and compare
// them with mmfast/ops/reference.py. Every CUDA thread is a std::thread; the blocks of a grid
// run one after another (so `extern __shared__` can be one static buffer); __syncthreads and
// warp shuffles go through std::barrier, so warp-level code that is not warp-uniform shows up as
// wrong values (or a hang) rather than working by luck.
//
// Build as host C++ (nvcc on a .cpp, or g++ with the CUDA include dir), C++20, with
// -D__device__= -D__global__= -D__host__= -D__shared__= and -ffp-contract=off (the kernels'
// non-fused multiply-adds must stay unfused on the host too). Not for production use: it
// checks index math, tails, tie rules and reductions, not speed or memory-model subtleties.
#pragma once
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

// One warp: a barrier over its live lanes and one 8-byte mailbox per lane for shuffles.
struct EmuWarp {
  std::barrier<> sync;
  uint64_t slots[32];
  explicit EmuWarp(int n) : sync(n) {}
};
inline thread_local std::barrier<>* emu_block_barrier = nullptr;
inline thread_local EmuWarp* emu_warp = nullptr;

// --------------------------------------------------------------- the CUDA features used
inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <typename T>
T __shfl_xor_sync(unsigned, T v, int offset) {
  static_assert(sizeof(T) <= 8);
  const int lane = threadIdx.x % 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  emu_warp->slots[lane] = bits;
  emu_warp->sync.arrive_and_wait();
  const uint64_t other = emu_warp->slots[lane ^ offset];
  emu_warp->sync.arrive_and_wait();
  T out;
  std::memcpy(&out, &other, sizeof(T));
  return out;
}

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}

inline unsigned atomicOr(unsigned* p, unsigned v) {
  return std::atomic_ref<unsigned>(*p).fetch_or(v);
}

inline float __fmul_rn(float a, float b) { return a * b; }

// The kernels' `extern __shared__ unsigned char smem[]` (declared inside mmfast::cuda) binds
// here; blocks run one at a time, so one buffer serves them all.
namespace mmfast {
namespace cuda {
constexpr int kEmulatedSharedBytes = 1 << 16;
alignas(16) inline unsigned char smem[kEmulatedSharedBytes];
}  // namespace cuda
}  // namespace mmfast

// kernel<<<grid, block>>>(args...): blocks in sequence, one std::thread per CUDA thread.
template <typename... P, typename... Args>
void emu_launch(void (*kernel)(P...), unsigned grid, unsigned block, Args... args) {
  gridDim = dim3(grid);
  blockDim = dim3(block);
  for (unsigned bx = 0; bx < grid; ++bx) {
    std::barrier<> block_barrier(block);
    std::vector<std::unique_ptr<EmuWarp>> warps;
    for (unsigned w = 0; w < (block + 31) / 32; ++w) {
      const unsigned n = block - w * 32 < 32 ? block - w * 32 : 32;
      warps.push_back(std::make_unique<EmuWarp>(static_cast<int>(n)));
    }
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < block; ++t) {
      threads.emplace_back([&, t] {
        threadIdx = dim3(t);
        blockIdx = dim3(bx);
        emu_block_barrier = &block_barrier;
        emu_warp = warps[t / 32].get();
        kernel(static_cast<P>(args)...);
        emu_warp->sync.arrive_and_drop();
        block_barrier.arrive_and_drop();
      });
    }
    for (auto& th : threads) th.join();
  }
}
