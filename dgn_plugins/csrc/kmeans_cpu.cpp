// Compiled inner loops of dgn_plugins.regrouping.solver (2-D and wider features), built as dgn_plugins._kmeans.
//
// The same algorithms as the numpy code in regrouping/solver/ (kmeans.py, transport.py), which stays the reference
// and the fallback: Lloyd iterations whose assignment step is an exact
// size-bounded transportation problem, solved by successive shortest paths on
// the (k + 1)-node graph of clusters plus a slack node and warm-started from the
// previous step's prices; and Hartigan moves / two-point swaps with exact gains.
// In Python every shortest-path round and every swap batch costs a dozen numpy
// calls; here a round is a dense O(k^2) Dijkstra, so the solver's hundreds of
// Lloyd steps fit in the time the reference spends on a few.
//
// Conventions (as kmeans.py): cost[i * k + j] is the cost of point i in cluster
// j; prices P certify optimality when every point sits in a cluster minimising
// cost[i, j] - P[j], a cluster with P > 0 is at size_min and one with P < 0 at
// size_max.  Prices are returned relative to the slack node (its price is 0).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace py = pybind11;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
using Index = int64_t;
using Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using Labels = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// ---------------------------------------------------------------- transport

class Transport {
 public:
  // `largest`: max |cost| if the caller knows it (else one pass finds it); it
  // scales the tolerance of the tie and tightness tests.
  Transport(const double* cost, Index n, Index k, Index size_min, Index size_max, double largest = -1.0)
      : cost_(cost), n_(n), k_(k), size_min_(size_min), room_(size_max - size_min) {
    if (largest < 0.0)
      for (Index t = 0; t < n * k; ++t) largest = std::max(largest, std::abs(cost[t]));
    tol_ = 1e-12 * std::max(1.0, largest);
  }

  // Optimal labels and their prices; `prices` (k values) and `previous` (n labels)
  // may be empty.  Throws std::runtime_error if no progress is possible (infeasible bounds).
  void solve(const std::vector<double>& start_prices, const std::vector<Index>& previous,
             std::vector<Index>& labels, std::vector<double>& prices) {
    const Index k = k_;
    std::vector<double> p(k, 0.0);
    if (!start_prices.empty()) {
      for (Index j = 0; j < k; ++j) p[j] = std::abs(start_prices[j]) <= tol_ ? 0.0 : start_prices[j];
    } else {
      coarse_prices(p);
    }
    greedy_start(p, previous);
    if (!start_prices.empty() && total_excess() > std::max<Index>(4, k / 2)) {
      // stale prices (centres moved a lot): the neutral start may be much closer
      std::vector<Index> saved_labels = labels_, saved_overflow = overflow_, saved_excess = excess_;
      const Index stale = total_excess();
      std::vector<double> zero(k, 0.0);
      greedy_start(zero, previous);
      if (total_excess() < stale) {
        p = zero;
      } else {
        labels_.swap(saved_labels);
        overflow_.swap(saved_overflow);
        excess_.swap(saved_excess);
      }
    }
    prices_.assign(p.begin(), p.end());
    prices_.push_back(0.0);  // the slack node T
    Index balance = 0;
    for (Index j = 0; j < k; ++j) balance += excess_[j];
    excess_.push_back(-balance);
    if (total_excess() > 0) run();
    labels = labels_;
    prices.resize(k);
    for (Index j = 0; j < k; ++j) prices[j] = prices_[j] - prices_[k];
  }

 private:
  const double* cost_;
  Index n_, k_, size_min_, room_;
  double tol_;
  std::vector<Index> labels_, overflow_, excess_;
  std::vector<double> prices_;
  std::vector<double> move_cost_;   // k x k, cheapest cost[i, b] - cost[i, a] over i in a
  std::vector<std::vector<Index>> members_;
  std::vector<Index> open_;  // Dijkstra's unsettled nodes

