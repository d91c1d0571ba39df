// Row kernels of the native CPU path: one row is one (sample, channel) of a
// contiguous (N, C, *) tensor. Included once per instruction set by
// dgn_cpu.cpp, inside a namespace of its own, with DGN_VEC_BYTES set to the
// vector width (64: AVX-512, 32: AVX2, 16: SSE2 / NEON). The code uses GCC /
// Clang vector extensions and builtins only (no library headers), so every
// copy is compiled for its own target and nothing leaks between them.
//
// Sums of float rows are accumulated in float vectors (U vectors of lanes in
// flight) and flushed into double every CHUNK elements, so no float
// accumulator adds more than CHUNK / (U * lanes) terms; row tails and the
// final lane reduction are in double.

#ifndef DGN_VEC_BYTES
#error "define DGN_VEC_BYTES before including dgn_rows.h"
#endif

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float V __attribute__((vector_size(DGN_VEC_BYTES)));
  typedef double D __attribute__((vector_size(2 * DGN_VEC_BYTES)));  // V's lanes in double
  static constexpr int64_t L = DGN_VEC_BYTES / 4;
};
template <> struct Vec<double> {
  typedef double V __attribute__((vector_size(DGN_VEC_BYTES)));
  typedef double D __attribute__((vector_size(DGN_VEC_BYTES)));
  static constexpr int64_t L = DGN_VEC_BYTES / 8;
};

constexpr int U = 4;               // vectors in flight per sum
constexpr int64_t CHUNK = 2048;    // elements between flushes to double

template <typename V, typename T>
static inline V vload(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
static inline void vstore(T* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}

template <typename V, typename T>
static inline V vsplat(T s) {
  V v = {};
  return v + s;
}

// Sum of a vector's lanes, pairwise.
template <typename D, int64_t L>
static inline double lane_sum(D v) {
  double a[L];
  __builtin_memcpy(a, &v, sizeof(a));
#pragma GCC unroll 8
  for (int64_t width = L / 2; width > 0; width /= 2)
#pragma GCC unroll 8
    for (int64_t l = 0; l < width; ++l) a[l] += a[l + width];
  return a[0];
}

// K sums over one row: `body(acc, i)` adds the terms of elements i .. i+L-1
// to acc[0..K-1] (vectors of T), `tail(out, i)` adds element i's terms to
// out[0..K-1] (double). Writes the K totals to `out`. Few fixed costs per
// row: rows can be short (7 x 7 feature maps).
template <typename T, int K, typename Body, typename Tail>
static inline void reduce_row(int64_t size, double* out, Body body, Tail tail) {
  typedef typename Vec<T>::V V;
  typedef typename Vec<T>::D D;
  constexpr int64_t L = Vec<T>::L;
  constexpr int64_t step = U * L;
  D total[K];
  for (int k = 0; k < K; ++k) total[k] = D{};
  int64_t i = 0;
  while (size - i >= L) {
    const int64_t span = size - i < CHUNK ? size - i : CHUNK;
    const int64_t end_unrolled = i + span / step * step, end = i + span / L * L;
    V acc[U][K];
    for (int u = 0; u < U; ++u)
      for (int k = 0; k < K; ++k) acc[u][k] = V{};
    for (; i < end_unrolled; i += step)
      for (int u = 0; u < U; ++u) body(acc[u], i + u * L);
    for (; i < end; i += L) body(acc[0], i);
    for (int k = 0; k < K; ++k)
      total[k] += __builtin_convertvector((acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]), D);
  }
  double rest[K];
  for (int k = 0; k < K; ++k) rest[k] = 0.0;
  for (; i < size; ++i) tail(rest, i);
  for (int k = 0; k < K; ++k) out[k] = rest[k] + lane_sum<D, L>(total[k]);
}

