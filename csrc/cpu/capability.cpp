// Runtime ISA selection for the CPU kernels (see capability.h). Compiled with the baseline
// flags only: this file must run on any x86-64 (or other) CPU.
#include "cpu/capability.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>

namespace mmfast::cpu {
namespace {

CpuCapability detect_best() {
#if defined(MMFAST_CPU_ISA_X86) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  // The same feature sets as ATen's AVX2 / AVX512 capabilities (and the -m flags of the
  // per-ISA builds); libgcc also checks that the OS saves the YMM / ZMM state.
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx512 && avx2) return CpuCapability::kAvx512;
  if (avx2) return CpuCapability::kAvx2;
#endif
  return CpuCapability::kDefault;
}

bool parse_capability(std::string name, CpuCapability* out) {
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (name == "default") return *out = CpuCapability::kDefault, true;
  if (name == "avx2") return *out = CpuCapability::kAvx2, true;
  if (name == "avx512") return *out = CpuCapability::kAvx512, true;
  return false;
}

// Clamps a request to what the CPU supports (ATen does the same for ATEN_CPU_CAPABILITY).
CpuCapability clamp_request(CpuCapability want, const std::string& origin) {
  const CpuCapability best = best_supported_capability();
  if (static_cast<int>(want) <= static_cast<int>(best)) return want;
  TORCH_WARN(origin, " asks for the ", capability_name(want),
             " kernels, which this CPU does not support; using ", capability_name(best));
  return best;
}

CpuCapability from_environment() {
  const char* env = std::getenv("MMFAST_CPU_CAPABILITY");
  const CpuCapability best = best_supported_capability();
  if (env == nullptr || *env == '\0') return best;
  CpuCapability want;
  if (!parse_capability(env, &want)) {
    TORCH_WARN("MMFAST_CPU_CAPABILITY: expected one of default, avx2, avx512, got '", env,
               "'; using ", capability_name(best));
    return best;
  }
  return clamp_request(want, "MMFAST_CPU_CAPABILITY=" + std::string(env));
}

// -1 until first use; then the selected capability (the environment is read once).
std::atomic<int> g_capability{-1};

std::string current_capability_name() { return capability_name(cpu_capability()); }

// Test hook: switch the ISA build in-process; returns the previous one's name.
std::string set_capability(const std::string& name) {
  CpuCapability want;
  TORCH_CHECK_VALUE(parse_capability(name, &want),
                    "_set_cpu_capability: argument 'name' expected one of default, avx2, avx512, "
                    "got '", name, "'");
  const std::string previous = current_capability_name();
  g_capability.store(static_cast<int>(clamp_request(want, "_set_cpu_capability")));
  return previous;
}

std::string best_capability_name() { return capability_name(best_supported_capability()); }

}  // namespace

CpuCapability best_supported_capability() {
  static const CpuCapability best = detect_best();
  return best;
}

CpuCapability cpu_capability() {
  int value = g_capability.load(std::memory_order_relaxed);
  if (value < 0) {
    int expected = -1;
    g_capability.compare_exchange_strong(expected, static_cast<int>(from_environment()));
    value = g_capability.load();
  }
  return static_cast<CpuCapability>(value);
}

const char* capability_name(CpuCapability c) {
  switch (c) {
    case CpuCapability::kAvx512: return "avx512";
    case CpuCapability::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace mmfast::cpu

// Introspection and the test hook, as ops without tensor arguments (catch-all kernels).
TORCH_LIBRARY_FRAGMENT(mmfast, m) {
  m.def("_cpu_capability() -> str", &mmfast::cpu::current_capability_name);
  m.def("_cpu_capability_best() -> str", &mmfast::cpu::best_capability_name);
  m.def("_set_cpu_capability(str name) -> str", &mmfast::cpu::set_capability);
}
