// dgn_plugins._C: the native CPU kernels of Dynamic Group Normalization.
//
// Contiguous (N, C, *) float32 / float64 tensors, one row per (sample,
// channel). Forward: a statistics pass over every row (mean and variance,
// see row_moments), [N, C] -> [N, K] group statistics in double, one apply
// pass y = (x - mean_c) * scale_c + shift_c. Backward: one reduction pass
// (sum dy, sum dy * (x - group mean)), [N, C] / [N, K] math in double, one
// apply pass for dx. GN's memory traffic; rows are split across threads with
// at::parallel_for. The row loops are compiled for AVX-512, AVX2 and the
// baseline and picked at load time from what the CPU supports.

#include <torch/extension.h>

#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>
#include <torch/version.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// The passes over activations of one instruction set and storage type S (computed in T), see
// dgn_rows.h and dgn_passes.h. rows_*: `rows` consecutive NCHW rows of `size` elements, per-row
// parameters. last_*: runs of positions of one sample of a channels-last tensor, per-channel
// parameters; the reductions add into per-channel double sums, with a scratch of 2 * channels.
template <typename S, typename T>
struct Passes {
  void (*rows_moments)(const S*, int64_t, int64_t, double*, double*);
  void (*rows_affine)(const S*, S*, int64_t, int64_t, const T*, const T*, const T*);
  void (*rows_grad_sums)(const S*, const S*, int64_t, int64_t, const T*, double*, double*);
  void (*rows_grad_input)(const S*, const S*, S*, int64_t, int64_t, const T*, const T*, const T*, const T*);
  void (*last_pivots)(const S*, int64_t, int64_t, T*);
  void (*last_moments)(const S*, int64_t, int64_t, const T*, T*, double*, double*);
  void (*last_affine)(const S*, S*, int64_t, int64_t, const T*, const T*, const T*);
  void (*last_grad_sums)(const S*, const S*, int64_t, int64_t, const T*, T*, double*, double*);
  void (*last_grad_input)(const S*, const S*, S*, int64_t, int64_t, const T*, const T*, const T*, const T*);
  void (*token_group_affine)(const S*, S*, int64_t, T, T, const T*, const T*, const S*, T*, T*);
  void (*token_row_affine)(const S*, S*, int64_t, const T*, const T*, const T*, const S*, T*, T*);
  void (*token_weighted_sums)(const S*, const T*, const S*, int64_t, T, double*, double*);
  void (*token_weighted)(const S*, const T*, int64_t, T*);
  void (*token_group_grad)(const S*, const S*, S*, int64_t, T, T, const T*, T, T, T*, T*);
  void (*token_row_grad)(const S*, const S*, S*, int64_t, const T*, const T*, const T*, const T*, const T*, T*, T*);
};

struct RowKernels {
  Passes<float, float> f32;
  Passes<double, double> f64;
  Passes<uint16_t, float> bf16;
  Passes<uint16_t, float> f16;
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DGN_X86_VARIANTS 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,f16c")
namespace dgn_avx512 {
#define DGN_VEC_BYTES 64
#include "dgn_rows.h"
#include "dgn_passes.h"
#undef DGN_VEC_BYTES
}  // namespace dgn_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace dgn_avx2 {
#define DGN_VEC_BYTES 32
#include "dgn_rows.h"
#include "dgn_passes.h"
#undef DGN_VEC_BYTES
}  // namespace dgn_avx2
#pragma GCC pop_options
#endif

namespace dgn_baseline {
#define DGN_VEC_BYTES 16
#include "dgn_rows.h"
#include "dgn_passes.h"
#undef DGN_VEC_BYTES
}  // namespace dgn_baseline

namespace {

std::vector<std::string> supported_isas() {
  std::vector<std::string> isas;
#ifdef DGN_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c"))
    isas.push_back("avx512");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    isas.push_back("avx2");
#endif
  isas.push_back("baseline");
  return isas;
}

RowKernels kernels_for(const std::string& isa) {
#ifdef DGN_X86_VARIANTS
  if (isa == "avx512") return dgn_avx512::kernels();
  if (isa == "avx2") return dgn_avx2::kernels();
#endif
  return dgn_baseline::kernels();
}

std::string g_isa = supported_isas().front();
RowKernels g_kernels = kernels_for(g_isa);

// Use the row loops of `isa` ("" = the best the CPU supports); returns the one in use.
std::string set_isa(const std::string& isa) {
  auto isas = supported_isas();
  std::string chosen = isa.empty() ? isas.front() : isa;
  TORCH_CHECK(std::find(isas.begin(), isas.end(), chosen) != isas.end(), "instruction set '", chosen,
              "' is not supported on this CPU");
  g_isa = chosen;
  g_kernels = kernels_for(chosen);
  return g_isa;
}

// Rows per task: about 32K elements each, at least one row.
int64_t grain_rows(int64_t row_size) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, row_size));
}

// New CPU tensors straight from the allocator: at::empty and at::empty_like go through the dispatcher,
// which costs more than a small layer's arithmetic. Every output made here is written in full.
at::Tensor new_cpu(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::detail::empty_cpu(sizes, dtype, /*pin_memory=*/false, c10::nullopt);
}

// A new tensor with x's sizes, strides and dtype (x is dense: NCHW-contiguous or channels last).
at::Tensor new_cpu_like(const at::Tensor& x) {
  return at::detail::empty_strided_cpu(x.sizes(), x.strides(), x.scalar_type(), /*pin_memory=*/false);
}

// A small ([C], [K], [N, K]) tensor's values as doubles, read directly for the usual dtypes
// (a tensor op costs microseconds, which add up over the layers of a network).
std::vector<double> doubles(const at::Tensor& t) {
  std::vector<double> out(t.numel());
  if (t.device().is_cpu() && t.is_contiguous()) {
    switch (t.scalar_type()) {
      case at::kFloat: std::copy_n(t.data_ptr<float>(), out.size(), out.begin()); return out;
      case at::kDouble: std::copy_n(t.data_ptr<double>(), out.size(), out.begin()); return out;
      case at::kLong: std::copy_n(t.data_ptr<int64_t>(), out.size(), out.begin()); return out;
      case at::kInt: std::copy_n(t.data_ptr<int32_t>(), out.size(), out.begin()); return out;
      default: break;
    }
  }
  at::Tensor d = t.to(at::kDouble).contiguous().cpu();
  std::copy_n(d.data_ptr<double>(), out.size(), out.begin());
  return out;
}

// A [C] tensor of `dtype` holding `values`.
at::Tensor tensor_of(const std::vector<double>& values, at::ScalarType dtype) {
  const int64_t size = int64_t(values.size());
  if (dtype == at::kFloat || dtype == at::kDouble) {
    at::Tensor out = new_cpu({size}, dtype);
    if (dtype == at::kFloat) std::copy_n(values.begin(), size, out.data_ptr<float>());
    else std::copy_n(values.begin(), size, out.data_ptr<double>());
    return out;
  }
  at::Tensor out = new_cpu({size}, at::kDouble);
  std::copy_n(values.begin(), size, out.data_ptr<double>());
  return out.to(dtype);
}

const int64_t* checked_group_ids(const at::Tensor& group_id, int64_t channels, int64_t num_groups) {
  TORCH_CHECK(group_id.scalar_type() == at::kLong && group_id.is_contiguous() && group_id.numel() == channels,
              "group_id must be a contiguous int64 tensor of ", channels, " channels");
  const int64_t* ids = group_id.data_ptr<int64_t>();
  for (int64_t c = 0; c < channels; ++c)
    TORCH_CHECK(ids[c] >= 0 && ids[c] < num_groups, "group_id[", c, "] = ", ids[c], " is outside [0, ", num_groups,
                ")");
  return ids;
}

// The grouping, indexed for the loops: group k is channels members[offsets[k] ..
// offsets[k + 1]) (counting sort); row r = (i, c) belongs to group entry row_group[r] = i * K + ids[c].
// `contiguous`: every group is a run of consecutive channels (GN's grouping is).
struct Members {
  std::vector<int64_t> members, offsets, row_group;
  bool contiguous = true;
  int64_t size(int64_t k) const { return offsets[k + 1] - offsets[k]; }
  int64_t first_member(int64_t k) const { return size(k) > 0 ? members[offsets[k]] : 0; }
  Members(const int64_t* ids, int64_t n, int64_t channels, int64_t num_groups)
      : members(channels), offsets(num_groups + 1, 0), row_group(n * channels) {
    for (int64_t c = 0; c < channels; ++c) ++offsets[ids[c] + 1];
    for (int64_t k = 0; k < num_groups; ++k) offsets[k + 1] += offsets[k];
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int64_t c = 0; c < channels; ++c) members[next[ids[c]]++] = c;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < channels; ++c) row_group[i * channels + c] = i * num_groups + ids[c];
    for (int64_t c = 1; c < channels; ++c)
      if (ids[c] != ids[c - 1] && size(ids[c]) > 0 && members[offsets[ids[c]]] != c) contiguous = false;
  }
};

