// BatchNorm with batch statistics (+ a residual) + ReLU, fused for training on the CPU: bf16 activations in
// channels_last memory, read as rows of C channels. PyTorch's separate BatchNorm, add and ReLU read or write
// activation-sized tensors 16 times per layer with a residual and 13 without (forward and backward); these kernels 11
// and 8 (see batchnorm_relu.py for the measured gain). Statistics and sums are float within a task of rows and double
// across tasks, added in task order: the same result for any thread count.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kRows = 256;  // rows per task
constexpr int64_t kWidth = 64;  // elements per block of the inner loops, where the channel count divides it

using Channels = std::vector<double>;

inline float to_float(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t to_bf16(float f) {  // round to nearest even, as PyTorch does; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? static_cast<uint16_t>(0x7FC0u) : static_cast<uint16_t>(rounded);
}

// v where on, else +0: a select on the bits (a conditional load would not vectorize)
inline uint16_t keep(uint16_t v, bool on) { return v & static_cast<uint16_t>(-static_cast<int>(on)); }

void check_activation(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && t.sizes() == x.sizes(), name,
              " must be a bf16 CPU tensor of x's shape");
  TORCH_CHECK(t.is_contiguous(at::MemoryFormat::ChannelsLast), name, " must be channels_last");
}

void check_per_channel(const at::Tensor& t, int64_t channels, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == channels, name,
              " must hold one float per channel");
}

Channels per_channel(const at::Tensor& t, int64_t channels, const char* name) {
  check_per_channel(t, channels, name);
  const float* p = t.data_ptr<float>();
  return Channels(p, p + channels);
}

at::Tensor to_tensor(const Channels& values, const at::Tensor& like) {
  auto out = at::empty({static_cast<int64_t>(values.size())}, like.options().dtype(at::kFloat));
  std::transform(values.begin(), values.end(), out.data_ptr<float>(), [](double v) { return static_cast<float>(v); });
  return out;
}

const uint16_t* bf16(const at::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }
uint16_t* bf16(at::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// The loops run over rows as one flat array in blocks of `width` elements, a multiple of the channel count, so that
// element j of every block is channel j % channels: per-channel values are laid out once per block, and the
// fixed-width inner loop vectorizes.
struct Layout {
  int64_t channels, rows, width;
  explicit Layout(const at::Tensor& x)
      : channels(x.size(1)), rows(x.numel() / x.size(1)), width(kWidth % x.size(1) == 0 ? kWidth : x.size(1)) {}
  std::vector<float> lay_out(const Channels& values) const {
    std::vector<float> out(width);
    for (int64_t j = 0; j < width; ++j) out[j] = static_cast<float>(values[j % channels]);
    return out;
  }
};

// op(i, j) for every element i in [begin, end) (begin on a row boundary), j its place in its block.
template <typename Op>
inline void for_each(int64_t begin, int64_t end, int64_t width, Op&& op) {
  int64_t i = begin;
  if (width == kWidth) {
    for (; i + kWidth <= end; i += kWidth)
      for (int64_t j = 0; j < kWidth; ++j) op(i + j, j);
  } else {
    for (; i + width <= end; i += width)
      for (int64_t j = 0; j < width; ++j) op(i + j, j);
  }
  for (; i < end; ++i) op(i, (i - begin) % width);
}

// op(i, j) over all elements, in parallel tasks of whole rows.
template <typename Op>
void elementwise(const Layout& l, Op&& op) {
  at::parallel_for(0, l.rows, kRows,
                   [&](int64_t r0, int64_t r1) { for_each(r0 * l.channels, r1 * l.channels, l.width, op); });
}

// Two per-channel sums over all elements, accumulate(i, j, s, t) adding element i's terms to s[j] and t[j].
template <typename Accumulate>
std::pair<Channels, Channels> channel_sums(const Layout& l, Accumulate&& accumulate) {
  const int64_t tasks = (l.rows + kRows - 1) / kRows, w = l.width;
  std::vector<double> partial(tasks * 2 * w, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> s(w), t(w);
    for (int64_t task = first; task < last; ++task) {
      std::fill(s.begin(), s.end(), 0.0f);
      std::fill(t.begin(), t.end(), 0.0f);
      float* __restrict ps = s.data();
      float* __restrict pt = t.data();
      for_each(task * kRows * l.channels, std::min(l.rows, (task + 1) * kRows) * l.channels, w,
               [&](int64_t i, int64_t j) { accumulate(i, j, ps, pt); });
      std::copy(s.begin(), s.end(), partial.begin() + task * 2 * w);
      std::copy(t.begin(), t.end(), partial.begin() + task * 2 * w + w);
    }
  });
  Channels first(l.channels, 0.0), second(l.channels, 0.0);
  for (int64_t task = 0; task < tasks; ++task)
    for (int64_t j = 0; j < w; ++j) {
      first[j % l.channels] += partial[task * 2 * w + j];
      second[j % l.channels] += partial[task * 2 * w + w + j];
    }
  return {first, second};
}

}  // namespace

