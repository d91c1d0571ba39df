// The passes over activations for every storage type and memory format: included once per
// instruction set by dgn_cpu.cpp, after dgn_rows.h and inside the same namespace, and returned as
// one table by kernels().
//
// NCHW rows: the row loops of dgn_rows.h. Channels last: a sample is a [positions, channels]
// block, walked one position (a contiguous run of channels) after the other, so one pass reads
// memory once in order; per-channel float sums are flushed to double every POSITION_CHUNK
// positions. The loops along channels are left to the compiler's vectoriser (the per-element
// conversions of half-precision storage are shifts or F16C instructions).

constexpr int64_t POSITION_CHUNK = 64;  // positions between flushes of the float sums to double

// Per channel, the mean of the first positions (at most PIVOT_SPAN): the pivot of the sums below.
template <typename E>
static void last_pivots(const typename E::Stored* x, int64_t positions, int64_t channels, typename E::T* pivot) {
  const int64_t span = positions < PIVOT_SPAN ? positions : PIVOT_SPAN;
  for (int64_t c = 0; c < channels; ++c) pivot[c] = typename E::T(0);
  for (int64_t s = 0; s < span; ++s)
    for (int64_t c = 0; c < channels; ++c) pivot[c] += E::get(x[s * channels + c]);
  for (int64_t c = 0; c < channels; ++c) pivot[c] /= typename E::T(span);
}

// Per-channel sums over positions, in blocks of CHANNEL_VECTORS vectors of channels: the block's
// sums stay in registers while the positions stream past (each position's slice of the block is a
// contiguous load), then are flushed to double; the channels past the last whole block are summed
// position by position in `scratch`. `terms(acc, position, c)` adds the terms of the vector of
// channels c .. c+L-1 at `position` to acc[0] and acc[1]; `term(out, position, c)` adds channel c's.
constexpr int CHANNEL_VECTORS = 4;

template <typename E, typename Terms, typename Term>
static inline void last_channel_sums(int64_t positions, int64_t channels, typename E::T* scratch, double* sum1,
                                     double* sum2, Terms terms, Term term) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  constexpr int64_t L = Vec<T>::L, block = CHANNEL_VECTORS * L;
  const int64_t blocked = channels / block * block;
  for (int64_t start = 0; start < positions; start += POSITION_CHUNK) {
    const int64_t end = positions < start + POSITION_CHUNK ? positions : start + POSITION_CHUNK;
    for (int64_t c0 = 0; c0 < blocked; c0 += block) {
      V acc[CHANNEL_VECTORS][2];
      for (int v = 0; v < CHANNEL_VECTORS; ++v) acc[v][0] = acc[v][1] = V{};
      for (int64_t s = start; s < end; ++s)
        for (int v = 0; v < CHANNEL_VECTORS; ++v) terms(acc[v], s, c0 + v * L);
      for (int v = 0; v < CHANNEL_VECTORS; ++v)
        for (int64_t l = 0; l < L; ++l) {
          sum1[c0 + v * L + l] += double(acc[v][0][l]);
          sum2[c0 + v * L + l] += double(acc[v][1][l]);
        }
    }
    if (blocked == channels) continue;
    T* s1 = scratch;
    T* s2 = scratch + channels;
    for (int64_t c = blocked; c < channels; ++c) s1[c] = s2[c] = T(0);
    for (int64_t s = start; s < end; ++s)
      for (int64_t c = blocked; c < channels; ++c) term(s1 + c, s2 + c, s, c);
    for (int64_t c = blocked; c < channels; ++c) {
      sum1[c] += double(s1[c]);
      sum2[c] += double(s2[c]);
    }
  }
}

// Adds sum(x - pivot) and sum((x - pivot)^2) over `positions` positions to sum1 / sum2 (per channel);
// `scratch` holds 2 * channels compute values.
template <typename E>
static void last_moments(const typename E::Stored* x, int64_t positions, int64_t channels,
                         const typename E::T* pivot, typename E::T* scratch, double* sum1, double* sum2) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  last_channel_sums<E>(
      positions, channels, scratch, sum1, sum2,
      [&](V* acc, int64_t s, int64_t c) {
        const V d = E::load(x + s * channels + c) - vload<V>(pivot + c);
        acc[0] += d;
        acc[1] += d * d;
      },
      [&](T* s1, T* s2, int64_t s, int64_t c) {
        const T d = E::get(x[s * channels + c]) - pivot[c];
        *s1 += d;
        *s2 += d * d;
      });
}

// y = (x - center) * scale + shift for `positions` positions (per-channel parameters).
template <typename E>
static void last_affine(const typename E::Stored* x, typename E::Stored* y, int64_t positions, int64_t channels,
                        const typename E::T* center, const typename E::T* scale, const typename E::T* shift) {
  for (int64_t s = 0; s < positions; ++s) {
    const typename E::Stored* in = x + s * channels;
    typename E::Stored* out = y + s * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] = E::put((E::get(in[c]) - center[c]) * scale[c] + shift[c]);
  }
}