const double* optional_doubles(const c10::optional<at::Tensor>& t, std::vector<double>& holder) {
  if (!t.has_value() || !t->defined()) return nullptr;
  holder = doubles(*t);
  return holder.data();
}

// How an (N, C, *) tensor is walked: NCHW rows, or per sample a [positions, channels] block.
struct Shape {
  int64_t n, channels, size;  // size: positions per sample and channel
  bool last;                  // channels last
  int64_t rows() const { return n * channels; }
};

// The passes of the instruction set in use for storage S.
template <typename S, typename T> const Passes<S, T>& passes_for(at::ScalarType dtype);
template <> const Passes<float, float>& passes_for(at::ScalarType) { return g_kernels.f32; }
template <> const Passes<double, double>& passes_for(at::ScalarType) { return g_kernels.f64; }
template <> const Passes<uint16_t, float>& passes_for(at::ScalarType dtype) {
  return dtype == at::kBFloat16 ? g_kernels.bf16 : g_kernels.f16;
}

// How NCHW tensors are walked: "rows" (every row's statistics, then every row's output: each pass
// streams the whole tensor), "groups" (when every group is a run of consecutive channels: one
// group's rows at a time, the second pass reading them from cache, as GN does) or "auto" (the
// default; see group_walk). Tests and benchmarks pick one.
std::string g_nchw_walk = "auto";
// Whether (N, C) rows of one element per channel take the token walk (tests compare it with the generic one).
bool g_token_walk = true;

std::string set_nchw_walk(const std::string& walk) {
  TORCH_CHECK(walk == "auto" || walk == "rows" || walk == "groups", "NCHW walk must be 'auto', 'rows' or 'groups', got '",
              walk, "'");
  g_nchw_walk = walk;
  return g_nchw_walk;
}

// Whether an NCHW pass goes group by group (see g_nchw_walk): in "auto", for groups of consecutive
// channels stored in float32 or float64, where it was faster than the row walk at every row length
// in bench/bench_walk.py (by 0.02-0.13x GN's time); in bfloat16/float16 the row walk was as fast or
// faster. Shuffled groups are walked by rows: their rows, fetched one by one from scattered places,
// were slower than one stream (bench/RESULTS.md).
// The group walk's work items are the N * K groups: with fewer than there are threads (one sample,
// one group) "auto" keeps the row walk, whose rows spread over every thread.
bool group_walk(const Shape& shape, size_t element_bytes, const Members& groups) {
  if (shape.last || !groups.contiguous || g_nchw_walk == "rows") return false;
  if (g_nchw_walk == "groups") return true;
  const int64_t entries = shape.n * int64_t(groups.offsets.size() - 1);
  return element_bytes >= 4 && entries >= at::get_num_threads();
}

// Channels last: runs of positions of one sample, about RUN_ELEMENTS elements each (work items). Each
// run of a reduction keeps 2 * channels double sums, combined afterwards in a fixed order (the same
// result whatever the number of threads): runs much shorter than this spend a noticeable share of
// the pass writing and re-reading those sums (GRAIN_SIZE runs cost 1.1-1.2x GN at 512 channels).
constexpr int64_t RUN_ELEMENTS = int64_t(1) << 18;
struct PositionRuns {
  int64_t per_run, per_sample;
  explicit PositionRuns(const Shape& shape)
      : per_run(std::max<int64_t>(1, RUN_ELEMENTS / std::max<int64_t>(1, shape.channels))),
        per_sample((shape.size + per_run - 1) / per_run) {}
  int64_t count(const Shape& shape) const { return shape.n * per_sample; }
  int64_t sample(int64_t run) const { return run / per_sample; }
  int64_t first(int64_t run) const { return (run % per_sample) * per_run; }
  int64_t length(int64_t run, const Shape& shape) const { return std::min(per_run, shape.size - first(run)); }
};

// Per-(sample, channel) mean and variance, [N * C], in double: the statistics pass.
template <typename S, typename T>
void moments(const Passes<S, T>& p, const S* x, const Shape& shape, double* mean, double* var) {
  if (!shape.last) {
    at::parallel_for(0, shape.rows(), grain_rows(shape.size), [&](int64_t begin, int64_t end) {
      p.rows_moments(x + begin * shape.size, shape.size, end - begin, mean + begin, var + begin);
    });
    return;
  }
  const int64_t channels = shape.channels, sample_size = shape.size * channels;
  std::vector<T> pivot(shape.n * channels);
  for (int64_t i = 0; i < shape.n; ++i) p.last_pivots(x + i * sample_size, shape.size, channels, &pivot[i * channels]);
  // Each run adds into its own sums; they are combined in a fixed order afterwards (same result
  // whatever the number of threads).
  const PositionRuns runs(shape);
  std::vector<double> sum1(runs.count(shape) * channels, 0.0), sum2(sum1.size(), 0.0);
  at::parallel_for(0, runs.count(shape), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(2 * channels);
    for (int64_t run = begin; run < end; ++run) {
      const int64_t i = runs.sample(run);
      p.last_moments(x + i * sample_size + runs.first(run) * channels, runs.length(run, shape), channels,
                     &pivot[i * channels], scratch.data(), &sum1[run * channels], &sum2[run * channels]);
    }
  });
  const double inv = 1.0 / double(shape.size);
  for (int64_t i = 0; i < shape.n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t run = i * runs.per_sample; run < (i + 1) * runs.per_sample; ++run) {
        s1 += sum1[run * channels + c];
        s2 += sum2[run * channels + c];
      }
      const double shift = s1 * inv, v = s2 * inv - shift * shift;
      mean[i * channels + c] = double(pivot[i * channels + c]) + shift;
      var[i * channels + c] = v > 0.0 ? v : 0.0;
    }
}

// out = (in - center) * scale + shift per (sample, channel): the apply pass.
template <typename S, typename T>
void affine(const Passes<S, T>& p, const S* x, S* y, const Shape& shape, const T* center, const T* scale,
            const T* shift) {
  if (!shape.last) {
    at::parallel_for(0, shape.rows(), grain_rows(shape.size), [&](int64_t begin, int64_t end) {
      p.rows_affine(x + begin * shape.size, y + begin * shape.size, shape.size, end - begin, center + begin,
                    scale + begin, shift + begin);
    });
    return;
  }
  const PositionRuns runs(shape);
  at::parallel_for(0, runs.count(shape), 1, [&](int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end; ++run) {
      const int64_t i = runs.sample(run), c = i * shape.channels;
      const int64_t offset = (i * shape.size + runs.first(run)) * shape.channels;
      p.last_affine(x + offset, y + offset, runs.length(run, shape), shape.channels, center + c, scale + c,
                    shift + c);
    }
  });
}

// sum(dy) and sum(dy * (x - center)) per (sample, channel): the backward's reduction pass.
template <typename S, typename T>
void grad_sums(const Passes<S, T>& p, const S* dy, const S* x, const Shape& shape, const T* center, double* sum_dy,
               double* sum_dy_xc) {
  if (!shape.last) {
    at::parallel_for(0, shape.rows(), grain_rows(shape.size), [&](int64_t begin, int64_t end) {
      p.rows_grad_sums(dy + begin * shape.size, x + begin * shape.size, shape.size, end - begin, center + begin,
                       sum_dy + begin, sum_dy_xc + begin);
    });
    return;
  }
  const int64_t channels = shape.channels;
  const PositionRuns runs(shape);
  std::vector<double> sum1(runs.count(shape) * channels, 0.0), sum2(sum1.size(), 0.0);
  at::parallel_for(0, runs.count(shape), 1, [&](int64_t begin, int64_t end) {
    std::vector<T> scratch(2 * channels);
    for (int64_t run = begin; run < end; ++run) {
      const int64_t i = runs.sample(run), offset = (i * shape.size + runs.first(run)) * channels;
      p.last_grad_sums(dy + offset, x + offset, runs.length(run, shape), channels, center + i * channels,
                       scratch.data(), &sum1[run * channels], &sum2[run * channels]);
    }
  });
  for (int64_t i = 0; i < shape.n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t run = i * runs.per_sample; run < (i + 1) * runs.per_sample; ++run) {
        s1 += sum1[run * channels + c];
        s2 += sum2[run * channels + c];
      }
      sum_dy[i * channels + c] = s1;
      sum_dy_xc[i * channels + c] = s2;
    }
}

