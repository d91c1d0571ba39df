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

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

// The row loops of one instruction set (dgn_rows.h): each runs `rows` consecutive rows.
struct RowKernels {
  void (*moments_f)(const float*, int64_t, int64_t, double*, double*);
  void (*moments_d)(const double*, int64_t, int64_t, double*, double*);
  void (*affine_f)(const float*, float*, int64_t, int64_t, const float*, const float*, const float*);
  void (*affine_d)(const double*, double*, int64_t, int64_t, const double*, const double*, const double*);
  void (*grad_sums_f)(const float*, const float*, int64_t, int64_t, const float*, double*, double*);
  void (*grad_sums_d)(const double*, const double*, int64_t, int64_t, const double*, double*, double*);
  void (*grad_input_f)(const float*, const float*, float*, int64_t, int64_t, const float*, const float*,
                       const float*, const float*);
  void (*grad_input_d)(const double*, const double*, double*, int64_t, int64_t, const double*, const double*,
                       const double*, const double*);
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DGN_X86_VARIANTS 1
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")
namespace dgn_avx512 {
#define DGN_VEC_BYTES 64
#include "dgn_rows.h"
#undef DGN_VEC_BYTES
}  // namespace dgn_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace dgn_avx2 {
#define DGN_VEC_BYTES 32
#include "dgn_rows.h"
#undef DGN_VEC_BYTES
}  // namespace dgn_avx2
#pragma GCC pop_options
#endif

namespace dgn_baseline {
#define DGN_VEC_BYTES 16
#include "dgn_rows.h"
#undef DGN_VEC_BYTES
}  // namespace dgn_baseline

namespace {

std::vector<std::string> supported_isas() {
  std::vector<std::string> isas;
#ifdef DGN_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    isas.push_back("avx512");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas.push_back("avx2");
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
    at::Tensor out = at::empty({size}, at::TensorOptions().dtype(dtype));
    if (dtype == at::kFloat) std::copy_n(values.begin(), size, out.data_ptr<float>());
    else std::copy_n(values.begin(), size, out.data_ptr<double>());
    return out;
  }
  at::Tensor out = at::empty({size}, at::TensorOptions().dtype(at::kDouble));
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

// Typed access to the row loops in use.
void moments_rows(const float* x, int64_t size, int64_t rows, double* mean, double* var) {
  g_kernels.moments_f(x, size, rows, mean, var);
}
void moments_rows(const double* x, int64_t size, int64_t rows, double* mean, double* var) {
  g_kernels.moments_d(x, size, rows, mean, var);
}
void affine_rows(const float* x, float* y, int64_t size, int64_t rows, const float* c, const float* a, const float* b) {
  g_kernels.affine_f(x, y, size, rows, c, a, b);
}
void affine_rows(const double* x, double* y, int64_t size, int64_t rows, const double* c, const double* a,
                 const double* b) {
  g_kernels.affine_d(x, y, size, rows, c, a, b);
}
void grad_sums_rows(const float* dy, const float* x, int64_t size, int64_t rows, const float* c, double* s1,
                    double* s2) {
  g_kernels.grad_sums_f(dy, x, size, rows, c, s1, s2);
}
void grad_sums_rows(const double* dy, const double* x, int64_t size, int64_t rows, const double* c, double* s1,
                    double* s2) {
  g_kernels.grad_sums_d(dy, x, size, rows, c, s1, s2);
}
void grad_input_rows(const float* dy, const float* x, float* dx, int64_t size, int64_t rows, const float* a,
                     const float* c, const float* b, const float* d) {
  g_kernels.grad_input_f(dy, x, dx, size, rows, a, c, b, d);
}
void grad_input_rows(const double* dy, const double* x, double* dx, int64_t size, int64_t rows, const double* a,
                     const double* c, const double* b, const double* d) {
  g_kernels.grad_input_d(dy, x, dx, size, rows, a, c, b, d);
}

// The grouping, indexed for the loops: group k is channels members[offsets[k] ..
// offsets[k + 1]) (counting sort); row r = (i, c) belongs to group entry row_group[r] = i * K + ids[c].
struct Members {
  std::vector<int64_t> members, offsets, row_group;
  Members(const int64_t* ids, int64_t n, int64_t channels, int64_t num_groups)
      : members(channels), offsets(num_groups + 1, 0), row_group(n * channels) {
    for (int64_t c = 0; c < channels; ++c) ++offsets[ids[c] + 1];
    for (int64_t k = 0; k < num_groups; ++k) offsets[k + 1] += offsets[k];
    std::vector<int64_t> next(offsets.begin(), offsets.end() - 1);
    for (int64_t c = 0; c < channels; ++c) members[next[ids[c]]++] = c;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < channels; ++c) row_group[i * channels + c] = i * num_groups + ids[c];
  }
};

