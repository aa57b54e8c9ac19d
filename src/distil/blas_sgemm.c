/* OneFlow 0.9's cblas_sgemm (LP64: 32-bit sizes), forwarded to numpy's multi-threaded OpenBLAS
 * (ILP64: 64-bit sizes, symbols suffixed 64_). Built and loaded by distil/blas.py. */
#include <stdint.h>

typedef void (*sgemm64_t)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                          const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
                          int64_t ldc);

static sgemm64_t numpy_sgemm;

void distil_use_sgemm(void *fn) { numpy_sgemm = (sgemm64_t)fn; }

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                 const float *b, int ldb, float beta, float *c, int ldc) {
  numpy_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