  Index total_excess() const {
    Index total = 0;
    for (Index j = 0; j < k_; ++j) total += std::abs(excess_[j]);
    return total;
  }

  void greedy_start(const std::vector<double>& p, const std::vector<Index>& previous) {
    const Index n = n_, k = k_;
    labels_.assign(n, 0);
    std::vector<Index> sizes(k, 0);
    for (Index i = 0; i < n; ++i) {
      const double* row = cost_ + i * k;
      Index best = 0;
      double best_value = row[0] - p[0];
      for (Index j = 1; j < k; ++j) {
        const double value = row[j] - p[j];
        if (value < best_value) best_value = value, best = j;
      }
      if (!previous.empty()) {  // among equal reduced costs keep the old label
        const Index old = previous[i];
        if (row[old] - p[old] <= best_value + tol_) best = old;
      }
      labels_[i] = best;
      ++sizes[best];
    }
    overflow_.assign(k, 0);
    excess_.assign(k, 0);
    for (Index j = 0; j < k; ++j) {
      Index overflow = std::clamp<Index>(sizes[j] - size_min_, 0, room_);
      if (p[j] < 0) overflow = room_;  // a cluster priced below T must be full
      if (p[j] > 0) overflow = 0;      // one priced above T must be at size_min
      overflow_[j] = overflow;
      excess_[j] = sizes[j] - size_min_ - overflow;
    }
  }

  // Start prices for a cold solve: the exact prices of half the points with halved
  // bounds, recursively (the loads then start near their bounds; see kmeans.py).
  void coarse_prices(std::vector<double>& p) const {
    const Index half = n_ / 2;
    if (half < 256) return;
    const Index low = std::max<Index>(1, (size_min_ * half) / n_);
    const Index high = std::max(low, -((-(size_min_ + room_) * half) / n_));
    if (k_ * low > half || k_ * high < half) return;
    std::vector<double> sub(static_cast<size_t>(half * k_));
    for (Index r = 0; r < half; ++r)  // every other point
      std::copy(cost_ + (2 * r) * k_, cost_ + (2 * r + 1) * k_, sub.begin() + r * k_);
    Transport coarse(sub.data(), half, k_, low, high, tol_ * 1e12);
    std::vector<Index> labels;
    coarse.solve({}, {}, labels, p);
    for (double& value : p)
      if (std::abs(value) <= tol_) value = 0.0;
  }

  // Row a of the move costs from scratch: O(|a| k), a branch-free (vectorised) min.
  void refresh_row(Index a) {
    const Index k = k_;
    double* row = &move_cost_[a * k];
    std::fill(row, row + k, kInf);
    for (Index i : members_[a]) lower_row(row, cost_ + i * k, a);
    row[a] = kInf;
  }

  void lower_row(double* row, const double* c, Index a) const {
    const double own = c[a];
    for (Index b = 0; b < k_; ++b) row[b] = std::min(row[b], c[b] - own);
  }

  // Point i joins cluster a: its gaps can only lower row a (O(k)).
  void add_member(Index a, Index i) {
    members_[a].push_back(i);
    double* row = &move_cost_[a * k_];
    lower_row(row, cost_ + i * k_, a);
    row[a] = kInf;
  }

  // Point i leaves cluster a: only the columns where it attained the minimum (the
  // same floating-point value) are recomputed over the remaining members.
  void remove_member(Index a, Index i) {
    const Index k = k_;
    auto& members = members_[a];
    members.erase(std::find(members.begin(), members.end(), i));
    double* row = &move_cost_[a * k];
    const double* c = cost_ + i * k;
    for (Index b = 0; b < k; ++b) {
      if (b == a || c[b] - c[a] != row[b]) continue;
      row[b] = kInf;
      for (Index m : members) row[b] = std::min(row[b], cost_[m * k + b] - cost_[m * k + a]);
    }
  }

