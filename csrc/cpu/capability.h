// Which instruction-set build of the CPU kernels runs (ATen's DispatchStub idea, reduced to
// what mmfast needs). csrc/cpu/kernels/*.cpp are compiled once per ISA into separate
// translation units (setup.py / CMakeLists.txt: -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512 with the
// matching -m flags), each defining its kernels in namespace mmfast::cpu::<ISA>
// (csrc/cpu/kernels.h); csrc/cpu/register.cpp calls the one chosen here.
//
// The choice is made once, on first use: the best ISA this CPU (and OS) supports, lowered by
// the environment variable MMFAST_CPU_CAPABILITY=default|avx2|avx512 (like ATen's
// ATEN_CPU_CAPABILITY; a request above what the CPU supports falls back to the best supported
// one, with a warning). Tests switch it in-process with torch.ops.mmfast._set_cpu_capability.
#pragma once

#include <string>

namespace mmfast::cpu {

enum class CpuCapability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// The ISA build used by the next kernel call.
CpuCapability cpu_capability();

// "default", "avx2" or "avx512".
const char* capability_name(CpuCapability c);

// The best ISA build compiled into this library that this CPU supports.
CpuCapability best_supported_capability();

}  // namespace mmfast::cpu