// dx = dy * a + (x - center) * b + d per (sample, channel): the backward's apply pass.
template <typename S, typename T>
void grad_input(const Passes<S, T>& p, const S* dy, const S* x, S* dx, const Shape& shape, const T* a,
                const T* center, const T* b, const T* d) {
  if (!shape.last) {
    at::parallel_for(0, shape.rows(), grain_rows(shape.size), [&](int64_t begin, int64_t end) {
      const int64_t offset = begin * shape.size;
      p.rows_grad_input(dy + offset, x + offset, dx + offset, shape.size, end - begin, a + begin, center + begin,
                        b + begin, d + begin);
    });
    return;
  }
  const PositionRuns runs(shape);
  at::parallel_for(0, runs.count(shape), 1, [&](int64_t begin, int64_t end) {
    for (int64_t run = begin; run < end; ++run) {
      const int64_t i = runs.sample(run), c = i * shape.channels;
      const int64_t offset = (i * shape.size + runs.first(run)) * shape.channels;
      p.last_grad_input(dy + offset, x + offset, dx + offset, runs.length(run, shape), shape.channels, a + c,
                        center + c, b + c, d + c);
    }
  });
}

// Storage pointer of a tensor: half types as their 16-bit patterns.
template <typename S> S* storage(const at::Tensor& t) {
  if constexpr (std::is_same<S, uint16_t>::value) return reinterpret_cast<uint16_t*>(t.data_ptr());
  else return t.data_ptr<S>();
}

// What a forward returns besides y and the group statistics: the [N, C] per-sample channel
// statistics (channel_stats; else [0, C]), and for a training step of the token walk the batch's
// [1, C] channel mean and variance (batch_stats), appended as outputs 5 and 6.
struct ForwardOptions {
  bool channel_stats = true;
  bool batch_stats = false;
};

// ----------------------------------------------------------------------------------------------
// Tokens: (N, C) rows of one element per channel (a transformer's tokens, per token). The generic
// walk would treat every element as a row of its own; here one token is one sample, walked in
// group order: gathered into a buffer when the groups are not the channels in order (after a
// regroup), each group's run reduced by the row loops, then one per-channel affine pass (and the
// output scattered back). float32 / float64 storage (computed in itself); half types take the
// generic walk.

// A token's channels in group order: `row` itself when the grouping keeps the channels in order,
// else gathered into `buffer`.
template <typename S>
const S* in_group_order(const S* row, const Members& groups, bool in_order, S* buffer) {
  if (in_order) return row;
  const int64_t channels = int64_t(groups.members.size());
  for (int64_t j = 0; j < channels; ++j) buffer[j] = row[groups.members[j]];
  return buffer;
}

template <typename S>
void scatter_from_group_order(const S* buffer, const Members& groups, S* row) {
  const int64_t channels = int64_t(groups.members.size());
  for (int64_t j = 0; j < channels; ++j) row[groups.members[j]] = buffer[j];
}

bool channels_in_order(const Members& groups) {
  for (size_t j = 0; j < groups.members.size(); ++j)
    if (groups.members[j] != int64_t(j)) return false;
  return true;
}

// A per-channel parameter (or 1 / 0 without it) in group order, as T.
template <typename T>
std::vector<T> in_group_order(const double* values, const Members& groups, double otherwise) {
  std::vector<T> out(groups.members.size());
  for (size_t j = 0; j < out.size(); ++j) out[j] = T(values ? values[groups.members[j]] : otherwise);
  return out;
}

constexpr int64_t TOKEN_BLOCK = 64;  // tokens per work item: the sums of a block are combined in order

// Whether a token's groups are walked one run at a time (token_group_*) or the row at once
// (token_row_*; see dgn_passes.h): by the mean group size, in vectors of 16 floats.
constexpr int64_t WIDE_GROUP = 64;
bool wide_groups(int64_t channels, int64_t num_groups) { return channels >= WIDE_GROUP * num_groups; }

template <typename S, typename T>
std::vector<at::Tensor> forward_tokens(const at::Tensor& x, const Shape& shape, const c10::optional<at::Tensor>& weight,
                                       const c10::optional<at::Tensor>& bias, const int64_t* ids, const double* count,
                                       int64_t num_groups, double eps, const ForwardOptions& options) {
  const Passes<S, T>& p = passes_for<S, T>(x.scalar_type());
  const int64_t n = shape.n, channels = shape.channels;
  const Members groups(ids, 1, channels, num_groups);
  const bool in_order = channels_in_order(groups);
  std::vector<double> w_holder, b_holder;
  const std::vector<T> w = in_group_order<T>(optional_doubles(weight, w_holder), groups, 1.0);
  const std::vector<T> b = in_group_order<T>(optional_doubles(bias, b_holder), groups, 0.0);
  const at::ScalarType stats_dtype = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  const auto stats = x.options().dtype(stats_dtype);
  at::Tensor y = new_cpu_like(x);
  // A token's per-channel statistics are its values and zero: made only when asked for.
  at::Tensor channel_mean, channel_var;
  if (options.channel_stats) {
    channel_mean = x.reshape({n, channels}).to(stats.dtype().toScalarType(), false, /*copy=*/true);
    channel_var = at::zeros({n, channels}, stats);
  } else {
    channel_mean = new_cpu({0, channels}, stats_dtype);
    channel_var = new_cpu({0, channels}, stats_dtype);
  }
  at::Tensor group_mean = new_cpu({n, num_groups}, stats_dtype), group_rstd = new_cpu({n, num_groups}, stats_dtype);
  const S* xs = storage<S>(x);
  S* ys = storage<S>(y);
  T* gm = group_mean.data_ptr<T>();
  T* gr = group_rstd.data_ptr<T>();
  // The batch's channel statistics (the running statistics' update) in the output pass: sums about the
  // first token (in group order), in T within a block of tokens, then per block in double (group
  // order), combined in block order.
  const int64_t blocks = (n + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
  std::vector<double> column(options.batch_stats ? blocks * 2 * channels : 0, 0.0);
  std::vector<S> pivot_buffer(in_order ? 0 : channels);
  const bool wide = wide_groups(channels, num_groups);
  const S* pivot = in_group_order(xs, groups, in_order, pivot_buffer.data());
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<S> gathered(in_order ? 0 : channels), out(in_order ? 0 : channels);
    std::vector<T> block_column(options.batch_stats ? 2 * channels : 0);
    std::vector<T> center(wide ? 0 : channels), scale(center.size());
    for (int64_t block = block_begin; block < block_end; ++block) {
      std::fill(block_column.begin(), block_column.end(), T(0));
      for (int64_t i = block * TOKEN_BLOCK; i < std::min(n, (block + 1) * TOKEN_BLOCK); ++i) {
        const S* src = in_group_order(xs + i * channels, groups, in_order, gathered.data());
        S* dst = in_order ? ys + i * channels : out.data();
        for (int64_t k = 0; k < num_groups; ++k) {
          const int64_t first = groups.offsets[k], len = groups.size(k);
          double mean = 0.0, var = 0.0;
          if (len > 0) p.rows_moments(src + first, len, 1, &mean, &var);
          const double rstd = 1.0 / std::sqrt(var + eps);
          gm[i * num_groups + k] = T(mean);
          gr[i * num_groups + k] = T(rstd);
          if (wide) {
            T* sum1 = options.batch_stats ? block_column.data() + first : nullptr;
            p.token_group_affine(src + first, dst + first, len, T(mean), T(rstd), w.data() + first,
                                 b.data() + first, pivot + first, sum1, sum1 ? sum1 + channels : nullptr);
          } else {
            for (int64_t j = first; j < first + len; ++j) {
              center[j] = T(mean);
              scale[j] = T(rstd) * w[j];
            }
          }
        }
        if (!wide) {
          T* sum1 = options.batch_stats ? block_column.data() : nullptr;
          p.token_row_affine(src, dst, channels, center.data(), scale.data(), b.data(), pivot, sum1,
                             sum1 ? sum1 + channels : nullptr);
        }
        if (!in_order) scatter_from_group_order(out.data(), groups, ys + i * channels);
      }
      for (size_t j = 0; j < block_column.size(); ++j) column[block * 2 * channels + j] = double(block_column[j]);
    }
  });
  std::vector<at::Tensor> outs = {y, channel_mean, channel_var, group_mean, group_rstd};
  if (options.batch_stats) {  // [1, C] mean and total variance of the batch
    at::Tensor batch_mean = new_cpu({1, channels}, stats_dtype), batch_var = new_cpu({1, channels}, stats_dtype);
    T* bm = batch_mean.data_ptr<T>();
    T* bv = batch_var.data_ptr<T>();
    for (int64_t j = 0; j < channels; ++j) {  // group order j, channel c
      double s1 = 0.0, s2 = 0.0;
      for (int64_t block = 0; block < blocks; ++block) {
        s1 += column[block * 2 * channels + j];
        s2 += column[block * 2 * channels + channels + j];
      }
      const int64_t c = groups.members[j];
      const double shift = s1 / double(n), v = s2 / double(n) - shift * shift;
      bm[c] = T(double(xs[c]) + shift);
      bv[c] = T(v > 0.0 ? v : 0.0);
    }
    outs.push_back(batch_mean);
    outs.push_back(batch_var);
  }
  return outs;
}