// Training forward: y = relu(batch_norm(x) [+ residual]) in bf16, with the running statistics updated in place as
// nn.BatchNorm2d does (unbiased variance); returns (y, mean, 1 / std) of the batch.
std::vector<at::Tensor> forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                at::Tensor& running_mean, at::Tensor& running_var, double momentum, double eps,
                                const c10::optional<at::Tensor>& residual) {
  check_activation(x, x, "x");
  const Layout l(x);
  TORCH_CHECK(l.rows > 1, "BatchNorm needs more than one value per channel in training");
  const uint16_t* __restrict px = bf16(x);
  // statistics, shifted by the first row's values (no cancellation where the mean is far from 0)
  Channels origin(l.channels);
  for (int64_t c = 0; c < l.channels; ++c) origin[c] = to_float(px[c]);
  const auto o = l.lay_out(origin);
  const float* __restrict po = o.data();
  const auto [s1, s2] = channel_sums(l, [&](int64_t i, int64_t j, float* s, float* t) {
    const float v = to_float(px[i]) - po[j];
    s[j] += v;
    t[j] += v * v;
  });
  const Channels w = per_channel(weight, l.channels, "weight"), b = per_channel(bias, l.channels, "bias");
  Channels mean(l.channels), invstd(l.channels), scale(l.channels), shift(l.channels);
  check_per_channel(running_mean, l.channels, "running_mean");
  check_per_channel(running_var, l.channels, "running_var");
  float* rm = running_mean.data_ptr<float>();
  float* rv = running_var.data_ptr<float>();
  for (int64_t c = 0; c < l.channels; ++c) {
    const double centred = s1[c] / l.rows, var = std::max(0.0, s2[c] / l.rows - centred * centred);
    mean[c] = origin[c] + centred;
    invstd[c] = 1.0 / std::sqrt(var + eps);
    scale[c] = w[c] * invstd[c];
    shift[c] = b[c] - mean[c] * scale[c];
    rm[c] = static_cast<float>((1 - momentum) * rm[c] + momentum * mean[c]);
    rv[c] = static_cast<float>((1 - momentum) * rv[c] + momentum * var * l.rows / (l.rows - 1));
  }
  // normalise, add, rectify
  auto y = at::empty_like(x);
  uint16_t* __restrict py = bf16(y);
  const auto a = l.lay_out(scale), sh = l.lay_out(shift);
  const float* __restrict pa = a.data();
  const float* __restrict pb = sh.data();
  if (residual.has_value()) {
    check_activation(*residual, x, "residual");
    const uint16_t* __restrict pr = bf16(*residual);
    elementwise(l, [&](int64_t i, int64_t j) {
      py[i] = to_bf16(std::max(to_float(px[i]) * pa[j] + pb[j] + to_float(pr[i]), 0.0f));
    });
  } else {
    elementwise(l, [&](int64_t i, int64_t j) { py[i] = to_bf16(std::max(to_float(px[i]) * pa[j] + pb[j], 0.0f)); });
  }
  return {y, to_tensor(mean, x), to_tensor(invstd, x)};
}

