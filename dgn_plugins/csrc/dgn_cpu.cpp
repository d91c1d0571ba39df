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
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>

#include <algorithm>
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

void check_input(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "dgn_plugins._C: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "dgn_plugins._C: float32 or float64 input expected, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 2 && x.is_contiguous() && x.numel() > 0,
              "dgn_plugins._C: a non-empty contiguous (N, C, *) input expected");
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

// (y, channel_mean [N, C], channel_var [N, C], group_mean [N, K], group_rstd [N, K]).
std::vector<at::Tensor> forward(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                const c10::optional<at::Tensor>& bias, const at::Tensor& group_id,
                                const at::Tensor& group_count, int64_t num_groups, double eps) {
  check_input(x);
  const int64_t* ids = checked_group_ids(group_id, x.size(1), num_groups);
  const std::vector<double> count = doubles(group_count);
  TORCH_CHECK(int64_t(count.size()) == num_groups, "group_count must have ", num_groups, " entries");
  if (x.scalar_type() == at::kDouble)
    return forward_impl<double>(x, weight, bias, ids, count.data(), num_groups, eps);
  return forward_impl<float>(x, weight, bias, ids, count.data(), num_groups, eps);
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

// (dx or None, dweight or None, dbias or None).
std::vector<at::Tensor> backward(const at::Tensor& dy, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                 const at::Tensor& group_mean, const at::Tensor& group_rstd,
                                 const at::Tensor& group_id, const at::Tensor& group_count, int64_t num_groups,
                                 bool needs_dx, bool needs_dweight, bool needs_dbias) {
  check_input(x);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type() && dy.is_contiguous(),
              "dgn_plugins._C: grad_output must be contiguous, with the input's shape and dtype");
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

// The autograd node: forward and backward above, with the plain path's
// saved tensors (x, weight, group mean, group rstd: what F.group_norm saves)
// and no Python in between. Like @once_differentiable, a second
// differentiation through the backward raises instead of being silently zero.
struct DynamicGroupNormFunction : public torch::autograd::Function<DynamicGroupNormFunction> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& weight, const at::Tensor& bias,
                                                const at::Tensor& group_id, const at::Tensor& group_count,
                                                int64_t num_groups, double eps) {
    // An empty weight / bias stands for None (the C++ Function takes defined tensors only).
    const bool has_weight = weight.numel() > 0, has_bias = bias.numel() > 0;
    const at::Tensor xc = x.contiguous(), ids = group_id.contiguous();
    auto outs = ::forward(xc, has_weight ? c10::optional<at::Tensor>(weight) : c10::nullopt,
                          has_bias ? c10::optional<at::Tensor>(bias) : c10::nullopt, ids, group_count, num_groups,
                          eps);
    ctx->save_for_backward({xc, has_weight ? weight : at::Tensor(), outs[3], outs[4]});
    ctx->saved_data["group_id"] = ids;
    ctx->saved_data["group_count"] = group_count;
    ctx->saved_data["num_groups"] = num_groups;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->mark_non_differentiable({outs[1], outs[2]});
    ctx->set_materialize_grads(false);  // no zero-filled gradients for the statistics
    return {outs[0], outs[1], outs[2]};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list none(7);
    const at::Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return none;
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const bool needs_dx = ctx->needs_input_grad(0);
    const bool needs_dweight = weight.defined() && ctx->needs_input_grad(1);
    const bool needs_dbias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    torch::autograd::variable_list result;
    {
      at::NoGradGuard no_grad;
      result = ::backward(grad_y.to(x.scalar_type()).contiguous(), x,
                          weight.defined() ? c10::optional<at::Tensor>(weight) : c10::nullopt, saved[2], saved[3],
                          ctx->saved_data["group_id"].toTensor(), ctx->saved_data["group_count"].toTensor(),
                          ctx->saved_data["num_groups"].toInt(), needs_dx, needs_dweight, needs_dbias);
    }
    if (at::GradMode::is_enabled() && (grad_y.requires_grad() || x.requires_grad() ||
                                       (weight.defined() && weight.requires_grad()))) {
      // create_graph=True: attach the results to an error node, as @once_differentiable does.
      for (auto& t : result)
        if (t.defined()) t = t.detach().requires_grad_(true);
      result = torch::autograd::DelayedError(
          "trying to differentiate twice a function that was marked with @once_differentiable", 3)(
          std::move(result));
    }
    none[0] = result[0];
    none[1] = result[1];
    none[2] = result[2];
    return none;
  }
};

// (y, channel_mean, channel_var) with DynamicGroupNormFunction as y's gradient function.
std::tuple<at::Tensor, at::Tensor, at::Tensor> apply(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                     const c10::optional<at::Tensor>& bias,
                                                     const at::Tensor& group_id, const at::Tensor& group_count,
                                                     int64_t num_groups, double eps) {
  TORCH_CHECK(x.dim() >= 2 && x.size(1) > 0, "dgn_plugins._C: an (N, C, *) input with C > 0 expected");
  const at::Tensor none = at::empty({0}, x.options());
  auto outs = DynamicGroupNormFunction::apply(x, weight.has_value() && weight->defined() ? *weight : none,
                                              bias.has_value() && bias->defined() ? *bias : none, group_id,
                                              group_count, num_groups, eps);
  return {outs[0], outs[1], outs[2]};
}

