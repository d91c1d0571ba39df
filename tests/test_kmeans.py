"""Size-constrained k-means: exact bounds, exact assignment and 1-D steps, determinism, errors."""
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from scipy.sparse import coo_matrix, vstack

from dgn_plugins.regrouping.solver import (
    ConstrainedKMeansResult,
    constrained_assignment,
    inertia_of,
    kmeans,
    size_constrained_kmeans,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module", params=["compiled", "numpy"])
def solver_code(request):
    """Every test runs on the compiled inner loops and on the numpy reference."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGN_KMEANS_NATIVE", "1" if request.param == "compiled" else "0")
        if request.param == "compiled":
            require_compiled_code()
        yield request.param


@st.composite
def problems(draw, max_points=40, dims=(1, 2, 3)):
    """Feasible (X, k, size_min, size_max) with ties, duplicates and constant columns."""
    n = draw(st.integers(1, max_points))
    k = draw(st.integers(1, n))
    size_min = draw(st.integers(1, n // k))
    size_max = draw(st.integers(max(size_min, -(-n // k)), n))
    d = draw(st.sampled_from(dims))
    grid = draw(st.sampled_from([2, 5, 1000]))  # a coarse grid makes many duplicate points
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    X = rng.integers(0, grid, size=(n, d)).astype(np.float64)
    if d > 1 and draw(st.booleans()):
        X[:, draw(st.integers(0, d - 1))] = 3.0  # a constant column
    return X, k, size_min, size_max


def sizes_of(labels, k):
    return np.bincount(labels, minlength=k)


def brute_force_labels(n, k, size_min, size_max):
    for labels in itertools.product(range(k), repeat=n):
        sizes = np.bincount(labels, minlength=k)
        if sizes.min() >= size_min and sizes.max() <= size_max:
            yield np.array(labels)


def lp_optimum(cost, size_min, size_max):
    """Optimal value of the transportation LP (totally unimodular, so integral)."""
    n, k = cost.shape
    cols = np.arange(n * k)
    one_cluster = coo_matrix((np.ones(n * k), (np.repeat(np.arange(n), k), cols)), shape=(n, n * k))
    load = coo_matrix((np.ones(n * k), (np.tile(np.arange(k), n), cols)), shape=(k, n * k))
    res = linprog(cost.ravel(), A_ub=vstack([load, -load]),
                  b_ub=np.concatenate([np.full(k, size_max), np.full(k, -size_min)]),
                  A_eq=one_cluster, b_eq=np.ones(n), bounds=(0, 1), method="highs")
    assert res.status == 0
    return res.fun


def clustered_points(n, d, rng):
    """Channel-statistics-like features: mixture means, lognormal variances, z-scored."""
    means = rng.choice([-1.0, 0.2, 1.5], size=n) + 0.3 * rng.normal(size=n)
    variances = np.exp(rng.normal(-1.0, 0.7, size=n))
    X = np.stack([means, variances] + [rng.normal(size=n) for _ in range(d - 2)], axis=1)[:, :d]
    return (X - X.mean(axis=0)) / X.std(axis=0)


# ------------------------------------------------------------------ bounds and result shape

@FAST
@given(problems())
def test_bounds_are_always_exact(problem):
    X, k, size_min, size_max = problem
    result = size_constrained_kmeans(X, k, size_min, size_max, n_init=2, seed=1)
    assert isinstance(result, ConstrainedKMeansResult)
    assert result.labels.dtype == np.int64 and result.labels.shape == (X.shape[0],)
    sizes = sizes_of(result.labels, k)
    assert sizes.min() >= size_min and sizes.max() <= size_max
    assert result.centers.shape == (k, X.shape[1]) and result.centers.dtype == np.float64
    assert result.inertia == pytest.approx(inertia_of(X, result.labels, k), rel=1e-9, abs=1e-9)
    expected_centers = np.stack([X[result.labels == j].mean(axis=0) for j in range(k)])
    np.testing.assert_allclose(result.centers, expected_centers, atol=1e-9)


def test_one_dimensional_input_and_column_are_the_same_problem():
    x = np.random.default_rng(0).normal(size=50)
    flat = size_constrained_kmeans(x, 5, 8, 12)
    column = size_constrained_kmeans(x[:, None], 5, 8, 12)
    np.testing.assert_array_equal(flat.labels, column.labels)
    assert flat.n_iter == 0 and flat.centers.shape == (5, 1)


def test_tight_bounds_give_equal_sizes():
    X = clustered_points(96, 2, np.random.default_rng(3))
    result = size_constrained_kmeans(X, 6, 16, 16, n_init=3)
    assert (sizes_of(result.labels, 6) == 16).all()


# ------------------------------------------------------------------ determinism and init_labels

def test_same_seed_same_result_and_seed_matters():
    X = clustered_points(300, 2, np.random.default_rng(4))
    first = size_constrained_kmeans(X, 20, 8, 24, seed=7)
    again = size_constrained_kmeans(X, 20, 8, 24, seed=7)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.inertia == again.inertia and first.n_iter == again.n_iter
    others = {size_constrained_kmeans(X, 20, 8, 24, seed=s, n_init=1).inertia for s in range(4)}
    assert len(others) > 1  # the seed really drives the k-means++ starts


@FAST
@given(problems(max_points=30, dims=(2, 3)), st.integers(0, 2**32 - 1))
def test_never_worse_than_init_labels(problem, seed):
    X, k, size_min, size_max = problem
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    # a random feasible labelling: size_min each, the rest spread within size_max
    sizes = np.full(k, size_min)
    for _ in range(n - k * size_min):
        sizes[rng.choice(np.flatnonzero(sizes < size_max))] += 1
    init = rng.permutation(np.repeat(np.arange(k), sizes))
    result = size_constrained_kmeans(X, k, size_min, size_max, n_init=1, seed=seed, init_labels=init)
    assert result.inertia <= inertia_of(X, init, k)


def test_init_labels_alone_lead_to_a_lloyd_fixed_point():
    X = clustered_points(200, 2, np.random.default_rng(5))
    init = np.repeat(np.arange(10), 20)  # arbitrary, feasible, poor
    result = size_constrained_kmeans(X, 10, 15, 25, n_init=1, tol=0.0, init_labels=init)
    assert result.inertia < 0.8 * inertia_of(X, init, 10)
    # converged: the labels are an optimal constrained assignment for their own centres
    cost = ((X[:, None, :] - result.centers[None]) ** 2).sum(axis=2)
    labels, _ = constrained_assignment(cost, 15, 25)
    own = cost[np.arange(200), result.labels].sum()
    assert own == pytest.approx(cost[np.arange(200), labels].sum(), rel=1e-12)


# ------------------------------------------------------------------ exactness

@pytest.mark.parametrize("case", range(25))
def test_one_dimensional_solver_is_globally_optimal(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(2, 9))
    k = int(rng.integers(1, min(n, 3) + 1))
    size_min = int(rng.integers(1, n // k + 1))
    size_max = int(rng.integers(max(size_min, -(-n // k)), n + 1))
    x = rng.integers(0, 6, size=n).astype(float) if case % 3 == 0 else rng.normal(size=n)
    best = min(inertia_of(x, labels, k) for labels in brute_force_labels(n, k, size_min, size_max))
    result = size_constrained_kmeans(x, k, size_min, size_max)
    assert result.inertia == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("case", range(40))
def test_assignment_step_matches_brute_force(case):
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(1, 8))
    k = int(rng.integers(1, min(n, 3) + 1))
    size_min = int(rng.integers(1, n // k + 1))
    size_max = int(rng.integers(max(size_min, -(-n // k)), n + 1))
    X = rng.normal(size=(n, 2)) if case % 2 else rng.integers(0, 3, size=(n, 2)).astype(float)
    centers = rng.normal(size=(k, 2))
    cost = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
    best = min(cost[np.arange(n), labels].sum()
               for labels in brute_force_labels(n, k, size_min, size_max))
    potentials = None if case % 3 == 0 else rng.normal(scale=2.0, size=k)  # warm or not
    labels, prices = constrained_assignment(cost, size_min, size_max, potentials=potentials)
    sizes = sizes_of(labels, k)
    assert sizes.min() >= size_min and sizes.max() <= size_max
    assert cost[np.arange(n), labels].sum() == pytest.approx(best, rel=1e-12, abs=1e-12)
    # the returned prices certify optimality: every point sits at a cheapest reduced cost
    reduced = cost - prices
    assert (reduced[np.arange(n), labels] <= reduced.min(axis=1) + 1e-9).all()
    assert (sizes[prices > 1e-9] == size_min).all() and (sizes[prices < -1e-9] == size_max).all()


@pytest.mark.parametrize("case", range(12))
def test_assignment_step_matches_linear_programme_and_warm_starts(case):
    rng = np.random.default_rng(200 + case)
    n = int(rng.integers(40, 160))
    k = int(rng.integers(2, 13))
    size_min = int(rng.integers(1, n // k + 1))
    size_max = max(size_min + int(rng.integers(0, 8)), -(-n // k))
    X = clustered_points(n, 2, rng)
    centers = X[rng.choice(n, k, replace=False)]
    cost = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
    labels, prices = constrained_assignment(cost, size_min, size_max)
    assert cost[np.arange(n), labels].sum() == pytest.approx(lp_optimum(cost, size_min, size_max),
                                                             rel=1e-10, abs=1e-10)
    # the next Lloyd step: centres move a little, the solver starts from the last prices
    moved = centers + 0.1 * rng.normal(size=centers.shape)
    cost2 = ((X[:, None, :] - moved[None]) ** 2).sum(axis=2)
    labels2, _ = constrained_assignment(cost2, size_min, size_max, potentials=prices,
                                        previous_labels=labels)
    sizes = sizes_of(labels2, k)
    assert sizes.min() >= size_min and sizes.max() <= size_max
    assert cost2[np.arange(n), labels2].sum() == pytest.approx(
        lp_optimum(cost2, size_min, size_max), rel=1e-10, abs=1e-10)


def test_assignment_step_is_optimal_on_many_random_instances():
    """Many small warm and cold solves: rare tie-breaking paths must stay exact too."""
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(10, 80))
        k = int(rng.integers(2, 10))
        size_min = int(rng.integers(1, n // k + 1))
        size_max = max(size_min + int(rng.integers(0, 6)), -(-n // k))
        X = clustered_points(n, 2, rng) if trial % 2 else np.round(rng.normal(size=(n, 2)), 1)
        centers = X[rng.choice(n, k, replace=False)] + 0.01 * rng.normal(size=(k, 2))
        cost = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
        labels, prices = constrained_assignment(cost, size_min, size_max)
        assert cost[np.arange(n), labels].sum() <= lp_optimum(cost, size_min, size_max) + 1e-9
        moved = centers + 0.2 * rng.normal(size=centers.shape)
        cost = ((X[:, None, :] - moved[None]) ** 2).sum(axis=2)
        labels, _ = constrained_assignment(cost, size_min, size_max, potentials=prices,
                                           previous_labels=labels)
        assert cost[np.arange(n), labels].sum() <= lp_optimum(cost, size_min, size_max) + 1e-9


@pytest.mark.parametrize("n,k,size_min,size_max", [
    (600, 30, 8, 24),    # one coarse level (300 points) prices the cold start
    (1100, 50, 10, 30),  # two coarse levels (550, then 275 points)
    (600, 30, 20, 20),   # equal sizes: the coarse bounds are equal too
])
def test_cold_start_from_coarse_prices_is_still_exact(n, k, size_min, size_max):
    """Large cold solves start from the prices of a half-size problem; the result stays optimal."""
    from dgn_plugins.regrouping.solver.transport import _COARSE_MIN_POINTS
    assert n // 2 >= _COARSE_MIN_POINTS  # the coarse path really runs
    rng = np.random.default_rng(n + k)
    X = clustered_points(n, 2, rng)
    centers = X[rng.choice(n, k, replace=False)]  # badly unbalanced, like k-means++ seeds
    cost = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
    labels, prices = constrained_assignment(cost, size_min, size_max)
    sizes = sizes_of(labels, k)
    assert sizes.min() >= size_min and sizes.max() <= size_max
    assert cost[np.arange(n), labels].sum() == pytest.approx(lp_optimum(cost, size_min, size_max),
                                                             rel=1e-10, abs=1e-10)
    reduced = cost - prices
    assert (reduced[np.arange(n), labels] <= reduced.min(axis=1) + 1e-9).all()
    assert (sizes[prices > 1e-9] == size_min).all() and (sizes[prices < -1e-9] == size_max).all()


@pytest.mark.parametrize("case", range(8))
def test_no_single_move_or_swap_improves_the_result(case):
    """The exchange refinement leaves no improving Hartigan move or two-point swap."""
    rng = np.random.default_rng(300 + case)
    k = int(rng.integers(3, 8))
    if case % 2:  # loose bounds: moves and swaps
        n = int(rng.integers(30, 60))
        size_min, size_max = max(1, n // (2 * k)), -(-3 * n // (2 * k))
    else:  # equal sizes: only swaps can help
        size_min = size_max = int(rng.integers(4, 9))
        n = k * size_min
    X = clustered_points(n, 2, rng)
    result = size_constrained_kmeans(X, k, size_min, size_max, n_init=2, seed=case)
    labels, sizes = result.labels, sizes_of(result.labels, k)
    floor = result.inertia - 1e-9 * result.inertia
    for i in range(n):
        a = labels[i]
        for b in range(k):
            if b != a and sizes[a] > size_min and sizes[b] < size_max:
                trial = labels.copy()
                trial[i] = b
                assert inertia_of(X, trial, k) >= floor
        for j in range(i + 1, n):
            if labels[j] != a:
                trial = labels.copy()
                trial[i], trial[j] = labels[j], a
                assert inertia_of(X, trial, k) >= floor


def test_lloyd_is_at_least_as_good_as_its_best_start():
    X = clustered_points(400, 2, np.random.default_rng(6))
    several = size_constrained_kmeans(X, 25, 8, 24, n_init=4, seed=3, n_relocations=0)
    single = [size_constrained_kmeans(X, 25, 8, 24, n_init=1, seed=s, n_relocations=0).inertia
              for s in range(2)]
    assert several.inertia <= max(single)  # best of four draws from the same seed stream
    assert several.n_iter >= 1


def test_relocation_trials_only_improve_and_stay_feasible():
    X = clustered_points(400, 2, np.random.default_rng(9))
    plain = size_constrained_kmeans(X, 25, 8, 24, n_init=1, seed=2, n_relocations=0)
    swapped = size_constrained_kmeans(X, 25, 8, 24, n_init=1, seed=2, n_relocations=15)
    again = size_constrained_kmeans(X, 25, 8, 24, n_init=1, seed=2, n_relocations=15)
    np.testing.assert_array_equal(swapped.labels, again.labels)  # deterministic
    sizes = sizes_of(swapped.labels, 25)
    assert sizes.min() >= 8 and sizes.max() <= 24
    assert swapped.inertia <= plain.inertia
    assert swapped.inertia == pytest.approx(inertia_of(X, swapped.labels, 25), rel=1e-12)
    # the result is still a Lloyd fixed point: its labels are optimal for its own centres
    cost = ((X[:, None, :] - swapped.centers[None]) ** 2).sum(axis=2)
    labels, _ = constrained_assignment(cost, 8, 24)
    assert cost[np.arange(400), swapped.labels].sum() <= cost[np.arange(400), labels].sum() * (1 + 1e-9)


def test_relocation_trials_beat_more_plain_starts():
    """Moving centres across the data finds what extra Lloyd starts rarely do."""
    X = clustered_points(512, 2, np.random.default_rng(10))
    plain = size_constrained_kmeans(X, 32, 8, 24, n_init=6, seed=0, n_relocations=0)
    swapped = size_constrained_kmeans(X, 32, 8, 24, n_init=1, seed=0, n_relocations=20)
    assert swapped.inertia < plain.inertia


def test_inertia_of_counts_each_cluster_around_its_mean():
    X = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [10.0, 12.0]])
    assert inertia_of(X, [0, 0, 1, 1], 2) == pytest.approx(2.0 + 2.0)
    assert inertia_of(X, [0, 1, 0, 1], 2) == pytest.approx(2 * (5**2 + 5**2) + 2 * (4**2 + 6**2))


def test_close_to_k_means_constrained_reference():
    reference = pytest.importorskip("k_means_constrained")
    X = clustered_points(128, 2, np.random.default_rng(8))
    theirs = reference.KMeansConstrained(n_clusters=8, size_min=8, size_max=24, random_state=0).fit(X)
    ours = size_constrained_kmeans(X, 8, 8, 24, seed=0)
    assert ours.inertia <= 1.02 * inertia_of(X, theirs.labels_, 8)


def require_compiled_code():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGN_KMEANS_NATIVE", "1")
        if kmeans._compiled() is None:
            pytest.skip("dgn_plugins._kmeans is not built (pip install --no-build-isolation -e .)")


def test_compiled_and_numpy_code_agree():
    """Both find the same optimal assignments and the same Lloyd iterates (no ties here)."""
    require_compiled_code()
    rng = np.random.default_rng(21)
    X = clustered_points(600, 2, rng)
    centers = X[rng.choice(600, 40, replace=False)]
    cost = ((X[:, None, :] - centers[None]) ** 2).sum(axis=2)
    runs = {}
    for flag in ("1", "0"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DGN_KMEANS_NATIVE", flag)
            labels, prices = constrained_assignment(cost, 10, 20)
            lloyd, _ = kmeans._lloyd(X, centers, None, 10, 20, 300, 0.0)
            runs[flag] = (labels, cost[np.arange(600), labels].sum(), lloyd)
    np.testing.assert_array_equal(runs["1"][0], runs["0"][0])
    assert runs["1"][1] == pytest.approx(runs["0"][1], rel=1e-12)
    np.testing.assert_array_equal(runs["1"][2].labels, runs["0"][2].labels)
    assert runs["1"][2].inertia == pytest.approx(runs["0"][2].inertia, rel=1e-12)
    assert runs["1"][2].n_iter == runs["0"][2].n_iter


def test_switch_selects_the_numpy_code():
    require_compiled_code()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DGN_KMEANS_NATIVE", "0")
        assert kmeans._compiled() is None


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("n,k,size_min,size_max", [
    (10, 3, 4, 5),   # k * size_min > n
    (10, 3, 1, 3),   # k * size_max < n
    (10, 2, 0, 10),  # size_min < 1
    (10, 2, 6, 5),   # size_min > size_max
    (10, 0, 1, 10),  # k < 1
])
def test_infeasible_bounds_name_the_numbers(n, k, size_min, size_max):
    with pytest.raises(ValueError) as err:
        size_constrained_kmeans(np.zeros((n, 2)), k, size_min, size_max)
    message = str(err.value)
    for part in (f"n={n}", f"k={k}", f"size_min={size_min}", f"size_max={size_max}"):
        assert part in message


@pytest.mark.parametrize("X,match", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or infinite"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or infinite"),
    (np.zeros((2, 2, 2)), "shape"),
    (np.zeros((0, 2)), "at least one point"),
    (np.zeros((3, 0)), "at least one point"),
    ([["a", "b"], ["c", "d"]], "numeric"),
])
def test_bad_points_are_rejected(X, match):
    with pytest.raises(ValueError, match=match):
        size_constrained_kmeans(X, 1, 1, 3)


@pytest.mark.parametrize("init,match", [
    (np.zeros(5, dtype=int), "shape"),
    (np.array([0, 0, 1, 1, 2, 9]), r"lie in \[0, 3\)"),
    (np.array([0, 0, 0, 0, 1, 2]), "size bounds"),
    (np.array([0, 0.5, 1, 1, 2, 2]), "integers"),
])
def test_bad_init_labels_are_rejected(init, match):
    with pytest.raises(ValueError, match=match):
        size_constrained_kmeans(np.arange(12.0).reshape(6, 2), 3, 2, 2, init_labels=init)


def test_auto_starts_spend_more_on_smaller_problems():
    assert kmeans.auto_starts(2048, 128) == 3  # the largest layers keep the solver fast
    assert kmeans.auto_starts(128, 8) == 30  # a few dissolved groups: starts are cheap
    assert 3 < kmeans.auto_starts(1024, 64) < 30
    assert kmeans.auto_relocations(2048, 128) == 15 and kmeans.auto_relocations(128, 8) == 60
    X = clustered_points(128, 2, np.random.default_rng(4))
    auto = size_constrained_kmeans(X, 8, 8, 24, seed=1)
    explicit = size_constrained_kmeans(X, 8, 8, 24, seed=1, n_init=30, n_relocations=60)
    np.testing.assert_array_equal(auto.labels, explicit.labels)


@pytest.mark.parametrize("kwargs", [dict(n_init=0), dict(n_init="many"), dict(max_iter=0), dict(tol=-1.0),
                                    dict(tol=float("nan")), dict(n_relocations=-1),
                                    dict(n_relocations=1.5)])
def test_bad_run_settings_are_rejected(kwargs):
    with pytest.raises(ValueError):
        size_constrained_kmeans(np.zeros((4, 2)), 2, 1, 3, **kwargs)


def test_assignment_rejects_bad_costs():
    with pytest.raises(ValueError, match="finite"):
        constrained_assignment(np.array([[0.0, np.nan]]), 1, 1)
    with pytest.raises(ValueError, match="size_min=2"):
        constrained_assignment(np.zeros((3, 2)), 2, 3)
    with pytest.raises(ValueError, match="potentials"):
        constrained_assignment(np.zeros((4, 2)), 1, 3, potentials=[0.0])