// Adds sum(dy) and sum(dy * (x - center)) over `positions` positions to sum_dy / sum_dy_xc.
template <typename E>
static void last_grad_sums(const typename E::Stored* dy, const typename E::Stored* x, int64_t positions,
                           int64_t channels, const typename E::T* center, typename E::T* scratch, double* sum_dy,
                           double* sum_dy_xc) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  last_channel_sums<E>(
      positions, channels, scratch, sum_dy, sum_dy_xc,
      [&](V* acc, int64_t s, int64_t c) {
        const V g = E::load(dy + s * channels + c);
        acc[0] += g;
        acc[1] += g * (E::load(x + s * channels + c) - vload<V>(center + c));
      },
      [&](T* s1, T* s2, int64_t s, int64_t c) {
        const T g = E::get(dy[s * channels + c]);
        *s1 += g;
        *s2 += g * (E::get(x[s * channels + c]) - center[c]);
      });
}

// dx = dy * coef_dy + (x - center) * coef_x + coef_const for `positions` positions.
template <typename E>
static void last_grad_input(const typename E::Stored* dy, const typename E::Stored* x, typename E::Stored* dx,
                            int64_t positions, int64_t channels, const typename E::T* coef_dy,
                            const typename E::T* center, const typename E::T* coef_x,
                            const typename E::T* coef_const) {
  for (int64_t s = 0; s < positions; ++s) {
    const typename E::Stored* g = dy + s * channels;
    const typename E::Stored* v = x + s * channels;
    typename E::Stored* out = dx + s * channels;
    for (int64_t c = 0; c < channels; ++c)
      out[c] = E::put(E::get(g[c]) * coef_dy[c] + ((E::get(v[c]) - center[c]) * coef_x[c] + coef_const[c]));
  }
}

// Tokens (rows of one element per channel), in group order. Two walks, by group size: a wide group's
// run of channels is walked with its mean and rstd as scalars (token_group_*: fewer loads per
// element); narrow groups (a ViT's 24 channels) would leave most of each run to scalar loop tails,
// so the whole row is walked at once with per-channel copies of the group values (token_row_*).
// The per-channel sums over tokens add into compute-type (float) accumulators that the caller
// flushes to double every TOKEN_BLOCK tokens, as the channels-last passes do every POSITION_CHUNK
// positions. Pointers are restrict: every output is a buffer of its own.
#define DGN_R __restrict__

// The batch's column sums of d = x - pivot and d^2 (the running statistics' update).
template <typename T>
static inline void add_column_terms(T v, T p, T* DGN_R sum1, T* DGN_R sum2) {
  const T d = v - p;
  *sum1 += d;
  *sum2 += d * d;
}

// y = (x - mean) * rstd * w + b over one group's run; with `sum1`, the column sums in the same pass.
template <typename E>
static void token_group_affine(const typename E::Stored* DGN_R x, typename E::Stored* DGN_R y, int64_t size,
                               typename E::T mean, typename E::T rstd, const typename E::T* DGN_R w,
                               const typename E::T* DGN_R b, const typename E::Stored* DGN_R pivot,
                               typename E::T* DGN_R sum1, typename E::T* DGN_R sum2) {
  if (sum1) {
    for (int64_t c = 0; c < size; ++c) {
      y[c] = E::put((E::get(x[c]) - mean) * (rstd * w[c]) + b[c]);
      add_column_terms(E::get(x[c]), E::get(pivot[c]), sum1 + c, sum2 + c);
    }
  } else {
    for (int64_t c = 0; c < size; ++c) y[c] = E::put((E::get(x[c]) - mean) * (rstd * w[c]) + b[c]);
  }
}

// y = (x - center) * scale + shift over a whole row (per-channel values); with `sum1`, the column sums.
template <typename E>
static void token_row_affine(const typename E::Stored* DGN_R x, typename E::Stored* DGN_R y, int64_t channels,
                             const typename E::T* DGN_R center, const typename E::T* DGN_R scale,
                             const typename E::T* DGN_R shift, const typename E::Stored* DGN_R pivot,
                             typename E::T* DGN_R sum1, typename E::T* DGN_R sum2) {
  if (sum1) {
    for (int64_t c = 0; c < channels; ++c) {
      y[c] = E::put((E::get(x[c]) - center[c]) * scale[c] + shift[c]);
      add_column_terms(E::get(x[c]), E::get(pivot[c]), sum1 + c, sum2 + c);
    }
  } else {
    for (int64_t c = 0; c < channels; ++c) y[c] = E::put((E::get(x[c]) - center[c]) * scale[c] + shift[c]);
  }
}