  // The member of `tail` that attains move_cost[tail, head] (-1 if none).
  Index cheapest_mover(Index tail, Index head) const {
    const double target = move_cost_[tail * k_ + head];
    for (Index i : members_[tail])
      if (cost_[i * k_ + head] - cost_[i * k_ + tail] == target) return i;
    return -1;
  }

  // Successive shortest paths in rounds.  A round is one dense O(k^2) Dijkstra pass
  // on reduced costs: from every node with excess when those are the fewer ("pull":
  // each deficit gets a path from its nearest supply), else towards every node with
  // deficit on the reversed graph ("push": each supply gets a path to its nearest
  // deficit).  The prices then move by the distances, which makes every tree path
  // tight, and one unit is sent along each such path whose edges are still tight for
  // the current members (earlier paths of the round may have moved points).
  void run() {
    const Index k = k_, nodes = k + 1;
    members_.assign(k, {});
    for (Index i = 0; i < n_; ++i) members_[labels_[i]].push_back(i);
    move_cost_.assign(k * k, kInf);
    for (Index a = 0; a < k; ++a) refresh_row(a);
    std::vector<double> dist(nodes);
    std::vector<Index> pred(nodes), ends, path;
    std::vector<char> done(nodes);
    std::vector<std::array<Index, 3>> moves;
    Index guard = 0;
    const Index max_rounds = 4 * (n_ + k) + 16;
    while (true) {
      Index supplies = 0, deficits = 0;
      for (Index v = 0; v < nodes; ++v) supplies += excess_[v] > 0, deficits += excess_[v] < 0;
      if (supplies == 0) break;
      if (++guard > max_rounds) throw std::runtime_error("constrained assignment made no progress");
      const bool push = supplies >= deficits;
      const double farthest = shortest_paths(push, dist, pred, done);
      // Pull: P += dist; push: P -= dist (unreached nodes: the largest distance).
      // Either keeps every residual edge's reduced cost >= 0 and makes tree edges tight.
      ends.clear();
      for (Index v = 0; v < nodes; ++v) {
        const double step = done[v] ? dist[v] : farthest;
        prices_[v] += push ? -step : step;
        if (done[v] && (push ? excess_[v] > 0 : excess_[v] < 0)) ends.push_back(v);
      }
      if (ends.empty()) throw std::runtime_error("constrained assignment: infeasible size bounds");
      std::stable_sort(ends.begin(), ends.end(), [&](Index a, Index b) { return dist[a] < dist[b]; });
      bool first = true;
      for (Index end : ends) {
        path.assign(1, end);  // along the tree to its root
        while (pred[path.back()] >= 0) path.push_back(pred[path.back()]);
        if (push) std::reverse(path.begin(), path.end());  // now target first, source last
        const Index source = path.back(), target = path.front();
        if (excess_[source] <= 0 || excess_[target] >= 0) continue;
        if (!tight_moves(path, first, moves)) continue;
        first = false;
        apply(path, moves);
        --excess_[source];
        ++excess_[target];
      }
    }
  }