template <typename S, typename T>
std::vector<at::Tensor> backward_tokens(const at::Tensor& dy, const at::Tensor& x, const Shape& shape,
                                        const c10::optional<at::Tensor>& weight, const at::Tensor& group_mean,
                                        const at::Tensor& group_rstd, const int64_t* ids, int64_t num_groups,
                                        bool needs_dx, bool needs_dweight, bool needs_dbias) {
  const Passes<S, T>& p = passes_for<S, T>(x.scalar_type());
  const int64_t n = shape.n, channels = shape.channels;
  const Members groups(ids, 1, channels, num_groups);
  const bool in_order = channels_in_order(groups);
  std::vector<double> w_holder;
  const double* wp = optional_doubles(weight, w_holder);
  const std::vector<T> w = in_group_order<T>(wp, groups, 1.0);
  const std::vector<double> gm = doubles(group_mean), gr = doubles(group_rstd);
  at::Tensor dx;
  if (needs_dx) dx = new_cpu_like(x);
  const bool needs_params = needs_dweight || needs_dbias;
  const bool wide = wide_groups(channels, num_groups);
  const int64_t blocks = (n + TOKEN_BLOCK - 1) / TOKEN_BLOCK;
  std::vector<double> sums(needs_params ? blocks * 2 * channels : 0, 0.0);  // per block: sum_w, then sum_b
  const S* dys = storage<S>(dy);
  const S* xs = storage<S>(x);
  S* dxs = needs_dx ? storage<S>(dx) : nullptr;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<S> gathered_x(in_order ? 0 : channels), gathered_dy(gathered_x.size()), out(gathered_x.size());
    std::vector<T> block_sums(needs_params ? 2 * channels : 0);  // sum_w, then sum_b, in T within the block
    std::vector<T> center(wide ? 0 : channels), rstd(center.size()), coef_dy(center.size()), coef_x(center.size()),
        coef_const(center.size()), wdy(needs_dx ? center.size() : 0);
    for (int64_t block = begin; block < end; ++block) {
      std::fill(block_sums.begin(), block_sums.end(), T(0));
      for (int64_t i = block * TOKEN_BLOCK; i < std::min(n, (block + 1) * TOKEN_BLOCK); ++i) {
        const S* x_row = in_group_order(xs + i * channels, groups, in_order, gathered_x.data());
        const S* dy_row = in_group_order(dys + i * channels, groups, in_order, gathered_dy.data());
        S* dst = needs_dx ? (in_order ? dxs + i * channels : out.data()) : nullptr;
        if (!wide && needs_dx) p.token_weighted(dy_row, w.data(), channels, wdy.data());
        for (int64_t k = 0; k < num_groups; ++k) {
          const int64_t first = groups.offsets[k], len = groups.size(k);
          if (len == 0) continue;
          const double r = gr[i * num_groups + k];
          const T m = T(gm[i * num_groups + k]);
          T cx = T(0), cc = T(0);
          if (needs_dx) {
            // dx = r w dy - r mean_k(w dy) - r^2 (x - mean) mean_k(w dy (x - mean))
            double sum_wdy = 0.0, sum_wdy_xc = 0.0;
            if (wide) {
              p.token_weighted_sums(dy_row + first, w.data() + first, x_row + first, len, m, &sum_wdy, &sum_wdy_xc);
            } else {
              p.rows_grad_sums(reinterpret_cast<const S*>(wdy.data() + first), x_row + first, len, 1, &m, &sum_wdy,
                               &sum_wdy_xc);
            }
            // x_hat = (x - mean) r, so mean_k(w dy x_hat) = r sum_wdy_xc / |k|
            cx = T(-r * r * r * sum_wdy_xc / double(len));
            cc = T(-r * sum_wdy / double(len));
          }
          if (wide) {
            T* sum_w = needs_params ? block_sums.data() + first : nullptr;
            p.token_group_grad(dy_row + first, x_row + first, dst ? dst + first : nullptr, len, m, T(r),
                               w.data() + first, cx, cc, sum_w, sum_w ? sum_w + channels : nullptr);
          } else {
            for (int64_t j = first; j < first + len; ++j) {
              center[j] = m;
              rstd[j] = T(r);
              coef_dy[j] = T(r) * w[j];
              coef_x[j] = cx;
              coef_const[j] = cc;
            }
          }
        }
        if (!wide) {
          T* sum_w = needs_params ? block_sums.data() : nullptr;
          p.token_row_grad(dy_row, x_row, dst, channels, coef_dy.data(), center.data(), coef_x.data(),
                           coef_const.data(), rstd.data(), sum_w, sum_w ? sum_w + channels : nullptr);
        }
        if (needs_dx && !in_order) scatter_from_group_order(out.data(), groups, dxs + i * channels);
      }
      for (size_t j = 0; j < block_sums.size(); ++j) sums[block * 2 * channels + j] = double(block_sums[j]);
    }
  });
  std::vector<at::Tensor> result(3);
  result[0] = dx;
  if (needs_params) {
    std::vector<double> dw(channels, 0.0), db(channels, 0.0);
    for (int64_t block = 0; block < blocks; ++block)
      for (int64_t j = 0; j < channels; ++j) {
        dw[groups.members[j]] += sums[block * 2 * channels + j];
        db[groups.members[j]] += sums[block * 2 * channels + channels + j];
      }
    const auto param_dtype = wp ? weight->scalar_type() : dy.scalar_type();
    if (needs_dweight) result[1] = tensor_of(dw, param_dtype);
    if (needs_dbias) result[2] = tensor_of(db, param_dtype);
  }
  return result;
}

// Rows of one element per channel in float32 / float64: the token walk.
bool token_walk(const Shape& shape, at::ScalarType dtype) {
  return shape.size == 1 && !shape.last && (dtype == at::kFloat || dtype == at::kDouble) && g_token_walk;
}

