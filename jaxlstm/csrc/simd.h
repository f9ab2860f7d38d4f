// The vector instructions a kernel is built for, chosen by the translation unit that
// includes this first: with JAXLSTM_AVX512 defined, AVX-512 (namespace jaxlstm::avx512:
// 512-bit registers, bfloat16 dot products, AMX); without, AVX2 and FMA (jaxlstm::avx2:
// two 256-bit registers per vector, float32 only). JAXLSTM_ISA names that namespace, in
// which the kernels' headers (activations.h, gemm.h, pack.h, forward.h, backward.h) then define
// their code, compiled for those instructions.
//
// Everything shared is included here first, compiled for the baseline x86-64: a library
// function compiled for AVX-512 in one unit could otherwise be the copy the linker keeps
// for all, and run on a CPU without AVX-512.
#ifndef JAXLSTM_CSRC_SIMD_H_
#define JAXLSTM_CSRC_SIMD_H_

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "layout.h"
#include "scratch.h"
#include "team.h"
#include "tiles.h"

#if defined(JAXLSTM_AVX512)
#include "simd_avx512.h"
#define JAXLSTM_ISA avx512
#else
#include "simd_avx2.h"
#define JAXLSTM_ISA avx2
#endif

#endif  // JAXLSTM_CSRC_SIMD_H_