const double* optional_doubles(const c10::optional<at::Tensor>& t, std::vector<double>& holder) {
  if (!t.has_value() || !t->defined()) return nullptr;
  holder = doubles(*t);
  return holder.data();
}

template <typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                     const c10::optional<at::Tensor>& bias, const int64_t* ids,
                                     const double* count, int64_t num_groups, double eps) {
  const int64_t n = x.size(0), channels = x.size(1), rows = n * channels;
  const int64_t size = x.numel() / rows;
  const Members groups(ids, n, channels, num_groups);
  std::vector<double> w_holder, b_holder;
  const double* wp = optional_doubles(weight, w_holder);
  const double* bp = optional_doubles(bias, b_holder);

  at::Tensor y = at::empty_like(x);
  at::Tensor channel_mean = at::empty({n, channels}, x.options());
  at::Tensor channel_var = at::empty({n, channels}, x.options());
  at::Tensor group_mean_t = at::empty({n, num_groups}, x.options());
  at::Tensor group_rstd_t = at::empty({n, num_groups}, x.options());
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* cm = channel_mean.data_ptr<T>();
  T* cv = channel_var.data_ptr<T>();
  T* gm_out = group_mean_t.data_ptr<T>();
  T* rstd_out = group_rstd_t.data_ptr<T>();
  std::vector<double> mean(rows), var(rows);

  // Statistics pass, split over rows.
  at::parallel_for(0, rows, grain_rows(size), [&](int64_t begin, int64_t end) {
    moments_rows(xp + begin * size, size, end - begin, mean.data() + begin, var.data() + begin);
  });

  // Group mean = mean of its channel means; variance = mean of (var_c + (mean_c - group mean)^2).
  std::vector<double> group_mean(n * num_groups), group_rstd(n * num_groups);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < num_groups; ++k) {
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
    }

  // y = (x - m_c) * scale + shift with m_c the channel mean in T (x - m_c is exact
  // when they are close), scale = rstd * w, shift = (m_c - group mean) * scale + b.
  std::vector<T> scale(rows), shift(rows);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t r = i * channels + c, g = groups.row_group[r];
      cm[r] = T(mean[r]);
      cv[r] = T(var[r]);
      double a = group_rstd[g];
      if (wp) a *= wp[c];
      double b = (double(cm[r]) - group_mean[g]) * a;
      if (bp) b += bp[c];
      scale[r] = T(a);
      shift[r] = T(b);
    }

  // Apply pass, split over rows.
  at::parallel_for(0, rows, grain_rows(size), [&](int64_t begin, int64_t end) {
    affine_rows(xp + begin * size, yp + begin * size, size, end - begin, cm + begin, scale.data() + begin,
                shift.data() + begin);
  });
  return {y, channel_mean, channel_var, group_mean_t, group_rstd_t};
}

