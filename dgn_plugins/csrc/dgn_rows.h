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
//
// Storage: float32 and float64 rows are computed in their own type;
// bfloat16 and float16 rows (16-bit patterns) in float32, widened as they are
// loaded and rounded once, to nearest even as c10::BFloat16 / c10::Half do,
// as they are stored (Elem below).

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

// Storage types: how a row of S is loaded into vectors of its compute type T and stored back.
struct bf16_bits {};
struct f16_bits {};

template <typename S> struct Elem {  // float, double: computed in themselves
  typedef S Stored;
  typedef S T;
  typedef typename Vec<T>::V V;
  static inline V load(const S* p) { return vload<V>(p); }
  static inline void store(S* p, V v) { vstore(p, v); }
  static inline T get(S v) { return v; }
  static inline S put(T v) { return v; }
};

template <> struct Elem<bf16_bits> {
  typedef uint16_t Stored;
  typedef float T;
  typedef Vec<float>::V V;
  static constexpr int64_t L = Vec<float>::L;
  typedef uint16_t H __attribute__((vector_size(2 * L)));
  typedef uint32_t W __attribute__((vector_size(4 * L)));
  typedef int32_t M __attribute__((vector_size(4 * L)));
  static inline V load(const uint16_t* p) {
    const W bits = __builtin_convertvector(vload<H>(p), W) << 16;
    V v;
    __builtin_memcpy(&v, &bits, sizeof(V));
    return v;
  }
  static inline void store(uint16_t* p, V v) {
    W bits;
    __builtin_memcpy(&bits, &v, sizeof(W));
    const W rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    const M nan = (M)((bits & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
    const W out = (rounded & ~(W)nan) | ((W)nan & 0x7fc0u);
    vstore(p, __builtin_convertvector(out, H));
  }
  static inline float get(uint16_t v) {
    const uint32_t bits = uint32_t(v) << 16;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    return f;
  }
  static inline uint16_t put(float f) {
    uint32_t bits;
    __builtin_memcpy(&bits, &f, 4);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  }
};

template <> struct Elem<f16_bits> {
  typedef uint16_t Stored;
  typedef float T;
  typedef Vec<float>::V V;
  static constexpr int64_t L = Vec<float>::L;
  typedef _Float16 H __attribute__((vector_size(2 * L)));
  static inline V load(const uint16_t* p) { return __builtin_convertvector(vload<H>(p), V); }
  static inline void store(uint16_t* p, V v) { vstore(p, __builtin_convertvector(v, H)); }
  static inline float get(uint16_t v) {
    _Float16 h;
    __builtin_memcpy(&h, &v, 2);
    return float(h);
  }
  static inline uint16_t put(float f) {
    const _Float16 h = _Float16(f);
    uint16_t v;
    __builtin_memcpy(&v, &h, 2);
    return v;
  }
};

// The rows' statistics: mean and biased variance of one row in one pass, as sums of d = x - p and
// d^2 (double accumulators for short rows; float ones flushed to double every CHUNK elements for
// long rows). The pivot p is the row's first element for short rows and the mean of its first
// PIVOT_SPAN elements otherwise: within a fraction of a standard deviation of the row's mean, so
// var = mean(d^2) - mean(d)^2 does not cancel at any mean / std ratio.
constexpr int64_t SHORT_ROW = 64;
constexpr int64_t PIVOT_SPAN = 64;

template <typename E>
static inline void row_moments_short(const typename E::Stored* x, int64_t size, double* mean, double* var) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  typedef typename Vec<T>::D D;
  constexpr int64_t L = Vec<T>::L;
  const T pivot = E::get(x[0]);
  const V pivot_v = vsplat<V>(pivot);
  D s1 = D{}, s2 = D{};
  int64_t i = 0;
  for (; i + L <= size; i += L) {
    const D d = __builtin_convertvector(E::load(x + i) - pivot_v, D);
    s1 += d;
    s2 += d * d;
  }
  double r1 = 0.0, r2 = 0.0;
  for (; i < size; ++i) {
    const double d = double(E::get(x[i]) - pivot);
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

template <typename E>
static inline void row_moments_long(const typename E::Stored* x, int64_t size, double* mean, double* var) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  double head = 0.0;
  for (int64_t i = 0; i < PIVOT_SPAN; ++i) head += double(E::get(x[i]));
  const T pivot = T(head / double(PIVOT_SPAN));
  const V pivot_v = vsplat<V>(pivot);
  double sums[2];
  reduce_row<T, 2>(
      size, sums,
      [&](V* acc, int64_t i) {
        const V d = E::load(x + i) - pivot_v;
        acc[0] += d;
        acc[1] += d * d;
      },
      [&](double* out, int64_t i) {
        const double d = double(E::get(x[i]) - pivot);
        out[0] += d;
        out[1] += d * d;
      });
  const double inv_size = 1.0 / double(size);
  const double shift = sums[0] * inv_size;
  *mean = double(pivot) + shift;
  const double v = sums[1] * inv_size - shift * shift;
  *var = v > 0.0 ? v : 0.0;
}

// y = (x - center) * scale + shift.
template <typename E>
static inline void row_affine(const typename E::Stored* x, typename E::Stored* y, int64_t size, typename E::T center,
                              typename E::T scale, typename E::T shift) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  constexpr int64_t L = Vec<T>::L;
  const V c = vsplat<V>(center), a = vsplat<V>(scale), b = vsplat<V>(shift);
  int64_t i = 0;
  for (; i + 2 * L <= size; i += 2 * L) {
    E::store(y + i, (E::load(x + i) - c) * a + b);
    E::store(y + i + L, (E::load(x + i + L) - c) * a + b);
  }
  for (; i + L <= size; i += L) E::store(y + i, (E::load(x + i) - c) * a + b);
  for (; i < size; ++i) y[i] = E::put((E::get(x[i]) - center) * scale + shift);
}

// sum(dy) and sum(dy * (x - center)) of one row.
template <typename E>
static inline void row_grad_sums(const typename E::Stored* dy, const typename E::Stored* x, int64_t size,
                                 typename E::T center, double* sum_dy, double* sum_dy_xc) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  const V c = vsplat<V>(center);
  double sums[2];
  reduce_row<T, 2>(
      size, sums,
      [&](V* acc, int64_t i) {
        const V g = E::load(dy + i);
        acc[0] += g;
        acc[1] += g * (E::load(x + i) - c);
      },
      [&](double* out, int64_t i) {
        const double g = double(E::get(dy[i]));
        out[0] += g;
        out[1] += g * double(E::get(x[i]) - center);
      });
  *sum_dy = sums[0];
  *sum_dy_xc = sums[1];
}