template <typename S, typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const Shape& shape, const c10::optional<at::Tensor>& weight,
                                     const c10::optional<at::Tensor>& bias, const int64_t* ids, const double* count,
                                     int64_t num_groups, double eps, const ForwardOptions& options) {
  if constexpr (std::is_same<S, T>::value) {
    if (token_walk(shape, x.scalar_type()))
      return forward_tokens<S, T>(x, shape, weight, bias, ids, count, num_groups, eps, options);
  }
  const Passes<S, T>& p = passes_for<S, T>(x.scalar_type());
  const int64_t n = shape.n, channels = shape.channels, rows = shape.rows();
  const Members groups(ids, n, channels, num_groups);
  std::vector<double> w_holder, b_holder;
  const double* wp = optional_doubles(weight, w_holder);
  const double* bp = optional_doubles(bias, b_holder);

  const at::ScalarType stats_dtype = std::is_same<T, double>::value ? at::kDouble : at::kFloat;
  at::Tensor y = new_cpu_like(x);  // keeps the memory format
  at::Tensor channel_mean = new_cpu({n, channels}, stats_dtype), channel_var = new_cpu({n, channels}, stats_dtype);
  at::Tensor group_mean_t = new_cpu({n, num_groups}, stats_dtype), group_rstd_t = new_cpu({n, num_groups}, stats_dtype);
  T* cm = channel_mean.data_ptr<T>();
  T* cv = channel_var.data_ptr<T>();
  T* gm_out = group_mean_t.data_ptr<T>();
  T* rstd_out = group_rstd_t.data_ptr<T>();
  std::vector<double> mean(rows), var(rows), group_mean(n * num_groups), group_rstd(n * num_groups);
  std::vector<T> scale(rows), shift(rows);

  // Group mean = mean of its channel means; variance = mean of (var_c + (mean_c - group mean)^2).
  auto group_statistics = [&](int64_t i, int64_t k) {
    const int64_t* first = groups.members.data() + groups.offsets[k];
    const int64_t* last = groups.members.data() + groups.offsets[k + 1];
    const double* m = mean.data() + i * channels;
    const double* v = var.data() + i * channels;
    double sum = 0.0, spread = 0.0;
    for (const int64_t* c = first; c < last; ++c) sum += m[*c];
    const double gm = sum / count[k];
    for (const int64_t* c = first; c < last; ++c) spread += v[*c] + (m[*c] - gm) * (m[*c] - gm);
    const double rstd = 1.0 / std::sqrt(spread / count[k] + eps);
    group_mean[i * num_groups + k] = gm;
    group_rstd[i * num_groups + k] = rstd;
    gm_out[i * num_groups + k] = T(gm);
    rstd_out[i * num_groups + k] = T(rstd);
  };
  // y = (x - m_c) * scale + shift with m_c the channel mean in T (x - m_c is exact
  // when they are close), scale = rstd * w, shift = (m_c - group mean) * scale + b.
  auto row_parameters = [&](int64_t r, int64_t c) {
    const int64_t g = groups.row_group[r];
    cm[r] = T(mean[r]);
    cv[r] = T(var[r]);
    double a = group_rstd[g];
    if (wp) a *= wp[c];
    double b = (double(cm[r]) - group_mean[g]) * a;
    if (bp) b += bp[c];
    scale[r] = T(a);
    shift[r] = T(b);
  };

  if (group_walk(shape, sizeof(S), groups)) {
    // One group at a time: its rows' statistics, then its rows' output while they are in cache.
    const S* xs = storage<S>(x);
    S* ys = storage<S>(y);
    const int64_t size = shape.size;
    at::parallel_for(0, n * num_groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t entry = begin; entry < end; ++entry) {
        const int64_t i = entry / num_groups, k = entry % num_groups;
        const int64_t first = i * channels + groups.first_member(k), len = groups.size(k);
        if (len > 0) p.rows_moments(xs + first * size, size, len, &mean[first], &var[first]);
        group_statistics(i, k);
        for (int64_t r = first; r < first + len; ++r) row_parameters(r, r - i * channels);
        if (len > 0) p.rows_affine(xs + first * size, ys + first * size, size, len, &cm[first], &scale[first], &shift[first]);
      }
    });
    return {y, channel_mean, channel_var, group_mean_t, group_rstd_t};
  }

  moments(p, storage<S>(x), shape, mean.data(), var.data());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < num_groups; ++k) group_statistics(i, k);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) row_parameters(i * channels + c, c);
  affine(p, storage<S>(x), storage<S>(y), shape, cm, scale.data(), shift.data());
  return {y, channel_mean, channel_var, group_mean_t, group_rstd_t};
}

template <typename S, typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dy, const at::Tensor& x, const Shape& shape,
                                      const c10::optional<at::Tensor>& weight, const at::Tensor& group_mean,
                                      const at::Tensor& group_rstd, const int64_t* ids, const double* count,
                                      int64_t num_groups, bool needs_dx, bool needs_dweight, bool needs_dbias) {
  if constexpr (std::is_same<S, T>::value) {
    if (token_walk(shape, x.scalar_type()))
      return backward_tokens<S, T>(dy, x, shape, weight, group_mean, group_rstd, ids, num_groups, needs_dx,
                                   needs_dweight, needs_dbias);
  }
  const Passes<S, T>& p = passes_for<S, T>(x.scalar_type());
  const int64_t n = shape.n, channels = shape.channels, rows = shape.rows(), size = shape.size;
  const Members groups(ids, n, channels, num_groups);
  std::vector<double> w_holder;
  const double* wp = optional_doubles(weight, w_holder);
  const std::vector<double> group_mean_d = doubles(group_mean);
  const std::vector<double> rstd = doubles(group_rstd);
  // The saved mean as the forward rounded it: x_hat = (x - gm) * rstd.
  std::vector<T> center(rows);
  for (int64_t r = 0; r < rows; ++r) center[r] = T(group_mean_d[groups.row_group[r]]);
  std::vector<double> sum_dy(rows), sum_dy_xhat(rows);
  at::Tensor dx;
  if (needs_dx) dx = new_cpu_like(x);
  std::vector<T> row_dy(needs_dx ? rows : 0), row_x(row_dy.size()), row_const(row_dy.size());
  // dx = r w dy - r mean_k(w dy) - r^2 (x - mean) mean_k(w dy x_hat), means over the group's |k| * size
  // elements: the per-row coefficients of group k of sample i, from its rows' sums.
  auto group_coefficients = [&](int64_t i, int64_t k) {
    double wdy = 0.0, wdy_xhat = 0.0;
    for (int64_t j = groups.offsets[k]; j < groups.offsets[k + 1]; ++j) {
      const int64_t c = groups.members[j], r = i * channels + c;
      const double wc = wp ? wp[c] : 1.0;
      wdy += sum_dy[r] * wc;
      wdy_xhat += sum_dy_xhat[r] * wc;
    }
    const int64_t g = i * num_groups + k;
    const double elements = count[k] * double(size);
    const T coef_x = T(-rstd[g] * rstd[g] * (wdy_xhat / elements));
    const T coef_const = T(-rstd[g] * (wdy / elements));
    for (int64_t j = groups.offsets[k]; j < groups.offsets[k + 1]; ++j) {
      const int64_t c = groups.members[j], r = i * channels + c;
      row_dy[r] = T(wp ? rstd[g] * wp[c] : rstd[g]);
      row_x[r] = coef_x;
      row_const[r] = coef_const;
    }
  };

  if (needs_dx && group_walk(shape, sizeof(S), groups)) {
    // One group at a time: its rows' sums, then its rows' dx while dy and x are in cache.
    const S* dys = storage<S>(dy);
    const S* xs = storage<S>(x);
    S* dxs = storage<S>(dx);
    at::parallel_for(0, n * num_groups, 1, [&](int64_t begin, int64_t end) {
      for (int64_t entry = begin; entry < end; ++entry) {
        const int64_t i = entry / num_groups, k = entry % num_groups;
        const int64_t first = i * channels + groups.first_member(k), len = groups.size(k);
        if (len == 0) continue;
        p.rows_grad_sums(dys + first * size, xs + first * size, size, len, &center[first], &sum_dy[first],
                         &sum_dy_xhat[first]);
        for (int64_t r = first; r < first + len; ++r) sum_dy_xhat[r] *= rstd[entry];  // now sum(dy * x_hat)
        group_coefficients(i, k);
        p.rows_grad_input(dys + first * size, xs + first * size, dxs + first * size, size, len, &row_dy[first],
                          &center[first], &row_x[first], &row_const[first]);
      }
    });
  } else {
    grad_sums(p, storage<S>(dy), storage<S>(x), shape, center.data(), sum_dy.data(), sum_dy_xhat.data());
    for (int64_t r = 0; r < rows; ++r) sum_dy_xhat[r] *= rstd[groups.row_group[r]];  // now sum(dy * x_hat)
    if (needs_dx) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t k = 0; k < num_groups; ++k) group_coefficients(i, k);
      grad_input(p, storage<S>(dy), storage<S>(x), storage<S>(dx), shape, row_dy.data(), center.data(),
                 row_x.data(), row_const.data());
    }
  }

  std::vector<at::Tensor> out(3);
  out[0] = dx;
  if (needs_dweight || needs_dbias) {
    std::vector<double> dw(channels, 0.0), db(channels, 0.0);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < channels; ++c) {
        dw[c] += sum_dy_xhat[i * channels + c];
        db[c] += sum_dy[i * channels + c];
      }
    const auto param_dtype = wp ? weight->scalar_type() : dy.scalar_type();
    if (needs_dweight) out[1] = tensor_of(dw, param_dtype);
    if (needs_dbias) out[2] = tensor_of(db, param_dtype);
  }
  return out;
}