  // Dense Dijkstra on reduced costs from the supplies (pull) or, on the reversed
  // graph, from the deficits (push).  It stops once every node at the other end
  // (the deficits, or the supplies) is settled; `done` marks the settled nodes and
  // the return value is the last settled distance (a cap for the others').
  double shortest_paths(bool push, std::vector<double>& dist, std::vector<Index>& pred,
                        std::vector<char>& done) {
    const Index k = k_, nodes = k + 1, slack = k;
    Index wanted = 0, open_count = nodes;
    open_.resize(nodes);
    for (Index v = 0; v < nodes; ++v) {
      const bool root = push ? excess_[v] < 0 : excess_[v] > 0;
      wanted += push ? excess_[v] > 0 : excess_[v] < 0;
      dist[v] = root ? 0.0 : kInf;
      pred[v] = -1;
      done[v] = 0;
      open_[v] = v;
    }
    double farthest = 0.0;
    while (open_count > 0 && wanted > 0) {
      Index at = -1;
      double best = kInf;
      for (Index r = 0; r < open_count; ++r)
        if (dist[open_[r]] < best) best = dist[open_[r]], at = r;
      if (at < 0) break;
      const Index u = open_[at];
      open_[at] = open_[--open_count];
      done[u] = 1;
      farthest = best;
      wanted -= push ? excess_[u] > 0 : excess_[u] < 0;
      const double pu = prices_[u];
      for (Index r = 0; r < open_count; ++r) {
        const Index v = open_[r];
        // the edge u -> v (pull) or v -> u (push), if it exists, and its reduced cost
        double edge;
        if (u == slack) {
          edge = push ? (overflow_[v] < room_ ? 0.0 : kInf) : (overflow_[v] > 0 ? 0.0 : kInf);
        } else if (v == slack) {
          edge = push ? (overflow_[u] > 0 ? 0.0 : kInf) : (overflow_[u] < room_ ? 0.0 : kInf);
        } else {
          edge = push ? move_cost_[v * k + u] : move_cost_[u * k + v];
        }
        if (edge == kInf) continue;
        const double reduced = std::max(0.0, push ? edge + prices_[v] - pu : edge + pu - prices_[v]);
        if (best + reduced < dist[v]) dist[v] = best + reduced, pred[v] = u;
      }
    }
    return farthest;
  }

  // Send one unit along `path` (target first): overflow edges and point moves.
  void apply(const std::vector<Index>& path, const std::vector<std::array<Index, 3>>& moves) {
    const Index slack = k_;
    for (size_t step = 0; step + 1 < path.size(); ++step) {
      const Index head = path[step], tail = path[step + 1];
      if (head == slack) ++overflow_[tail];
      if (tail == slack) --overflow_[head];
    }
    for (const auto& move : moves) {  // (point, from, to)
      const Index point = move[0], from = move[1], to = move[2];
      remove_member(from, point);
      add_member(to, point);
      labels_[point] = to;
    }
  }

  // The point moves of `path` (target first) if every edge of it is still usable
  // and tight for the current members and overflows (always, when `force`).
  bool tight_moves(const std::vector<Index>& path, bool force, std::vector<std::array<Index, 3>>& moves) const {
    const Index k = k_, slack = k_;
    const double slack_tol = tol_ * 1e3;
    moves.clear();
    for (size_t step = 0; step + 1 < path.size(); ++step) {
      const Index head = path[step], tail = path[step + 1];
      if (head == slack) {
        if (overflow_[tail] >= room_) return false;
      } else if (tail == slack) {
        if (overflow_[head] <= 0) return false;
      } else {
        const Index best_point = cheapest_mover(tail, head);
        const double best = move_cost_[tail * k + head];
        if (best_point < 0) return false;
        if (!force && best + prices_[tail] - prices_[head] > slack_tol) return false;
        moves.push_back({best_point, tail, head});
      }
    }
    return true;
  }
};

// ---------------------------------------------------------------- Lloyd helpers

// All point-centre squared distances, feature by feature (vectorises over the
// centres); returns the largest.
double squared_distances(const double* points, const double* centers, Index n, Index k, Index d,
                         std::vector<double>& out) {
  out.resize(static_cast<size_t>(n * k));
  std::vector<double> column(static_cast<size_t>(k * d));  // centres, feature-major
  for (Index j = 0; j < k; ++j)
    for (Index f = 0; f < d; ++f) column[f * k + j] = centers[j * d + f];
  double largest = 0.0;
  for (Index i = 0; i < n; ++i) {
    const double* x = points + i * d;
    double* row = &out[i * k];
    std::fill(row, row + k, 0.0);
    for (Index f = 0; f < d; ++f) {
      const double value = x[f];
      const double* c = &column[f * k];
      for (Index j = 0; j < k; ++j) {
        const double diff = value - c[j];
        row[j] += diff * diff;
      }
    }
    for (Index j = 0; j < k; ++j) largest = std::max(largest, row[j]);
  }
  return largest;
}