// dx = dy * coef_dy + (x - center) * coef_x + coef_const.
template <typename E>
static inline void row_grad_input(const typename E::Stored* dy, const typename E::Stored* x, typename E::Stored* dx,
                                  int64_t size, typename E::T coef_dy, typename E::T center, typename E::T coef_x,
                                  typename E::T coef_const) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  constexpr int64_t L = Vec<T>::L;
  const V a = vsplat<V>(coef_dy), c = vsplat<V>(center), b = vsplat<V>(coef_x), d = vsplat<V>(coef_const);
  int64_t i = 0;
  for (; i + 2 * L <= size; i += 2 * L) {
    E::store(dx + i, E::load(dy + i) * a + ((E::load(x + i) - c) * b + d));
    E::store(dx + i + L, E::load(dy + i + L) * a + ((E::load(x + i + L) - c) * b + d));
  }
  for (; i + L <= size; i += L) E::store(dx + i, E::load(dy + i) * a + ((E::load(x + i) - c) * b + d));
  for (; i < size; ++i)
    dx[i] = E::put(E::get(dy[i]) * coef_dy + ((E::get(x[i]) - center) * coef_x + coef_const));
}

// The entry points: `rows` consecutive rows of `size` elements each, one parameter (or result) per row.
template <typename E>
static void rows_moments(const typename E::Stored* x, int64_t size, int64_t rows, double* mean, double* var) {
  if (size <= SHORT_ROW) {
    for (int64_t r = 0; r < rows; ++r) row_moments_short<E>(x + r * size, size, mean + r, var + r);
  } else {
    for (int64_t r = 0; r < rows; ++r) row_moments_long<E>(x + r * size, size, mean + r, var + r);
  }
}

template <typename E>
static void rows_affine(const typename E::Stored* x, typename E::Stored* y, int64_t size, int64_t rows,
                        const typename E::T* center, const typename E::T* scale, const typename E::T* shift) {
  for (int64_t r = 0; r < rows; ++r) row_affine<E>(x + r * size, y + r * size, size, center[r], scale[r], shift[r]);
}

template <typename E>
static void rows_grad_sums(const typename E::Stored* dy, const typename E::Stored* x, int64_t size, int64_t rows,
                           const typename E::T* center, double* sum_dy, double* sum_dy_xc) {
  for (int64_t r = 0; r < rows; ++r)
    row_grad_sums<E>(dy + r * size, x + r * size, size, center[r], sum_dy + r, sum_dy_xc + r);
}

template <typename E>
static void rows_grad_input(const typename E::Stored* dy, const typename E::Stored* x, typename E::Stored* dx,
                            int64_t size, int64_t rows, const typename E::T* coef_dy, const typename E::T* center,
                            const typename E::T* coef_x, const typename E::T* coef_const) {
  for (int64_t r = 0; r < rows; ++r)
    row_grad_input<E>(dy + r * size, x + r * size, dx + r * size, size, coef_dy[r], center[r], coef_x[r],
                      coef_const[r]);
}