// How the kernels walk `x`, or nullopt when it must be made NCHW-contiguous first.
// Whether (N, C, *) is stored as (N, *, C): each sample's positions one after the other, each a run of
// its channels. Channels-last 2d / 3d tensors are; so are a transformer's (B, L, C) tokens viewed as
// (B, C, L) (the token layer's sequence domain).
bool channels_last_strides(const at::Tensor& x) {
  if (x.dim() < 3 || x.stride(1) != 1) return false;
  int64_t expected = x.size(1);
  for (int64_t d = x.dim() - 1; d >= 2; --d) {
    if (x.size(d) != 1 && x.stride(d) != expected) return false;
    expected *= x.size(d);
  }
  return x.size(0) == 1 || x.stride(0) == expected;
}

c10::optional<Shape> walk(const at::Tensor& x) {
  const int64_t n = x.size(0), channels = x.size(1), size = n * channels > 0 ? x.numel() / (n * channels) : 0;
  if (x.is_contiguous()) return Shape{n, channels, size, false};
  if (channels_last_strides(x)) return Shape{n, channels, size, true};
  return c10::nullopt;
}

// `t` (x's shape and dtype) laid out as `x` is walked: NCHW-contiguous, or x's channels-last strides.
at::Tensor laid_out_like(const at::Tensor& t, const at::Tensor& x) {
  if (!walk(x)->last) return t.contiguous();
  if (t.strides() == x.strides()) return t;
  at::Tensor out = new_cpu_like(x);  // dense: x's strides
  out.copy_(t);
  return out;
}

bool native_dtype(const at::Tensor& x) {
  const auto t = x.scalar_type();
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

#define DGN_DISPATCH_STORAGE(dtype, CALL)                                              \
  switch (dtype) {                                                                      \
    case at::kDouble: { using S = double; using T = double; return CALL; }              \
    case at::kBFloat16: case at::kHalf: { using S = uint16_t; using T = float; return CALL; } \
    default: { using S = float; using T = float; return CALL; }                         \
  }

// (y, channel_mean [N, C], channel_var [N, C], group_mean [N, K], group_rstd [N, K]).
std::vector<at::Tensor> forward_kernels(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                        const c10::optional<at::Tensor>& bias, const at::Tensor& group_id,
                                        const at::Tensor& group_count, int64_t num_groups, double eps,
                                        const ForwardOptions& options) {
  const int64_t* ids = checked_group_ids(group_id, x.size(1), num_groups);
  const std::vector<double> count = doubles(group_count);
  TORCH_CHECK(int64_t(count.size()) == num_groups, "group_count must have ", num_groups, " entries");
  const Shape shape = *walk(x);
  DGN_DISPATCH_STORAGE(x.scalar_type(), (forward_impl<S, T>(x, shape, weight, bias, ids, count.data(), num_groups,
                                                             eps, options)))
}

// (dx or undefined, dweight or undefined, dbias or undefined); dy and x walked alike.
std::vector<at::Tensor> backward_kernels(const at::Tensor& dy, const at::Tensor& x,
                                         const c10::optional<at::Tensor>& weight, const at::Tensor& group_mean,
                                         const at::Tensor& group_rstd, const at::Tensor& group_id,
                                         const at::Tensor& group_count, int64_t num_groups, bool needs_dx,
                                         bool needs_dweight, bool needs_dbias) {
  TORCH_CHECK(group_mean.numel() == x.size(0) * num_groups && group_rstd.numel() == x.size(0) * num_groups,
              "group statistics must be [N, K]");
  const int64_t* ids = checked_group_ids(group_id, x.size(1), num_groups);
  const std::vector<double> count = doubles(group_count);
  TORCH_CHECK(int64_t(count.size()) == num_groups, "group_count must have ", num_groups, " entries");
  const Shape shape = *walk(x);
  DGN_DISPATCH_STORAGE(x.scalar_type(), (backward_impl<S, T>(dy, x, shape, weight, group_mean, group_rstd, ids,
                                                              count.data(), num_groups, needs_dx, needs_dweight,
                                                              needs_dbias)))
}

// ----------------------------------------------------------------------------------------------
// The dgn:: operators' CPU kernels (schemas in dgn_plugins/ops.py). They take any CPU input: the
// row loops run contiguous float32 / float64 rows; other dtypes and memory formats are brought to
// that form and back.

using Tensor = at::Tensor;
using OptionalTensor = c10::optional<at::Tensor>;
using ForwardResult = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using BackwardResult = std::tuple<Tensor, Tensor, Tensor>;

at::ScalarType stats_type(const Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// The input as the kernels walk it: (N, C, S...) with S >= 1 dimension, a storage type they
// run, NCHW-contiguous or channels last (anything else is copied to NCHW).
Tensor walkable(const Tensor& t) {
  Tensor w = t.dim() == 2 ? t.unsqueeze(-1) : t;
  if (!native_dtype(w)) w = w.to(at::kFloat);
  return walk(w) ? w : w.contiguous();
}

// `out` (walked like `walkable(input)`) in the input's shape and dtype.
Tensor like_input(const Tensor& out, const Tensor& input) {
  Tensor r = input.dim() == 2 ? out.squeeze(-1) : out;
  return r.scalar_type() == input.scalar_type() ? r : r.to(input.scalar_type());
}

void cpu_update_channel_stats(at::Tensor& running_mean, at::Tensor& running_var, at::Tensor& num_updates,
                              const at::Tensor& channel_mean, const at::Tensor& channel_var, double momentum);

// The forward's outputs (see ForwardOptions: with batch_stats, the token walk appends the batch's
// [1, C] channel statistics).
std::vector<Tensor> cpu_group_norm_rows(const Tensor& input, const Tensor& group_id, const Tensor& group_count,
                                        const OptionalTensor& weight, const OptionalTensor& bias, int64_t num_groups,
                                        double eps, const ForwardOptions& options) {
  TORCH_CHECK(input.dim() >= 2, "dgn::group_norm: expected input of shape (N, C, *), got ", input.sizes());
  TORCH_CHECK(input.size(1) == group_id.numel(), "dgn::group_norm: expected input with ", group_id.numel(),
              " channels (dim 1), got ", input.size(1));
  const int64_t n = input.size(0), channels = input.size(1);
  const auto stats = input.options().dtype(stats_type(input));
  if (input.numel() == 0)  // no samples (no RoIs) or no positions: nothing to normalise
    return {input.clone(), at::zeros({n, channels}, stats), at::zeros({n, channels}, stats),
            at::zeros({n, num_groups}, stats), at::zeros({n, num_groups}, stats)};
  const Tensor ids = group_id.to(at::kLong).contiguous();
  auto outs = forward_kernels(walkable(input), weight, bias, ids, group_count, num_groups, eps, options);
  outs[0] = like_input(outs[0], input);
  return outs;
}

// The forward, and in training the running statistics' update from its channel statistics (the
// token walk's batch statistics when it made them). Without channel_stats the [N, C] statistics
// come back empty ([0, C]): a layer's training step needs only the update.
ForwardResult cpu_group_norm(const Tensor& input, const Tensor& group_id, const Tensor& group_count,
                             const OptionalTensor& weight, const OptionalTensor& bias, int64_t num_groups, double eps,
                             const OptionalTensor& running_mean, const OptionalTensor& running_var,
                             const OptionalTensor& num_updates, double momentum, bool channel_stats) {
  const bool running = running_mean.has_value() && running_mean->defined();
  ForwardOptions options;
  options.channel_stats = channel_stats;
  options.batch_stats = running;
  std::vector<Tensor> outs = cpu_group_norm_rows(input, group_id, group_count, weight, bias, num_groups, eps, options);
  if (running) {
    TORCH_CHECK(running_var.has_value() && num_updates.has_value(),
                "dgn::group_norm: running_mean, running_var and num_updates go together");
    Tensor mean = *running_mean, var = *running_var, count = *num_updates;
    const bool batch = outs.size() == 7;
    cpu_update_channel_stats(mean, var, count, outs[batch ? 5 : 1], outs[batch ? 6 : 2], momentum);
  }
  if (!channel_stats && outs[1].size(0) != 0) {
    outs[1] = new_cpu({0, input.size(1)}, outs[1].scalar_type());
    outs[2] = new_cpu({0, input.size(1)}, outs[2].scalar_type());
  }
  return {outs[0], outs[1], outs[2], outs[3], outs[4]};
}

BackwardResult cpu_group_norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& group_mean,
                                       const Tensor& group_rstd, const Tensor& group_id, const Tensor& group_count,
                                       const OptionalTensor& weight, int64_t num_groups,
                                       std::array<bool, 3> output_mask) {
  TORCH_CHECK(grad_y.sizes() == input.sizes(), "dgn::group_norm_backward: grad_y has shape ", grad_y.sizes(),
              ", the input ", input.sizes());
  const Tensor none = new_cpu({0}, input.scalar_type());
  const bool has_weight = weight.has_value() && weight->defined();
  const auto param = input.options().dtype(has_weight ? weight->scalar_type() : grad_y.scalar_type());
  if (input.numel() == 0) {
    return {output_mask[0] ? at::zeros_like(input) : none, output_mask[1] ? at::zeros({input.size(1)}, param) : none,
            output_mask[2] ? at::zeros({input.size(1)}, param) : none};
  }
  const Tensor x = walkable(input);
  Tensor dy = grad_y.dim() == 2 ? grad_y.unsqueeze(-1) : grad_y;
  dy = laid_out_like(dy.to(x.scalar_type()), x);
  const Tensor ids = group_id.to(at::kLong).contiguous();
  auto outs = backward_kernels(dy, x, weight, group_mean.contiguous(), group_rstd.contiguous(), ids, group_count,
                               num_groups, output_mask[0], output_mask[1], output_mask[2]);
  return {output_mask[0] ? like_input(outs[0], input) : none, output_mask[1] ? outs[1] : none,
          output_mask[2] ? outs[2] : none};
}

// ----------------------------------------------------------------------------------------------
// dgn::update_channel_stats_: the layer's running channel statistics, in place.

// Batch mean and total variance per channel from the per-sample [N, C] statistics.
template <typename S>
void batch_moments(const S* mean, const S* var, int64_t n, int64_t channels, std::vector<double>& batch_mean,
                   std::vector<double>& batch_var) {
  batch_mean.assign(channels, 0.0);
  batch_var.assign(channels, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) batch_mean[c] += double(mean[i * channels + c]);
  const double inv_n = 1.0 / double(n);
  for (int64_t c = 0; c < channels; ++c) batch_mean[c] *= inv_n;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      const double d = double(mean[i * channels + c]) - batch_mean[c];
      batch_var[c] += double(var[i * channels + c]) + d * d;
    }
  for (int64_t c = 0; c < channels; ++c) batch_var[c] *= inv_n;
}

