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

// Adds sum(x - pivot) and sum((x - pivot)^2) over `positions` positions to sum1 / sum2 (per channel);
// `scratch` holds 2 * channels compute values.
template <typename E>
static void last_moments(const typename E::Stored* x, int64_t positions, int64_t channels,
                         const typename E::T* pivot, typename E::T* scratch, double* sum1, double* sum2) {
  typedef typename E::T T;
  T* s1 = scratch;
  T* s2 = scratch + channels;
  for (int64_t start = 0; start < positions; start += POSITION_CHUNK) {
    const int64_t end = positions < start + POSITION_CHUNK ? positions : start + POSITION_CHUNK;
    for (int64_t c = 0; c < channels; ++c) s1[c] = s2[c] = T(0);
    for (int64_t s = start; s < end; ++s) {
      const typename E::Stored* row = x + s * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const T d = E::get(row[c]) - pivot[c];
        s1[c] += d;
        s2[c] += d * d;
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      sum1[c] += double(s1[c]);
      sum2[c] += double(s2[c]);
    }
  }
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
  T* s1 = scratch;
  T* s2 = scratch + channels;
  for (int64_t start = 0; start < positions; start += POSITION_CHUNK) {
    const int64_t end = positions < start + POSITION_CHUNK ? positions : start + POSITION_CHUNK;
    for (int64_t c = 0; c < channels; ++c) s1[c] = s2[c] = T(0);
    for (int64_t s = start; s < end; ++s) {
      const typename E::Stored* g = dy + s * channels;
      const typename E::Stored* v = x + s * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const T grad = E::get(g[c]);
        s1[c] += grad;
        s2[c] += grad * (E::get(v[c]) - center[c]);
      }
    }
    for (int64_t c = 0; c < channels; ++c) {
      sum_dy[c] += double(s1[c]);
      sum_dy_xc[c] += double(s2[c]);
    }
  }
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

// Tokens (rows of one element per channel): the parameter gradients' sums of one row, in double,
// per channel: sum_w[c] += dy * (x - center) * rstd, sum_b[c] += dy.
template <typename E>
static void token_param_sums(const typename E::Stored* dy, const typename E::Stored* x, int64_t channels,
                             const typename E::T* center, const typename E::T* rstd, double* sum_w, double* sum_b) {
  for (int64_t c = 0; c < channels; ++c) {
    const double g = double(E::get(dy[c]));
    sum_w[c] += g * double(E::get(x[c]) - center[c]) * double(rstd[c]);
    sum_b[c] += g;
  }
}

// Tokens: out[c] = T(w[c] * dy[c]), the weighted gradient whose group sums the input gradient needs.
template <typename E>
static void token_weighted(const typename E::Stored* dy, const typename E::T* w, int64_t channels,
                           typename E::T* out) {
  for (int64_t c = 0; c < channels; ++c) out[c] = w[c] * E::get(dy[c]);
}

// Tokens: the batch's per-channel sums of d = x - pivot and d^2 over one row, in double.
template <typename E>
static void token_column_sums(const typename E::Stored* x, const typename E::Stored* pivot, int64_t channels,
                              double* sum1, double* sum2) {
  for (int64_t c = 0; c < channels; ++c) {
    const double d = double(E::get(x[c]) - E::get(pivot[c]));
    sum1[c] += d;
    sum2[c] += d * d;
  }
}

template <typename E>
static Passes<typename E::Stored, typename E::T> passes() {
  return {rows_moments<E>,  rows_affine<E>,  rows_grad_sums<E>,  rows_grad_input<E>, last_pivots<E>,
          last_moments<E>, last_affine<E>, last_grad_sums<E>, last_grad_input<E>, token_param_sums<E>,
          token_weighted<E>, token_column_sums<E>};
}

static RowKernels kernels() {
  return RowKernels{passes<Elem<float>>(), passes<Elem<double>>(), passes<Elem<bf16_bits>>(),
                    passes<Elem<f16_bits>>()};
}