// Training backward from y's gradient g: returns (x's gradient, weight's, bias's) and, with a residual (y given),
// the residual's gradient: g where y > 0, else 0. Without one, the mask is recomputed from x (y need not be read).
std::vector<at::Tensor> backward(const at::Tensor& g, const at::Tensor& x, const c10::optional<at::Tensor>& y,
                                 const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean_t,
                                 const at::Tensor& invstd_t) {
  check_activation(x, x, "x");
  check_activation(g, x, "grad");
  const Layout l(x);
  const Channels w = per_channel(weight, l.channels, "weight"), b = per_channel(bias, l.channels, "bias");
  const Channels mean = per_channel(mean_t, l.channels, "mean"), invstd = per_channel(invstd_t, l.channels, "invstd");
  Channels scale(l.channels), shift(l.channels);
  for (int64_t c = 0; c < l.channels; ++c) {
    scale[c] = w[c] * invstd[c];
    shift[c] = b[c] - mean[c] * scale[c];
  }
  const uint16_t* __restrict pg = bf16(g);
  const uint16_t* __restrict px = bf16(x);
  const auto a = l.lay_out(scale), sh = l.lay_out(shift), mu = l.lay_out(mean);
  const float* __restrict pa = a.data();
  const float* __restrict pb = sh.data();
  const float* __restrict pmu = mu.data();
  // sums of the masked gradient gm and of gm · (x - mean)
  at::Tensor masked;
  std::pair<Channels, Channels> sums;
  if (y.has_value()) {
    check_activation(*y, x, "y");
    const uint16_t* __restrict py = bf16(*y);
    masked = at::empty_like(x);
    uint16_t* __restrict pm = bf16(masked);
    sums = channel_sums(l, [&](int64_t i, int64_t j, float* s, float* t) {
      const uint16_t gb = keep(pg[i], to_float(py[i]) > 0.0f);
      const float gm = to_float(gb);
      pm[i] = gb;
      s[j] += gm;
      t[j] += gm * (to_float(px[i]) - pmu[j]);
    });
  } else {
    sums = channel_sums(l, [&](int64_t i, int64_t j, float* s, float* t) {
      const float xv = to_float(px[i]);
      const float gm = to_float(keep(pg[i], xv * pa[j] + pb[j] > 0.0f));
      s[j] += gm;
      t[j] += gm * (xv - pmu[j]);
    });
  }
  const auto& [sum_g, sum_gx] = sums;
  // x's gradient: scale · (gm - mean(gm) - x̂ · mean(gm · x̂)) = gain · gm + slope · (x - mean) + offset
  Channels gain(l.channels), slope(l.channels), offset(l.channels), grad_w(l.channels);
  for (int64_t c = 0; c < l.channels; ++c) {
    gain[c] = scale[c];
    slope[c] = -scale[c] * invstd[c] * invstd[c] * sum_gx[c] / l.rows;
    offset[c] = -scale[c] * sum_g[c] / l.rows;
    grad_w[c] = sum_gx[c] * invstd[c];
  }
  auto gx = at::empty_like(x);
  uint16_t* __restrict out = bf16(gx);
  const auto k = l.lay_out(gain), s = l.lay_out(slope), o = l.lay_out(offset);
  const float *__restrict pk = k.data(), *__restrict ps = s.data(), *__restrict poff = o.data();
  if (y.has_value()) {
    const uint16_t* __restrict pm = bf16(masked);
    elementwise(l, [&](int64_t i, int64_t j) {
      out[i] = to_bf16(pk[j] * to_float(pm[i]) + ps[j] * (to_float(px[i]) - pmu[j]) + poff[j]);
    });
    return {gx, to_tensor(grad_w, x), to_tensor(sum_g, x), masked};
  }
  elementwise(l, [&](int64_t i, int64_t j) {
    const float xv = to_float(px[i]);
    const float gm = to_float(keep(pg[i], xv * pa[j] + pb[j] > 0.0f));
    out[i] = to_bf16(pk[j] * gm + ps[j] * (xv - pmu[j]) + poff[j]);
  });
  return {gx, to_tensor(grad_w, x), to_tensor(sum_g, x)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "relu(batch_norm(x) [+ residual]) in training, running statistics updated");
  m.def("backward", &backward, "gradients of x, weight, bias [and residual]");
}