bool all_finite(const std::vector<double>& v) {
  for (double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// torch.lerp's formula in double, branch-free; non-finite results keep the running value.
template <typename R>
void lerp_into(R* running, const std::vector<double>& batch, double w) {
  const bool from_end = !(w < 0.5);
  for (size_t c = 0; c < batch.size(); ++c) {
    const double start = double(running[c]), end = double(R(batch[c]));
    const double lerped = from_end ? end - (end - start) * (1.0 - w) : start + w * (end - start);
    const R updated = R(lerped);
    running[c] = (updated - updated) == R(0) ? updated : running[c];  // false for inf and nan
  }
}

template <typename R>
void write_running(R* running, const std::vector<double>& batch, bool first, double momentum) {
  if (first) {
    for (size_t c = 0; c < batch.size(); ++c) running[c] = R(batch[c]);
  } else {
    lerp_into(running, batch, momentum);
  }
}

// The first update seeds the running values, and only from a batch whose statistics are all
// finite (a non-finite first batch must not use up the seeding step); later updates lerp by
// `momentum`, non-finite values leaving the running ones unchanged. num_updates += 1 when the
// running values changed.
// The batch's statistics as doubles, read in place when they are contiguous float / double.
void batch_statistics(const at::Tensor& channel_mean, const at::Tensor& channel_var, std::vector<double>& batch_mean,
                      std::vector<double>& batch_var) {
  const int64_t n = channel_mean.size(0), channels = channel_mean.size(1);
  const bool direct = channel_mean.is_contiguous() && channel_var.is_contiguous() &&
                      channel_mean.scalar_type() == channel_var.scalar_type();
  if (direct && channel_mean.scalar_type() == at::kFloat)
    return batch_moments(channel_mean.data_ptr<float>(), channel_var.data_ptr<float>(), n, channels, batch_mean,
                         batch_var);
  if (direct && channel_mean.scalar_type() == at::kDouble)
    return batch_moments(channel_mean.data_ptr<double>(), channel_var.data_ptr<double>(), n, channels, batch_mean,
                         batch_var);
  const at::Tensor mean = channel_mean.to(at::kDouble).contiguous(), var = channel_var.to(at::kDouble).contiguous();
  batch_moments(mean.data_ptr<double>(), var.data_ptr<double>(), n, channels, batch_mean, batch_var);
}

void write_running_tensor(at::Tensor& running, const std::vector<double>& batch, bool first, double momentum) {
  if (running.is_contiguous() && running.scalar_type() == at::kFloat) {
    write_running(running.data_ptr<float>(), batch, first, momentum);
    running.unsafeGetTensorImpl()->bump_version();
  } else if (running.is_contiguous() && running.scalar_type() == at::kDouble) {
    write_running(running.data_ptr<double>(), batch, first, momentum);
    running.unsafeGetTensorImpl()->bump_version();
  } else {
    at::Tensor values = running.to(at::kDouble).contiguous().clone();
    write_running(values.data_ptr<double>(), batch, first, momentum);
    running.copy_(values);
  }
}

// The first update seeds the running values, and only from a batch whose statistics are all
// finite (a non-finite first batch must not use up the seeding step); later updates lerp by
// `momentum`, non-finite values leaving the running ones unchanged. num_updates += 1 when the
// running values changed.
void cpu_update_channel_stats(at::Tensor& running_mean, at::Tensor& running_var, at::Tensor& num_updates,
                              const at::Tensor& channel_mean, const at::Tensor& channel_var, double momentum) {
  TORCH_CHECK(channel_mean.dim() == 2 && channel_mean.sizes() == channel_var.sizes() &&
                  channel_mean.size(1) == running_mean.numel() && running_var.numel() == running_mean.numel(),
              "dgn::update_channel_stats_: statistics of mismatched shapes: running ", running_mean.sizes(),
              ", batch ", channel_mean.sizes());
  TORCH_CHECK(num_updates.numel() == 1 && !num_updates.is_floating_point(),
              "dgn::update_channel_stats_: num_updates must hold one integer count");
  if (channel_mean.size(0) == 0) return;
  std::vector<double> batch_mean, batch_var;
  batch_statistics(channel_mean, channel_var, batch_mean, batch_var);
  const bool direct_count = num_updates.scalar_type() == at::kLong && num_updates.is_contiguous();
  const int64_t count = direct_count ? *num_updates.data_ptr<int64_t>() : num_updates.item<int64_t>();
  const bool first = count == 0;
  if (first && !(all_finite(batch_mean) && all_finite(batch_var))) return;
  write_running_tensor(running_mean, batch_mean, first, momentum);
  write_running_tensor(running_var, batch_var, first, momentum);
  if (direct_count) {
    *num_updates.data_ptr<int64_t>() = count + 1;
    num_updates.unsafeGetTensorImpl()->bump_version();
  } else {
    num_updates.add_(1);
  }
}

// ----------------------------------------------------------------------------------------------
// Autograd. The forward and backward are the operators above (or their CUDA / plain kernels: the
// node calls them through the dispatcher), with the tensors F.group_norm saves, and a hand-written
// node as the generated code of native ops has (only y is differentiable). Where more than one
// derivative is asked for, autograd differentiates dgn::group_norm_composite, the plain
// formulation: forward-mode AD on the inputs, torch.func transforms, and double backward
// (create_graph=True).

using ForwardSignature = ForwardResult(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&,
                                       const OptionalTensor&, int64_t, double, const OptionalTensor&,
                                       const OptionalTensor&, const OptionalTensor&, double, bool);
using BackwardSignature = BackwardResult(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                         const Tensor&, const OptionalTensor&, int64_t, std::array<bool, 3>);

const c10::TypedOperatorHandle<ForwardSignature>& forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dgn::group_norm", "").typed<ForwardSignature>();
  return op;
}

const c10::TypedOperatorHandle<ForwardSignature>& composite_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dgn::group_norm_composite", "").typed<ForwardSignature>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSignature>& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dgn::group_norm_backward", "").typed<BackwardSignature>();
  return op;
}