void cluster_means(const double* points, const std::vector<Index>& labels, Index n, Index k, Index d,
                   std::vector<double>& centers) {
  centers.assign(static_cast<size_t>(k * d), 0.0);
  std::vector<double> sizes(k, 0.0);
  for (Index i = 0; i < n; ++i) {
    const Index j = labels[i];
    sizes[j] += 1.0;
    for (Index f = 0; f < d; ++f) centers[j * d + f] += points[i * d + f];
  }
  for (Index j = 0; j < k; ++j)
    for (Index f = 0; f < d; ++f) centers[j * d + f] /= std::max(sizes[j], 1.0);
}

double inertia(const double* points, const std::vector<Index>& labels, const std::vector<double>& centers,
               Index n, Index d) {
  double total = 0.0;
  for (Index i = 0; i < n; ++i)
    for (Index f = 0; f < d; ++f) {
      const double diff = points[i * d + f] - centers[labels[i] * d + f];
      total += diff * diff;
    }
  return total;
}

std::vector<Index> to_labels(const py::object& object, Index n, const char* name) {
  std::vector<Index> out;
  if (object.is_none()) return out;
  Labels array = object.cast<Labels>();
  if (array.ndim() != 1 || array.shape(0) != n)
    throw std::invalid_argument(std::string(name) + " must have shape (n,)");
  out.assign(array.data(), array.data() + n);
  return out;
}

std::vector<double> to_prices(const py::object& object, Index k) {
  std::vector<double> out;
  if (object.is_none()) return out;
  Array array = object.cast<Array>();
  if (array.ndim() != 1 || array.shape(0) != k) throw std::invalid_argument("prices must have shape (k,)");
  out.assign(array.data(), array.data() + k);
  return out;
}

void check_labels(const std::vector<Index>& labels, Index k) {
  for (Index label : labels)
    if (label < 0 || label >= k) throw std::invalid_argument("labels must lie in [0, k)");
}

py::array_t<int64_t> labels_array(const std::vector<Index>& labels) {
  py::array_t<int64_t> out(static_cast<py::ssize_t>(labels.size()));
  std::copy(labels.begin(), labels.end(), out.mutable_data());
  return out;
}

py::array_t<double> doubles_array(const std::vector<double>& values, std::vector<py::ssize_t> shape) {
  py::array_t<double> out(shape);
  std::copy(values.begin(), values.end(), out.mutable_data());
  return out;
}

// ---------------------------------------------------------------- bindings

py::tuple assign(Array cost, Index size_min, Index size_max, py::object prices, py::object previous) {
  if (cost.ndim() != 2) throw std::invalid_argument("cost must be 2-D");
  const Index n = cost.shape(0), k = cost.shape(1);
  std::vector<double> start = to_prices(prices, k);
  std::vector<Index> prev = to_labels(previous, n, "previous_labels");
  check_labels(prev, k);
  std::vector<Index> labels;
  std::vector<double> out_prices;
  {
    py::gil_scoped_release release;
    Transport(cost.data(), n, k, size_min, size_max).solve(start, prev, labels, out_prices);
  }
  return py::make_tuple(labels_array(labels), doubles_array(out_prices, {static_cast<py::ssize_t>(k)}));
}