template <typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                      const at::Tensor& group_mean, const at::Tensor& group_rstd, const int64_t* ids,
                                      const double* count, int64_t num_groups, bool needs_dx, bool needs_dweight,
                                      bool needs_dbias) {
  const int64_t n = x.size(0), channels = x.size(1), rows = n * channels;
  const int64_t size = x.numel() / rows;
  const Members groups(ids, n, channels, num_groups);
  std::vector<double> w_holder;
  const double* wp = optional_doubles(weight, w_holder);
  const T* xp = x.data_ptr<T>();
  const T* gp = dy.data_ptr<T>();
  std::vector<T> gm(group_mean.numel());  // the saved mean: x_hat = (x - gm) * rstd
  const std::vector<double> group_mean_d = doubles(group_mean);
  std::copy(group_mean_d.begin(), group_mean_d.end(), gm.begin());
  const std::vector<double> rstd = doubles(group_rstd);
  at::Tensor dx = needs_dx ? at::empty_like(x) : at::Tensor();
  T* dxp = needs_dx ? dx.data_ptr<T>() : nullptr;
  // Reduction pass, split over rows: sum(dy) and sum(dy * (x - group mean)).
  std::vector<T> center(rows);
  for (int64_t r = 0; r < rows; ++r) center[r] = gm[groups.row_group[r]];
  std::vector<double> sum_dy(rows), sum_dy_xhat(rows);
  at::parallel_for(0, rows, grain_rows(size), [&](int64_t begin, int64_t end) {
    grad_sums_rows(gp + begin * size, xp + begin * size, size, end - begin, center.data() + begin,
                   sum_dy.data() + begin, sum_dy_xhat.data() + begin);
  });
  for (int64_t r = 0; r < rows; ++r) sum_dy_xhat[r] *= rstd[groups.row_group[r]];  // now sum(dy * x_hat)

  if (needs_dx) {
    // dx = r w dy - r mean_k(w dy) - r^2 (x - mean) mean_k(w dy x_hat), means over the group's |k| * size elements.
    std::vector<double> coef_x(n * num_groups), coef_const(n * num_groups);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t k = 0; k < num_groups; ++k) {
        double wdy = 0.0, wdy_xhat = 0.0;
        for (int64_t j = groups.offsets[k]; j < groups.offsets[k + 1]; ++j) {
          const int64_t c = groups.members[j], r = i * channels + c;
          const double wc = wp ? wp[c] : 1.0;
          wdy += sum_dy[r] * wc;
          wdy_xhat += sum_dy_xhat[r] * wc;
        }
        const int64_t g = i * num_groups + k;
        const double elements = count[k] * double(size);
        coef_x[g] = -rstd[g] * rstd[g] * (wdy_xhat / elements);
        coef_const[g] = -rstd[g] * (wdy / elements);
      }
    std::vector<T> row_dy(rows), row_x(rows), row_const(rows);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t r = i * channels + c, g = groups.row_group[r];
        row_dy[r] = T(wp ? rstd[g] * wp[c] : rstd[g]);
        row_x[r] = T(coef_x[g]);
        row_const[r] = T(coef_const[g]);
      }
    // Apply pass, split over rows.
    at::parallel_for(0, rows, grain_rows(size), [&](int64_t begin, int64_t end) {
      grad_input_rows(gp + begin * size, xp + begin * size, dxp + begin * size, size, end - begin,
                      row_dy.data() + begin, center.data() + begin, row_x.data() + begin, row_const.data() + begin);
    });
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

// (y, channel_mean [N, C], channel_var [N, C], group_mean [N, K], group_rstd [N, K]) for a
// contiguous float / double input.
std::vector<at::Tensor> forward_rows(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                     const c10::optional<at::Tensor>& bias, const at::Tensor& group_id,
                                     const at::Tensor& group_count, int64_t num_groups, double eps) {
  const int64_t* ids = checked_group_ids(group_id, x.size(1), num_groups);
  const std::vector<double> count = doubles(group_count);
  TORCH_CHECK(int64_t(count.size()) == num_groups, "group_count must have ", num_groups, " entries");
  if (x.scalar_type() == at::kDouble)
    return forward_impl<double>(x, weight, bias, ids, count.data(), num_groups, eps);
  return forward_impl<float>(x, weight, bias, ids, count.data(), num_groups, eps);
}