// Mean and biased variance of one row, stably: a first pass sums x - x[0]
// (an approximate mean m), a second sums e = x - m and e^2 (the row is in
// cache by then). mean = m + sum(e) / S, var = sum(e^2) / S - (sum(e) / S)^2:
// the correction is tiny, so no cancellation at any mean / std ratio.
template <typename T>
static void row_moments(const T* x, int64_t size, double* mean, double* var) {
  typedef typename Vec<T>::V V;
  const T pivot = x[0];
  const V pivot_v = vsplat<V>(pivot);
  double shifted;
  reduce_row<T, 1>(
      size, &shifted,
      [&](V* acc, int64_t i) { acc[0] += vload<V>(x + i) - pivot_v; },
      [&](double* out, int64_t i) { out[0] += double(x[i] - pivot); });
  const double inv_size = 1.0 / double(size);
  const T m = T(double(pivot) + shifted * inv_size);
  const V m_v = vsplat<V>(m);
  double sums[2];
  reduce_row<T, 2>(
      size, sums,
      [&](V* acc, int64_t i) {
        V e = vload<V>(x + i) - m_v;
        acc[0] += e;
        acc[1] += e * e;
      },
      [&](double* out, int64_t i) {
        double e = double(x[i] - m);
        out[0] += e;
        out[1] += e * e;
      });
  const double correction = sums[0] * inv_size;
  *mean = double(m) + correction;
  const double v = sums[1] * inv_size - correction * correction;
  *var = v > 0.0 ? v : 0.0;
}

// y = (x - center) * scale + shift.
template <typename T>
static void row_affine(const T* x, T* y, int64_t size, T center, T scale, T shift) {
  typedef typename Vec<T>::V V;
  constexpr int64_t L = Vec<T>::L;
  const V c = vsplat<V>(center), a = vsplat<V>(scale), b = vsplat<V>(shift);
  int64_t i = 0;
  for (; i + 2 * L <= size; i += 2 * L) {
    vstore(y + i, (vload<V>(x + i) - c) * a + b);
    vstore(y + i + L, (vload<V>(x + i + L) - c) * a + b);
  }
  for (; i < size; ++i) y[i] = (x[i] - center) * scale + shift;
}

// sum(dy) and sum(dy * (x - center)) of one row.
template <typename T>
static void row_grad_sums(const T* dy, const T* x, int64_t size, T center, double* sum_dy, double* sum_dy_xc) {
  typedef typename Vec<T>::V V;
  const V c = vsplat<V>(center);
  double sums[2];
  reduce_row<T, 2>(
      size, sums,
      [&](V* acc, int64_t i) {
        V g = vload<V>(dy + i);
        acc[0] += g;
        acc[1] += g * (vload<V>(x + i) - c);
      },
      [&](double* out, int64_t i) {
        out[0] += double(dy[i]);
        out[1] += double(dy[i]) * double(x[i] - center);
      });
  *sum_dy = sums[0];
  *sum_dy_xc = sums[1];
}

// dx = dy * coef_dy + (x - center) * coef_x + coef_const.
template <typename T>
static void row_grad_input(const T* dy, const T* x, T* dx, int64_t size, T coef_dy, T center, T coef_x, T coef_const) {
  typedef typename Vec<T>::V V;
  constexpr int64_t L = Vec<T>::L;
  const V a = vsplat<V>(coef_dy), c = vsplat<V>(center), b = vsplat<V>(coef_x), d = vsplat<V>(coef_const);
  int64_t i = 0;
  for (; i + 2 * L <= size; i += 2 * L) {
    vstore(dx + i, vload<V>(dy + i) * a + ((vload<V>(x + i) - c) * b + d));
    vstore(dx + i + L, vload<V>(dy + i + L) * a + ((vload<V>(x + i + L) - c) * b + d));
  }
  for (; i < size; ++i) dx[i] = dy[i] * coef_dy + ((x[i] - center) * coef_x + coef_const);
}

static RowKernels kernels() {
  return RowKernels{row_moments<float>,    row_moments<double>,   row_affine<float>,     row_affine<double>,
                    row_grad_sums<float>,  row_grad_sums<double>, row_grad_input<float>, row_grad_input<double>};
}