// One Lloyd run with exact constrained assignments (kmeans.py's _lloyd): returns
// (labels, centres, inertia, n_iter) of the best iterate and the last prices.
py::tuple lloyd(Array points_array, Array centers_array, py::object start_labels, Index size_min,
                Index size_max, Index max_iter, double shift_tol, py::object start_prices) {
  if (points_array.ndim() != 2 || centers_array.ndim() != 2 || points_array.shape(1) != centers_array.shape(1))
    throw std::invalid_argument("points (n, d) and centers (k, d) must share d");
  const Index n = points_array.shape(0), d = points_array.shape(1), k = centers_array.shape(0);
  const double* points = points_array.data();
  std::vector<double> centers(centers_array.data(), centers_array.data() + k * d);
  std::vector<Index> previous = to_labels(start_labels, n, "labels");
  check_labels(previous, k);
  std::vector<double> prices = to_prices(start_prices, k);

  std::vector<Index> best_labels;
  std::vector<double> best_centers;
  double best_inertia = kInf;
  Index best_iter = 0;
  {
    py::gil_scoped_release release;
    if (!previous.empty()) {  // a start from labels counts as an iterate
      best_labels = previous;
      best_centers = centers;
      best_inertia = inertia(points, previous, centers, n, d);
    }
    std::vector<double> cost, new_centers;
    std::vector<Index> labels;
    for (Index iteration = 1; iteration <= max_iter; ++iteration) {
      const double largest = squared_distances(points, centers.data(), n, k, d, cost);
      std::vector<double> next_prices;
      Transport(cost.data(), n, k, size_min, size_max, largest).solve(prices, previous, labels, next_prices);
      prices.swap(next_prices);
      cluster_means(points, labels, n, k, d, new_centers);
      const double value = inertia(points, labels, new_centers, n, d);
      if (best_labels.empty() || value <= best_inertia) {
        best_labels = labels;
        best_centers = new_centers;
        best_inertia = value;
        best_iter = iteration;
      }
      double shift = 0.0;
      for (Index t = 0; t < k * d; ++t) shift += (new_centers[t] - centers[t]) * (new_centers[t] - centers[t]);
      centers.swap(new_centers);
      if ((!previous.empty() && labels == previous) || shift <= shift_tol) break;
      previous = labels;
    }
  }
  return py::make_tuple(labels_array(best_labels),
                        doubles_array(best_centers, {static_cast<py::ssize_t>(k), static_cast<py::ssize_t>(d)}),
                        best_inertia, best_iter,
                        doubles_array(prices, {static_cast<py::ssize_t>(k)}));
}

