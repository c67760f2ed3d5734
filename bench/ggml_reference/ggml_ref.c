/* Golden-fixture harness: exposes llama.cpp's own block quantizers (ggml-quants.c) to Python
 * through ctypes. Only lowbit's glue is here; the quantizers are compiled from the checkout.
 *
 *   lowbit_ref_quantize(type, src, dst, nrow, n_per_row, imatrix_or_NULL) -> bytes written
 *
 * imatrix NULL -> the reference path (quantize_row_*_ref, what llama-quantize uses without
 * an importance matrix); otherwise the importance-weighted quantize_* path.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml.h"
#include "ggml-quants.h"

/* ggml-quants.c needs a few symbols from ggml.c; the full ggml.c drags in the whole library,
 * so the handful of types we call are described here. */
static int64_t block_of(enum ggml_type t, size_t * type_size) {
    switch (t) {
        case GGML_TYPE_Q4_0: *type_size = 18;  return 32;
        case GGML_TYPE_Q4_1: *type_size = 20;  return 32;
        case GGML_TYPE_Q5_0: *type_size = 22;  return 32;
        case GGML_TYPE_Q5_1: *type_size = 24;  return 32;
        case GGML_TYPE_Q8_0: *type_size = 34;  return 32;
        case GGML_TYPE_Q2_K: *type_size = 84;  return 256;
        case GGML_TYPE_Q3_K: *type_size = 110; return 256;
        case GGML_TYPE_Q4_K: *type_size = 144; return 256;
        case GGML_TYPE_Q5_K: *type_size = 176; return 256;
        case GGML_TYPE_Q6_K: *type_size = 210; return 256;
        default: *type_size = 0; return 0;
    }
}

void ggml_abort(const char * file, int line, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "ggml_abort %s:%d: ", file, line);
    vfprintf(stderr, fmt, args);
    va_end(args);
    abort();
}

int64_t ggml_blck_size(enum ggml_type t) { size_t ts; return block_of(t, &ts); }
size_t ggml_type_size(enum ggml_type t) { size_t ts; block_of(t, &ts); return ts; }
size_t ggml_row_size(enum ggml_type t, int64_t ne) { size_t ts; int64_t b = block_of(t, &ts); return ts * (ne / b); }
const char * ggml_type_name(enum ggml_type t) { (void) t; return "?"; }

/* llama.cpp before mid-2025 read fp16 through a table that ggml_init fills; supply it so older
 * checkouts build too (weak: newer ones do not use it). */
__attribute__((weak)) float ggml_table_f32_f16[1 << 16];

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t) (h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {                                   /* subnormal: normalize */
        exp = 113;
        while (!(man & 0x400)) { man <<= 1; exp--; }
        bits = sign | (exp << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

__attribute__((constructor)) static void fill_fp16_table(void) {
    for (uint32_t i = 0; i < (1u << 16); ++i) ggml_table_f32_f16[i] = half_to_float((uint16_t) i);
}

int64_t lowbit_ref_quantize(int type, const float * src, void * dst, int64_t nrow, int64_t n_per_row,
                            const float * imatrix) {
    size_t ts;
    int64_t b = block_of((enum ggml_type) type, &ts);
    if (b == 0 || n_per_row % b != 0) return -1;
    switch ((enum ggml_type) type) {
        case GGML_TYPE_Q4_0: return (int64_t) quantize_q4_0(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q4_1: return (int64_t) quantize_q4_1(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q5_0: return (int64_t) quantize_q5_0(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q5_1: return (int64_t) quantize_q5_1(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q8_0: return (int64_t) quantize_q8_0(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q2_K: return (int64_t) quantize_q2_K(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q3_K: return (int64_t) quantize_q3_K(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q4_K: return (int64_t) quantize_q4_K(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q5_K: return (int64_t) quantize_q5_K(src, dst, nrow, n_per_row, imatrix);
        case GGML_TYPE_Q6_K: return (int64_t) quantize_q6_K(src, dst, nrow, n_per_row, imatrix);
        default: return -1;
    }
}
