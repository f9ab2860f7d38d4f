// The kernels' XLA FFI handlers, one set per instruction set (kernels_avx512.cc,
// kernels_avx2.cc), for module.cc to hand to Python.
#ifndef JAXLSTM_CSRC_KERNELS_H_
#define JAXLSTM_CSRC_KERNELS_H_

#include <vector>

namespace jaxlstm {

struct Handler {
  const char* name;  // the custom call's target name
  void* function;    // an XLA_FFI_Handler
};

// Float32 and bfloat16 operands, bfloat16 products in AMX tiles where asked: for CPUs with
// AVX-512F/DQ/BW/VL and FMA (bfloat16: AVX512_BF16 too).
std::vector<Handler> Avx512Handlers();

// Float32 and bfloat16 operands (widened to float32 for FMAs): for CPUs with AVX2 and FMA.
std::vector<Handler> Avx2Handlers();

}  // namespace jaxlstm

#endif  // JAXLSTM_CSRC_KERNELS_H_