OptionalTensor optional(const Tensor& t) { return t.defined() ? OptionalTensor(t) : c10::nullopt; }

struct GroupNormBackward : public torch::autograd::Node {
  // What F.group_norm saves (saved-tensor hooks see the same four tensors).
  torch::autograd::SavedVariable x, weight, group_mean, group_rstd;
  Tensor group_id, group_count;
  int64_t num_groups = 0;
  double eps = 0.0;
  bool has_weight = false, has_bias = false;

  std::string name() const override { return "DynamicGroupNormBackward"; }

  void release_variables() override {
    x.reset_data();
    weight.reset_data();
    group_mean.reset_data();
    group_rstd.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    torch::autograd::variable_list result(3);  // x, weight, bias: the next edges
    const Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return result;
    const Tensor input = x.unpack(), w = has_weight ? weight.unpack() : Tensor();
    const std::array<bool, 3> mask = {should_compute_output(0), has_weight && should_compute_output(1),
                                      has_bias && should_compute_output(2)};
    if (at::GradMode::is_enabled()) {
      // create_graph=True: gradients that are themselves differentiable, from the plain formulation.
      std::vector<Tensor> inputs;
      if (mask[0]) inputs.push_back(input);
      if (mask[1]) inputs.push_back(w);
      if (!inputs.empty()) {
        const Tensor y = std::get<0>(composite_op().call(input, group_id, group_count, optional(w), c10::nullopt,
                                                         num_groups, eps, c10::nullopt, c10::nullopt, c10::nullopt,
                                                         0.0, true));
        auto partial = torch::autograd::grad({y}, inputs, {grad_y}, /*retain_graph=*/true, /*create_graph=*/true,
                                             /*allow_unused=*/true);
        size_t next = 0;
        if (mask[0]) result[0] = partial[next++];
        if (mask[1]) result[1] = partial[next++];
      }
      if (mask[2]) {
        std::vector<int64_t> dims = {0};
        for (int64_t d = 2; d < grad_y.dim(); ++d) dims.push_back(d);
        result[2] = grad_y.sum(dims).to(w.defined() ? w.scalar_type() : grad_y.scalar_type());
      }
      return result;
    }
    // Straight to the device's kernel: the backward operator has no autograd kernel, and the dispatcher's
    // autograd fallback would box and unbox every argument (about a fifth of a small layer's call).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    BackwardResult outs = backward_op().call(grad_y, input, group_mean.unpack(), group_rstd.unpack(), group_id,
                                             group_count, optional(w), num_groups, mask);
    if (mask[0]) result[0] = std::get<0>(outs);
    if (mask[1]) result[1] = std::get<1>(outs);
    if (mask[2]) result[2] = std::get<2>(outs);
    return result;
  }
};

// Autograd nodes are reference counted by c10::intrusive_ptr from torch 2.13, by std::shared_ptr before
// (set_history takes whichever the installed torch uses): chosen when the extension is compiled.
template <typename NodeType>
auto make_node() {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
  return c10::make_intrusive<NodeType>();
#else
  return std::make_shared<NodeType>();
#endif
}

bool has_forward_grad(const OptionalTensor& t) {
  return t.has_value() && t->defined() && t->_fw_grad(/*level=*/0).defined();
}

bool requires_grad(const OptionalTensor& t) { return t.has_value() && t->defined() && t->requires_grad(); }

// torch.func transforms (grad, vjp, jvp, vmap of those) cannot run a hand-written node.
bool under_functorch() {
  return c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
         c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerBackMode);
}

ForwardResult autograd_group_norm(const Tensor& x, const Tensor& group_id, const Tensor& group_count,
                                  const OptionalTensor& weight, const OptionalTensor& bias, int64_t num_groups,
                                  double eps, const OptionalTensor& running_mean, const OptionalTensor& running_var,
                                  const OptionalTensor& num_updates, double momentum, bool channel_stats) {
  if (under_functorch() || has_forward_grad(x) || has_forward_grad(weight) || has_forward_grad(bias))
    return composite_op().call(x, group_id, group_count, weight, bias, num_groups, eps, running_mean, running_var,
                               num_updates, momentum, channel_stats);
  ForwardResult outs;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // on to the device's kernel
    outs = forward_op().call(x, group_id, group_count, weight, bias, num_groups, eps, running_mean, running_var,
                             num_updates, momentum, channel_stats);
  }
  if (at::GradMode::is_enabled() && (x.requires_grad() || requires_grad(weight) || requires_grad(bias))) {
    auto node = make_node<GroupNormBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, weight, bias));
    node->x = torch::autograd::SavedVariable(x, /*is_output=*/false);
    node->has_weight = weight.has_value() && weight->defined();
    node->has_bias = bias.has_value() && bias->defined();
    if (node->has_weight) node->weight = torch::autograd::SavedVariable(*weight, /*is_output=*/false);
    // Not differentiable (no history): saved like inputs, no reference cycle through the node.
    node->group_mean = torch::autograd::SavedVariable(std::get<3>(outs), /*is_output=*/false);
    node->group_rstd = torch::autograd::SavedVariable(std::get<4>(outs), /*is_output=*/false);
    node->group_id = group_id;
    node->group_count = group_count;
    node->num_groups = num_groups;
    node->eps = eps;
    torch::autograd::set_history(std::get<0>(outs), node);
  }
  return outs;
}

// How the kernels walk `input` under `group_id`: "channels_last", "tokens" (the token walk, a row at a time),
// "token_groups" (the token walk, a group's run at a time), "rows" or "groups" (for tests and
// bench/bench_layer.py, which print it).
std::string walk_for(const Tensor& input, const Tensor& group_id, int64_t num_groups) {
  const Tensor x = walkable(input);
  const Shape shape = *walk(x);
  if (shape.last) return "channels_last";
  if (token_walk(shape, x.scalar_type())) return wide_groups(shape.channels, num_groups) ? "token_groups" : "tokens";
  const Tensor ids = group_id.to(at::kLong).contiguous();
  const Members groups(checked_group_ids(ids, shape.channels, num_groups), 1, shape.channels, num_groups);
  return group_walk(shape, x.element_size(), groups) ? "groups" : "rows";
}

// Registers the kernels with the dispatcher. Called by dgn_plugins/ops.py after it defined the
// schemas (not at load time), so that an extension built for other schemas fails with a Python
// exception the package can report, instead of aborting the process.
void register_kernels() {
  static std::unique_ptr<torch::Library> cpu, autograd;
  if (cpu) return;
  auto cpu_kernels = std::make_unique<torch::Library>(torch::Library::IMPL, "dgn", c10::DispatchKey::CPU, __FILE__,
                                                      __LINE__);
  cpu_kernels->impl("group_norm", TORCH_FN(cpu_group_norm));
  cpu_kernels->impl("group_norm_backward", TORCH_FN(cpu_group_norm_backward));
  cpu_kernels->impl("update_channel_stats_", TORCH_FN(cpu_update_channel_stats));
  auto autograd_kernels = std::make_unique<torch::Library>(torch::Library::IMPL, "dgn", c10::DispatchKey::Autograd,
                                                           __FILE__, __LINE__);
  autograd_kernels->impl("group_norm", TORCH_FN(autograd_group_norm));
  cpu = std::move(cpu_kernels);
  autograd = std::move(autograd_kernels);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native CPU kernels of Dynamic Group Normalization: the dgn:: operators' CPU and autograd kernels "
            "(see dgn_plugins/ops.py)";
  m.def("register_kernels", &register_kernels, "Register the CPU and autograd kernels of the dgn:: operators");
  m.def("supported_isas", &supported_isas, "Instruction sets the row loops can use on this CPU, best first");
  m.def("set_isa", &set_isa, "Use one instruction set's row loops ('' = best); returns the one in use",
        py::arg("isa") = "");
  m.def("set_nchw_walk", &set_nchw_walk, "Walk NCHW tensors by 'rows', by 'groups' or 'auto' (the default)",
        py::arg("walk") = "auto");
  m.def("set_token_walk", [](bool on) { g_token_walk = on; return g_token_walk; },
        "Walk (N, C) float32 / float64 rows by tokens (True, the default) or as generic rows", py::arg("on") = true);
  m.def("walk_for", &walk_for, "How the kernels walk an input under a grouping: 'rows', 'groups', "
        "'channels_last', 'tokens' or 'token_groups'", py::arg("input"), py::arg("group_id"), py::arg("num_groups"));
  m.def("isa", []() { return g_isa; }, "Instruction set of the row loops in use");
}