// (dx or undefined, dweight or undefined, dbias or undefined) for contiguous float / double tensors.
std::vector<at::Tensor> backward_rows(const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                      const at::Tensor& group_mean, const at::Tensor& group_rstd,
                                      const at::Tensor& group_id, const at::Tensor& group_count, int64_t num_groups,
                                      bool needs_dx, bool needs_dweight, bool needs_dbias) {
  TORCH_CHECK(group_mean.numel() == x.size(0) * num_groups && group_rstd.numel() == x.size(0) * num_groups,
              "group statistics must be [N, K]");
  const int64_t* ids = checked_group_ids(group_id, x.size(1), num_groups);
  const std::vector<double> count = doubles(group_count);
  TORCH_CHECK(int64_t(count.size()) == num_groups, "group_count must have ", num_groups, " entries");
  if (x.scalar_type() == at::kDouble)
    return backward_impl<double>(dy, x, weight, group_mean, group_rstd, ids, count.data(), num_groups,
                                 needs_dx, needs_dweight, needs_dbias);
  return backward_impl<float>(dy, x, weight, group_mean, group_rstd, ids, count.data(), num_groups,
                              needs_dx, needs_dweight, needs_dbias);
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

// The memory format y and dx keep: the input's (channels_last stays channels_last).
at::MemoryFormat output_format(const Tensor& x) {
  if (x.is_contiguous()) return at::MemoryFormat::Contiguous;
  if (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) return at::MemoryFormat::ChannelsLast;
  if (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return at::MemoryFormat::ChannelsLast3d;
  return at::MemoryFormat::Contiguous;
}

// (N, C, *) rows the loops run: contiguous, float or double.
Tensor as_rows(const Tensor& t) {
  Tensor r = t.dim() == 2 ? t.unsqueeze(-1) : t;
  if (r.scalar_type() != at::kFloat && r.scalar_type() != at::kDouble) r = r.to(at::kFloat);
  return r.contiguous();
}

Tensor like_input(const Tensor& rows, const Tensor& input) {
  Tensor out = input.dim() == 2 ? rows.squeeze(-1) : rows;
  return out.to(out.options().dtype(input.scalar_type()), /*non_blocking=*/false, /*copy=*/false,
                output_format(input));
}

ForwardResult cpu_group_norm(const Tensor& input, const Tensor& group_id, const Tensor& group_count,
                             const OptionalTensor& weight, const OptionalTensor& bias, int64_t num_groups,
                             double eps) {
  TORCH_CHECK(input.dim() >= 2, "dgn::group_norm: expected input of shape (N, C, *), got ", input.sizes());
  TORCH_CHECK(input.size(1) == group_id.numel(), "dgn::group_norm: expected input with ", group_id.numel(),
              " channels (dim 1), got ", input.size(1));
  const int64_t n = input.size(0), channels = input.size(1);
  const auto stats = input.options().dtype(stats_type(input));
  if (input.numel() == 0)  // no samples (no RoIs) or no positions: nothing to normalise
    return {input.clone(), at::zeros({n, channels}, stats), at::zeros({n, channels}, stats),
            at::zeros({n, num_groups}, stats), at::zeros({n, num_groups}, stats)};
  const Tensor ids = group_id.to(at::kLong).contiguous();
  auto outs = forward_rows(as_rows(input), weight, bias, ids, group_count, num_groups, eps);
  return {like_input(outs[0], input), outs[1], outs[2], outs[3], outs[4]};
}

BackwardResult cpu_group_norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& group_mean,
                                       const Tensor& group_rstd, const Tensor& group_id, const Tensor& group_count,
                                       const OptionalTensor& weight, int64_t num_groups,
                                       std::array<bool, 3> output_mask) {
  TORCH_CHECK(grad_y.sizes() == input.sizes(), "dgn::group_norm_backward: grad_y has shape ", grad_y.sizes(),
              ", the input ", input.sizes());
  const Tensor none = at::empty({0}, input.options());
  const bool has_weight = weight.has_value() && weight->defined();
  const auto param = input.options().dtype(has_weight ? weight->scalar_type() : grad_y.scalar_type());
  if (input.numel() == 0) {
    return {output_mask[0] ? at::zeros_like(input) : none, output_mask[1] ? at::zeros({input.size(1)}, param) : none,
            output_mask[2] ? at::zeros({input.size(1)}, param) : none};
  }
  const Tensor x = as_rows(input);
  const Tensor dy = as_rows(grad_y.to(x.scalar_type()));
  const Tensor ids = group_id.to(at::kLong).contiguous();
  auto outs = backward_rows(dy, x, weight, group_mean.contiguous(), group_rstd.contiguous(), ids, group_count,
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
void cpu_update_channel_stats(at::Tensor& running_mean, at::Tensor& running_var, at::Tensor& num_updates,
                              const at::Tensor& channel_mean, const at::Tensor& channel_var, double momentum) {
  TORCH_CHECK(channel_mean.dim() == 2 && channel_mean.sizes() == channel_var.sizes() &&
                  channel_mean.size(1) == running_mean.numel() && running_var.numel() == running_mean.numel(),
              "dgn::update_channel_stats_: statistics of mismatched shapes: running ", running_mean.sizes(),
              ", batch ", channel_mean.sizes());
  TORCH_CHECK(num_updates.numel() == 1, "dgn::update_channel_stats_: num_updates must hold one count");
  const int64_t n = channel_mean.size(0), channels = channel_mean.size(1);
  if (n == 0) return;
  std::vector<double> batch_mean, batch_var;
  const at::Tensor mean = channel_mean.to(at::kDouble).contiguous(), var = channel_var.to(at::kDouble).contiguous();
  batch_moments(mean.data_ptr<double>(), var.data_ptr<double>(), n, channels, batch_mean, batch_var);
  const bool first = num_updates.item<int64_t>() == 0;
  if (first && !(all_finite(batch_mean) && all_finite(batch_var))) return;
  for (auto pair : {std::make_pair(&running_mean, &batch_mean), std::make_pair(&running_var, &batch_var)}) {
    at::Tensor& running = *pair.first;
    if (running.is_contiguous() && running.scalar_type() == at::kFloat) {
      write_running(running.data_ptr<float>(), *pair.second, first, momentum);
      running.unsafeGetTensorImpl()->bump_version();
    } else if (running.is_contiguous() && running.scalar_type() == at::kDouble) {
      write_running(running.data_ptr<double>(), *pair.second, first, momentum);
      running.unsafeGetTensorImpl()->bump_version();
    } else {
      at::Tensor values = running.to(at::kDouble).contiguous().clone();
      write_running(values.data_ptr<double>(), *pair.second, first, momentum);
      running.copy_(values);
    }
  }
  num_updates.add_(1);
}

// ----------------------------------------------------------------------------------------------
// Autograd. The forward and backward are the operators above (or their CUDA / plain kernels:
// the node calls them through the dispatcher), with the tensors F.group_norm saves. Where more
// than one derivative is asked for, autograd differentiates dgn::group_norm_composite, the plain
// formulation: forward-mode AD on the inputs, and double backward (create_graph=True).

using ForwardSignature = ForwardResult(const Tensor&, const Tensor&, const Tensor&, const OptionalTensor&,
                                       const OptionalTensor&, int64_t, double);
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

struct GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                const Tensor& group_id, const Tensor& group_count,
                                                const OptionalTensor& weight, const OptionalTensor& bias,
                                                int64_t num_groups, double eps) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // on to the device's kernel
    ForwardResult outs = forward_op().call(x, group_id, group_count, weight, bias, num_groups, eps);
    ctx->save_for_backward({x, weight.value_or(Tensor()), std::get<3>(outs), std::get<4>(outs)});
    ctx->saved_data["group_id"] = group_id;
    ctx->saved_data["group_count"] = group_count;
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->mark_non_differentiable({std::get<1>(outs), std::get<2>(outs), std::get<3>(outs), std::get<4>(outs)});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for the statistics
    return {std::get<0>(outs), std::get<1>(outs), std::get<2>(outs), std::get<3>(outs), std::get<4>(outs)};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list result(7);
    const Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1];
    const Tensor group_id = ctx->saved_data["group_id"].toTensor();
    const Tensor group_count = ctx->saved_data["group_count"].toTensor();
    const int64_t num_groups = ctx->saved_data["num_groups"].toInt();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), weight.defined() && ctx->needs_input_grad(3),
                                      ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(4)};
    if (at::GradMode::is_enabled()) {
      // create_graph=True: gradients that are themselves differentiable, from the plain formulation.
      std::vector<Tensor> inputs;
      if (mask[0]) inputs.push_back(x);
      if (mask[1]) inputs.push_back(weight);
      if (!inputs.empty()) {
        const Tensor y = std::get<0>(composite_op().call(x, group_id, group_count, optional(weight), c10::nullopt,
                                                         num_groups, ctx->saved_data["eps"].toDouble()));
        auto partial = torch::autograd::grad({y}, inputs, {grad_y}, /*retain_graph=*/true, /*create_graph=*/true,
                                             /*allow_unused=*/true);
        size_t next = 0;
        if (mask[0]) result[0] = partial[next++];
        if (mask[1]) result[3] = partial[next++];
      }
      if (mask[2]) {
        std::vector<int64_t> dims = {0};
        for (int64_t d = 2; d < grad_y.dim(); ++d) dims.push_back(d);
        result[4] = grad_y.sum(dims).to(weight.defined() ? weight.scalar_type() : grad_y.scalar_type());
      }
      return result;
    }
    BackwardResult outs = backward_op().call(grad_y, x, saved[2], saved[3], group_id, group_count, optional(weight),
                                             num_groups, mask);
    if (mask[0]) result[0] = std::get<0>(outs);
    if (mask[1]) result[3] = std::get<1>(outs);
    if (mask[2]) result[4] = std::get<2>(outs);
    return result;
  }
};