// Hartigan moves and two-point swaps with exact gains, applied one at a time
// (first improvement) until a full pass finds none.  Moving x from a to b changes
// the inertia by s_b/(s_b+1)|x-c_b|^2 - s_a/(s_a-1)|x-c_a|^2; swapping x (in a)
// with y (in b) by |y-c_a|^2 - |x-c_a|^2 + |x-c_b|^2 - |y-c_b|^2 - |x-y|^2 (1/s_a + 1/s_b).
// Swaps are searched between each cluster and its `neighbours` nearest clusters.
py::array_t<int64_t> exchange(Array points_array, Labels labels_array_in, Index k, Index size_min, Index size_max,
                              Index neighbours, Index max_passes) {
  const Index n = points_array.shape(0), d = points_array.shape(1);
  const double* points = points_array.data();
  std::vector<Index> labels(labels_array_in.data(), labels_array_in.data() + n);
  check_labels(labels, k);
  {
    py::gil_scoped_release release;
    std::vector<double> centers;
    std::vector<double> sizes(k, 0.0);
    for (Index label : labels) sizes[label] += 1.0;
    cluster_means(points, labels, n, k, d, centers);
    const double eps = 1e-12 * std::max(inertia(points, labels, centers, n, d), 1e-300);
    auto sq = [&](const double* x, const double* y) {
      double sum = 0.0;
      for (Index f = 0; f < d; ++f) sum += (x[f] - y[f]) * (x[f] - y[f]);
      return sum;
    };
    auto shift_centre = [&](Index cluster, const double* x, double sign) {
      // add (+1) or remove (-1) point x from `cluster`, keeping its mean exact enough
      const double old_size = sizes[cluster], new_size = old_size + sign;
      for (Index f = 0; f < d; ++f)
        centers[cluster * d + f] = (centers[cluster * d + f] * old_size + sign * x[f]) / new_size;
      sizes[cluster] = new_size;
    };
    std::vector<std::vector<Index>> members(k);
    std::vector<Index> near;
    for (Index pass = 0; pass < max_passes; ++pass) {
      bool improved = false;
      for (Index i = 0; i < n; ++i) {  // moves
        const Index a = labels[i];
        if (sizes[a] <= size_min) continue;
        const double* x = points + i * d;
        const double leave = sizes[a] / (sizes[a] - 1.0) * sq(x, &centers[a * d]);
        Index target = -1;
        double best = -eps;
        for (Index b = 0; b < k; ++b) {
          if (b == a || sizes[b] >= size_max) continue;
          const double gain = sizes[b] / (sizes[b] + 1.0) * sq(x, &centers[b * d]) - leave;
          if (gain < best) best = gain, target = b;
        }
        if (target >= 0) {
          shift_centre(a, x, -1.0);
          shift_centre(target, x, 1.0);
          labels[i] = target;
          improved = true;
        }
      }
      if (neighbours > 0 && k > 1) {  // swaps between neighbouring clusters
        for (auto& list : members) list.clear();
        for (Index i = 0; i < n; ++i) members[labels[i]].push_back(i);
        const Index m = std::min(neighbours, k - 1);
        std::vector<std::pair<double, Index>> order(k);
        for (Index a = 0; a < k; ++a) {
          for (Index b = 0; b < k; ++b) order[b] = {b == a ? kInf : sq(&centers[a * d], &centers[b * d]), b};
          std::partial_sort(order.begin(), order.begin() + m, order.end());
          for (Index r = 0; r < m; ++r) {
            const Index b = order[r].second;
            Index best_i = -1, best_j = -1;
            double best = -eps;
            const double* ca = &centers[a * d];
            const double* cb = &centers[b * d];
            const double inv = 1.0 / sizes[a] + 1.0 / sizes[b];
            for (Index i : members[a]) {
              const double* x = points + i * d;
              const double xa = sq(x, ca), xb = sq(x, cb);
              for (Index j : members[b]) {
                const double* y = points + j * d;
                const double gain = sq(y, ca) - xa + xb - sq(y, cb) - sq(x, y) * inv;
                if (gain < best) best = gain, best_i = i, best_j = j;
              }
            }
            if (best_i >= 0) {
              const double* x = points + best_i * d;
              const double* y = points + best_j * d;
              shift_centre(a, x, -1.0);
              shift_centre(a, y, 1.0);
              shift_centre(b, y, -1.0);
              shift_centre(b, x, 1.0);
              labels[best_i] = b;
              labels[best_j] = a;
              auto& ma = members[a];
              auto& mb = members[b];
              *std::find(ma.begin(), ma.end(), best_i) = best_j;
              *std::find(mb.begin(), mb.end(), best_j) = best_i;
              improved = true;
            }
          }
        }
      }
      cluster_means(points, labels, n, k, d, centers);  // drop the incremental rounding
      if (!improved) break;
    }
  }
  return labels_array(labels);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled inner loops of dgn_plugins.kmeans (see kmeans_cpu.cpp)";
  m.def("assign", &assign, "exact size-bounded assignment: (labels, prices)", py::arg("cost"),
        py::arg("size_min"), py::arg("size_max"), py::arg("prices") = py::none(),
        py::arg("previous_labels") = py::none());
  m.def("lloyd", &lloyd, "one constrained Lloyd run: (labels, centers, inertia, n_iter, prices)",
        py::arg("points"), py::arg("centers"), py::arg("labels"), py::arg("size_min"), py::arg("size_max"),
        py::arg("max_iter"), py::arg("shift_tol"), py::arg("prices") = py::none());
  m.def("exchange", &exchange, "Hartigan moves and neighbour swaps until none improves: labels",
        py::arg("points"), py::arg("labels"), py::arg("k"), py::arg("size_min"), py::arg("size_max"),
        py::arg("neighbours") = 8, py::arg("max_passes") = 1000);
}