// sum(w * dy) and sum(w * dy * (x - mean)) over one group's run: the two sums its input gradient
// needs, in one pass.
template <typename E>
static void token_weighted_sums(const typename E::Stored* dy, const typename E::T* w, const typename E::Stored* x,
                                int64_t size, typename E::T mean, double* sum_wdy, double* sum_wdy_xc) {
  typedef typename E::T T;
  typedef typename Vec<T>::V V;
  const V m = vsplat<V>(mean);
  double sums[2];
  reduce_row<T, 2>(
      size, sums,
      [&](V* acc, int64_t i) {
        const V g = E::load(dy + i) * vload<V>(w + i);
        acc[0] += g;
        acc[1] += g * (E::load(x + i) - m);
      },
      [&](double* out, int64_t i) {
        const double g = double(w[i] * E::get(dy[i]));
        out[0] += g;
        out[1] += g * double(E::get(x[i]) - mean);
      });
  *sum_wdy = sums[0];
  *sum_wdy_xc = sums[1];
}

// out[c] = w[c] * dy[c] over a whole row: the weighted gradient whose group sums narrow groups take with
// the row loops (rows_grad_sums), cheaper for runs of a few vectors than token_weighted_sums.
template <typename E>
static void token_weighted(const typename E::Stored* __restrict__ dy, const typename E::T* __restrict__ w,
                           int64_t channels, typename E::T* __restrict__ out) {
  for (int64_t c = 0; c < channels; ++c) out[c] = w[c] * E::get(dy[c]);
}

// Over one group's run: dx = rstd * w * dy + (x - mean) * coef_x + coef_const (when dx is given) and
// the parameter gradients' sums sum_w += dy * (x - mean) * rstd, sum_b += dy (when sum_w is given).
template <typename E>
static void token_group_grad(const typename E::Stored* DGN_R dy, const typename E::Stored* DGN_R x,
                             typename E::Stored* DGN_R dx, int64_t size, typename E::T mean, typename E::T rstd,
                             const typename E::T* DGN_R w, typename E::T coef_x, typename E::T coef_const,
                             typename E::T* DGN_R sum_w, typename E::T* DGN_R sum_b) {
  typedef typename E::T T;
  if (dx && sum_w) {
    for (int64_t c = 0; c < size; ++c) {
      const T g = E::get(dy[c]), xc = E::get(x[c]) - mean;
      dx[c] = E::put(g * (rstd * w[c]) + (xc * coef_x + coef_const));
      sum_w[c] += g * xc * rstd;
      sum_b[c] += g;
    }
  } else if (dx) {
    for (int64_t c = 0; c < size; ++c)
      dx[c] = E::put(E::get(dy[c]) * (rstd * w[c]) + ((E::get(x[c]) - mean) * coef_x + coef_const));
  } else if (sum_w) {
    for (int64_t c = 0; c < size; ++c) {
      const T g = E::get(dy[c]);
      sum_w[c] += g * (E::get(x[c]) - mean) * rstd;
      sum_b[c] += g;
    }
  }
}

// The same over a whole row, with per-channel values: dx = dy * coef_dy + (x - center) * coef_x +
// coef_const, sum_w += dy * (x - center) * rstd, sum_b += dy.
template <typename E>
static void token_row_grad(const typename E::Stored* DGN_R dy, const typename E::Stored* DGN_R x,
                           typename E::Stored* DGN_R dx, int64_t channels, const typename E::T* DGN_R coef_dy,
                           const typename E::T* DGN_R center, const typename E::T* DGN_R coef_x,
                           const typename E::T* DGN_R coef_const, const typename E::T* DGN_R rstd,
                           typename E::T* DGN_R sum_w, typename E::T* DGN_R sum_b) {
  typedef typename E::T T;
  if (dx && sum_w) {
    for (int64_t c = 0; c < channels; ++c) {
      const T g = E::get(dy[c]), xc = E::get(x[c]) - center[c];
      dx[c] = E::put(g * coef_dy[c] + (xc * coef_x[c] + coef_const[c]));
      sum_w[c] += g * xc * rstd[c];
      sum_b[c] += g;
    }
  } else if (dx) {
    for (int64_t c = 0; c < channels; ++c)
      dx[c] = E::put(E::get(dy[c]) * coef_dy[c] + ((E::get(x[c]) - center[c]) * coef_x[c] + coef_const[c]));
  } else if (sum_w) {
    for (int64_t c = 0; c < channels; ++c) {
      const T g = E::get(dy[c]);
      sum_w[c] += g * (E::get(x[c]) - center[c]) * rstd[c];
      sum_b[c] += g;
    }
  }
}
#undef DGN_R

template <typename E>
static Passes<typename E::Stored, typename E::T> passes() {
  return {rows_moments<E>,  rows_affine<E>,  rows_grad_sums<E>,  rows_grad_input<E>, last_pivots<E>,
          last_moments<E>, last_affine<E>, last_grad_sums<E>, last_grad_input<E>, token_group_affine<E>,
          token_row_affine<E>, token_weighted_sums<E>, token_weighted<E>, token_group_grad<E>, token_row_grad<E>};
}

static RowKernels kernels() {
  return RowKernels{passes<Elem<float>>(), passes<Elem<double>>(), passes<Elem<bf16_bits>>(),
                    passes<Elem<f16_bits>>()};
}