bool has_forward_grad(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }

// torch.func transforms (grad, vjp, jvp, vmap of those) cannot run a C++ autograd::Function.
bool under_functorch() {
  return c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
         c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerBackMode);
}

ForwardResult autograd_group_norm(const Tensor& x, const Tensor& group_id, const Tensor& group_count,
                                  const OptionalTensor& weight, const OptionalTensor& bias, int64_t num_groups,
                                  double eps) {
  const Tensor w = weight.has_value() ? *weight : Tensor(), b = bias.has_value() ? *bias : Tensor();
  if (under_functorch() || has_forward_grad(x) || has_forward_grad(w) || has_forward_grad(b))
    return composite_op().call(x, group_id, group_count, weight, bias, num_groups, eps);
  auto outs = GroupNormFunction::apply(x, group_id, group_count, weight, bias, num_groups, eps);
  return {outs[0], outs[1], outs[2], outs[3], outs[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(dgn, CPU, m) {
  m.impl("group_norm", &cpu_group_norm);
  m.impl("group_norm_backward", &cpu_group_norm_backward);
  m.impl("update_channel_stats_", &cpu_update_channel_stats);
}

TORCH_LIBRARY_IMPL(dgn, Autograd, m) { m.impl("group_norm", &autograd_group_norm); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native CPU kernels of Dynamic Group Normalization: registers the dgn:: operators' CPU and autograd "
            "kernels on import (see dgn_plugins/ops.py)";
  m.def("supported_isas", &supported_isas, "Instruction sets the row loops can use on this CPU, best first");
  m.def("set_isa", &set_isa, "Use one instruction set's row loops ('' = best); returns the one in use",
        py::arg("isa") = "");
  m.def("isa", []() { return g_isa; }, "Instruction set of the row loops in use");
}
