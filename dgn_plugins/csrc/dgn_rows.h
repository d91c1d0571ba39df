// Row kernels of the native CPU path: one row is one (sample, channel) of a
// contiguous (N, C, *) tensor. Included once per instruction set by
// dgn_cpu.cpp, inside a namespace of its own, with DGN_VEC_BYTES set to the
// vector width (64: AVX-512, 32: AVX2, 16: SSE2 / NEON). The code uses GCC /
// Clang vector extensions and builtins only (no library headers), so every
// copy is compiled for its own target and nothing leaks between them
// (std::index_sequence is a compile-time type only).
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

// Sum of a vector's lanes, pairwise (halves added until one lane is left).
template <typename V, int64_t L, std::size_t... I>
static inline auto low_half(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, I...);
}
template <typename V, int64_t L, std::size_t... I>
static inline auto high_half(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, (I + L / 2)...);
}
template <typename V, int64_t L>
static inline double lane_sum(V v) {
  if constexpr (L == 1) {
    return v[0];
  } else {
    auto half = low_half<V, L>(v, std::make_index_sequence<L / 2>()) +
                high_half<V, L>(v, std::make_index_sequence<L / 2>());
    return lane_sum<decltype(half), L / 2>(half);
  }
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
  if (size >= L) {
    for (int k = 0; k < K; ++k) out[k] = rest[k] + lane_sum<D, L>(total[k]);
  } else {
    for (int k = 0; k < K; ++k) out[k] = rest[k];
  }
}

// Mean and biased variance of one row, stably: a first pass sums x - x[0]
// (an approximate mean m), a second sums e = x - m and e^2 (the row is in
// cache by then). mean = m + sum(e) / S, var = sum(e^2) / S - (sum(e) / S)^2:
// the correction is tiny, so no cancellation at any mean / std ratio.
template <typename T>
static inline void row_moments(const T* x, int64_t size, double* mean, double* var) {
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

// The same for short rows, in one pass: sums of d = x - x[0] and d^2
// accumulated in double, so var = mean(d^2) - mean(d)^2 loses nothing that
// matters (the pivot is a sample of the row). The fixed cost per row, not
// the pass, dominates short rows (7 x 7 and 14 x 14 feature maps).
template <typename T>
static inline void row_moments_short(const T* x, int64_t size, double* mean, double* var) {
  typedef typename Vec<T>::V V;
  typedef typename Vec<T>::D D;
  constexpr int64_t L = Vec<T>::L;
  const T pivot = x[0];
  const V pivot_v = vsplat<V>(pivot);
  D s1 = D{}, s2 = D{};
  int64_t i = 0;
  for (; i + L <= size; i += L) {
    const D d = __builtin_convertvector(vload<V>(x + i) - pivot_v, D);
    s1 += d;
    s2 += d * d;
  }
  double r1 = 0.0, r2 = 0.0;
  for (; i < size; ++i) {
    const double d = double(x[i] - pivot);
    r1 += d;
    r2 += d * d;
  }
  if (size >= L) {
    r1 += lane_sum<D, L>(s1);
    r2 += lane_sum<D, L>(s2);
  }
  const double inv_size = 1.0 / double(size);
  const double shift = r1 * inv_size;
  *mean = double(pivot) + shift;
  const double v = r2 * inv_size - shift * shift;
  *var = v > 0.0 ? v : 0.0;
}

// y = (x - center) * scale + shift.
template <typename T>
static inline void row_affine(const T* x, T* y, int64_t size, T center, T scale, T shift) {
  typedef typename Vec<T>::V V;
  constexpr int64_t L = Vec<T>::L;
  const V c = vsplat<V>(center), a = vsplat<V>(scale), b = vsplat<V>(shift);
  int64_t i = 0;
  for (; i + 2 * L <= size; i += 2 * L) {
    vstore(y + i, (vload<V>(x + i) - c) * a + b);
    vstore(y + i + L, (vload<V>(x + i + L) - c) * a + b);
  }
  for (; i + L <= size; i += L) vstore(y + i, (vload<V>(x + i) - c) * a + b);
  for (; i < size; ++i) y[i] = (x[i] - center) * scale + shift;
}

// sum(dy) and sum(dy * (x - center)) of one row.
template <typename T>
static inline void row_grad_sums(const T* dy, const T* x, int64_t size, T center, double* sum_dy, double* sum_dy_xc) {
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
static inline void row_grad_input(const T* dy, const T* x, T* dx, int64_t size, T coef_dy, T center, T coef_x,
                                  T coef_const) {
  typedef typename Vec<T>::V V;
  constexpr int64_t L = Vec<T>::L;
  const V a = vsplat<V>(coef_dy), c = vsplat<V>(center), b = vsplat<V>(coef_x), d = vsplat<V>(coef_const);
  int64_t i = 0;
  for (; i + 2 * L <= size; i += 2 * L) {
    vstore(dx + i, vload<V>(dy + i) * a + ((vload<V>(x + i) - c) * b + d));
    vstore(dx + i + L, vload<V>(dy + i + L) * a + ((vload<V>(x + i + L) - c) * b + d));
  }
  for (; i + L <= size; i += L) vstore(dx + i, vload<V>(dy + i) * a + ((vload<V>(x + i) - c) * b + d));
  for (; i < size; ++i) dx[i] = dy[i] * coef_dy + ((x[i] - center) * coef_x + coef_const);
}

// The entry points: `rows` consecutive rows of `size` elements each, one
// parameter (or result) per row. Rows of at most SHORT_ROW elements take
// the one-pass statistics (double sums beat two float passes there).
constexpr int64_t SHORT_ROW = 64;

template <typename T>
static void moments_rows(const T* x, int64_t size, int64_t rows, double* mean, double* var) {
  if (size <= SHORT_ROW) {
    for (int64_t r = 0; r < rows; ++r) row_moments_short<T>(x + r * size, size, mean + r, var + r);
  } else {
    for (int64_t r = 0; r < rows; ++r) row_moments<T>(x + r * size, size, mean + r, var + r);
  }
}

template <typename T>
static void affine_rows(const T* x, T* y, int64_t size, int64_t rows, const T* center, const T* scale,
                        const T* shift) {
  for (int64_t r = 0; r < rows; ++r) row_affine<T>(x + r * size, y + r * size, size, center[r], scale[r], shift[r]);
}

template <typename T>
static void grad_sums_rows(const T* dy, const T* x, int64_t size, int64_t rows, const T* center, double* sum_dy,
                           double* sum_dy_xc) {
  for (int64_t r = 0; r < rows; ++r)
    row_grad_sums<T>(dy + r * size, x + r * size, size, center[r], sum_dy + r, sum_dy_xc + r);
}

template <typename T>
static void grad_input_rows(const T* dy, const T* x, T* dx, int64_t size, int64_t rows, const T* coef_dy,
                            const T* center, const T* coef_x, const T* coef_const) {
  for (int64_t r = 0; r < rows; ++r)
    row_grad_input<T>(dy + r * size, x + r * size, dx + r * size, size, coef_dy[r], center[r], coef_x[r],
                      coef_const[r]);
}

static RowKernels kernels() {
  return RowKernels{moments_rows<float>,    moments_rows<double>,    affine_rows<float>,     affine_rows<double>,
                    grad_sums_rows<float>,  grad_sums_rows<double>,  grad_input_rows<float>, grad_input_rows<double>};
}