template <typename R, typename S>
void ema_impl(R* running_mean, R* running_var, const S* mean, const S* var, int64_t n, int64_t channels,
              bool first, double momentum) {
  // Batch mean and total variance per channel (loops over contiguous channels, vectorised).
  std::vector<double> batch_mean(channels, 0.0), batch_var(channels, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) batch_mean[c] += double(mean[i * channels + c]);
  const double inv_n = 1.0 / double(n);
  for (int64_t c = 0; c < channels; ++c) batch_mean[c] *= inv_n;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      const double d = double(mean[i * channels + c]) - batch_mean[c];
      batch_var[c] += double(var[i * channels + c]) + d * d;
    }
  // torch.lerp's formula in double, branch-free; non-finite results keep the running value.
  const double w = momentum;
  const bool from_end = !(w < 0.5);
  auto update = [&](R* running, const std::vector<double>& batch, double scale) {
    for (int64_t c = 0; c < channels; ++c) {
      const double start = double(running[c]), end = double(R(batch[c] * scale));
      const double lerped = from_end ? end - (end - start) * (1.0 - w) : start + w * (end - start);
      const R updated = R(first ? end : lerped);
      running[c] = (updated - updated) == R(0) ? updated : running[c];  // false for inf and nan
    }
  };
  update(running_mean, batch_mean, 1.0);
  update(running_var, batch_var, inv_n);
}

// The layer's running channel statistics, in place: the first update copies the
// batch statistics, later ones lerp by `momentum`; non-finite values leave the
// running ones unchanged; num_updates += 1. Returns false, changing nothing, for
// tensors it does not handle (not CPU, not contiguous, other dtypes, empty batch).
bool ema_update_(at::Tensor running_mean, at::Tensor running_var, at::Tensor num_updates,
                 const at::Tensor& channel_mean, const at::Tensor& channel_var, double momentum) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&running_mean, &running_var, &num_updates,
                                                                    &channel_mean, &channel_var})
    if (!t->device().is_cpu() || !t->is_contiguous()) return false;
  const auto rtype = running_mean.scalar_type(), stype = channel_mean.scalar_type();
  if (running_var.scalar_type() != rtype || (rtype != at::kFloat && rtype != at::kDouble)) return false;
  if (channel_var.scalar_type() != stype || (stype != at::kFloat && stype != at::kDouble)) return false;
  if (num_updates.scalar_type() != at::kLong || num_updates.numel() != 1) return false;
  TORCH_CHECK(channel_mean.dim() == 2 && channel_mean.sizes() == channel_var.sizes() &&
                  channel_mean.size(1) == running_mean.numel() && running_var.numel() == running_mean.numel(),
              "ema_update_: statistics of mismatched shapes");
  const int64_t n = channel_mean.size(0), channels = channel_mean.size(1);
  if (n == 0) return false;
  int64_t* counter = num_updates.data_ptr<int64_t>();
  const bool first = *counter == 0;
  if (rtype == at::kFloat && stype == at::kFloat)
    ema_impl(running_mean.data_ptr<float>(), running_var.data_ptr<float>(), channel_mean.data_ptr<float>(),
             channel_var.data_ptr<float>(), n, channels, first, momentum);
  else if (rtype == at::kFloat)
    ema_impl(running_mean.data_ptr<float>(), running_var.data_ptr<float>(), channel_mean.data_ptr<double>(),
             channel_var.data_ptr<double>(), n, channels, first, momentum);
  else if (stype == at::kFloat)
    ema_impl(running_mean.data_ptr<double>(), running_var.data_ptr<double>(), channel_mean.data_ptr<float>(),
             channel_var.data_ptr<float>(), n, channels, first, momentum);
  else
    ema_impl(running_mean.data_ptr<double>(), running_var.data_ptr<double>(), channel_mean.data_ptr<double>(),
             channel_var.data_ptr<double>(), n, channels, first, momentum);
  *counter += 1;
  for (at::Tensor* t : std::initializer_list<at::Tensor*>{&running_mean, &running_var, &num_updates})
    t->unsafeGetTensorImpl()->bump_version();
  return true;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native CPU kernels of Dynamic Group Normalization (see dgn_plugins/kernels/cpu_native.py)";
  m.def("forward", &forward, "DGN forward: (y, channel_mean, channel_var, group_mean, group_rstd)", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("group_id"), py::arg("group_count"), py::arg("num_groups"),
        py::arg("eps"));
  m.def("backward", &backward, "DGN backward: (dx, dweight, dbias), None where not needed", py::arg("grad_y"),
        py::arg("x"), py::arg("weight"), py::arg("group_mean"), py::arg("group_rstd"), py::arg("group_id"),
        py::arg("group_count"), py::arg("num_groups"), py::arg("needs_dx"), py::arg("needs_dweight"),
        py::arg("needs_dbias"));
  m.def("apply", &apply,
        "Differentiable forward (y, channel_mean, channel_var), the backward in C++; the statistics are not "
        "differentiable",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("group_id"), py::arg("group_count"),
        py::arg("num_groups"), py::arg("eps"));
  m.def("ema_update_", &ema_update_,
        "In-place EMA of the layer's running channel statistics; False (nothing done) for tensors it does not handle");
  m.def("supported_isas", &supported_isas, "Instruction sets the row loops can use on this CPU, best first");
  m.def("set_isa", &set_isa, "Use one instruction set's row loops ('' = best); returns the one in use",
        py::arg("isa") = "");
  m.def("isa", []() { return g_isa; }, "Instruction set of the row loops in use");
}
