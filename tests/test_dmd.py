"""fit_dmd against systems with known answers, a reference library, and every bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from koopt import DivergentPredictionError, fit_dmd
from koopt.core import fit_operators
from koopt.core.rank import choose_rank
from koopt.core.snapshots_space import gram_row, local_gram


def stable_system(n: int, seed: int, radius: float = 0.95) -> np.ndarray:
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    return A * radius / np.max(np.abs(np.linalg.eigvals(A)))


def trajectory(A: np.ndarray, x0: np.ndarray, T: int) -> np.ndarray:
    cols = [x0]
    for _ in range(T - 1):
        cols.append(A @ cols[-1])
    return np.stack(cols, axis=1)


def sorted_eigs(z) -> np.ndarray:
    z = np.asarray(z)
    return z[np.lexsort((np.round(z.imag, 8), np.round(z.real, 8)))]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("D_factor", [None, 40])  # square (direct path) and tall (Gram path)
def test_random_stable_system_eigenvalues_and_predictions(seed, D_factor):
    n, T = 6, 30
    A = stable_system(n, seed)
    X = trajectory(A, np.random.default_rng(seed + 10).normal(size=n), T)
    lift = None
    if D_factor:
        lift = np.linalg.qr(np.random.default_rng(seed).normal(size=(n * D_factor, n)))[0]
        X = lift @ X
    model = fit_dmd(X)
    assert model.rank == n
    np.testing.assert_allclose(
        sorted_eigs(model.eigenvalues), sorted_eigs(np.linalg.eigvals(A)), atol=1e-8
    )
    hs = [0, 1, 5, 40]
    preds = model.predict(hs)
    assert preds.shape == (len(hs), X.shape[0]) and preds.dtype == np.float64
    for row, h in zip(preds, hs, strict=True):
        exact = np.linalg.matrix_power(A, h) @ (X[:, -1] if lift is None else X[:, -1] @ lift)
        if lift is not None:
            exact = lift @ exact
        np.testing.assert_allclose(row, exact, atol=1e-9)
    np.testing.assert_allclose(model.predict(5), preds[2], atol=1e-12)
    assert model.residual < 1e-9


def test_matches_seed_least_squares_operator():
    """Full rank, no options: the prediction is pinv-DMD, U = F' pinv(F) applied h times."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 12))
    U = X[:, 1:] @ np.linalg.pinv(X[:, :-1])
    model = fit_dmd(X)
    np.testing.assert_allclose(model.predict(3), np.linalg.matrix_power(U, 3) @ X[:, -1], atol=1e-9)


def test_affine_recovers_constant_term_and_fixed_point():
    A = stable_system(4, 5, radius=0.8)
    c = np.array([1.0, -2.0, 0.5, 3.0])
    cols = [np.zeros(4)]
    for _ in range(15):
        cols.append(A @ cols[-1] + c)
    X = np.stack(cols, axis=1)
    model = fit_dmd(X, affine=True)
    w = X[:, -1]
    for _ in range(9):
        w = A @ w + c
    np.testing.assert_allclose(model.predict(9), w, atol=1e-9)
    np.testing.assert_allclose(model.fixed_point(), np.linalg.solve(np.eye(4) - A, c), atol=1e-9)


def test_fixed_point_is_the_eigenvalue_one_part_scaled_by_amplitude():
    rng = np.random.default_rng(7)
    V = rng.normal(size=(3, 3))
    A = V @ np.diag([1.0, 0.5, -0.3]) @ np.linalg.inv(V)
    X = trajectory(A, rng.normal(size=3), 10)
    model = fit_dmd(X)
    amplitude = np.linalg.solve(V, X[:, -1])[0]
    np.testing.assert_allclose(model.fixed_point(), V[:, 0] * amplitude, atol=1e-9)
    np.testing.assert_allclose(model.fixed_point(), model.predict(200), atol=1e-9)


def test_fixed_point_warns_when_an_affine_drift_has_no_limit():
    w0, d = np.array([0.4, -0.1, -0.15]), np.array([1.0, -2.0, 0.5])
    X = np.stack([w0 + 0.01 * k * d for k in range(10)], 1)  # a straight line: no limit
    model = fit_dmd(X, affine=True)
    np.testing.assert_allclose(model.predict(100), w0 + 0.01 * 109 * d, atol=1e-9)
    with pytest.warns(UserWarning, match="drifts linearly and has no limit"):
        model.fixed_point()
    A = stable_system(4, 5, radius=0.8)  # a decaying affine system has a limit: no warning
    cols = [np.zeros(4)]
    for _ in range(15):
        cols.append(A @ cols[-1] + np.array([1.0, -2.0, 0.5, 3.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_dmd(np.stack(cols, 1), affine=True).fixed_point()


def three_masses(T: int, dt: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Three unit masses, springs wall-m-m-m-wall (k = 1): positions only, sampled every dt."""
    K = np.array([[2.0, -1, 0], [-1, 2, -1], [0, -1, 2]])
    omega2, modes = np.linalg.eigh(K)
    omega = np.sqrt(omega2)
    t = np.arange(T) * dt
    amps = np.array([1.0, 0.7, 0.4])
    phases = np.array([0.3, 1.1, 2.0])
    X = modes @ (amps[:, None] * np.cos(omega[:, None] * t[None, :] + phases[:, None]))
    return X, omega


def test_delays_recover_oscillation_frequencies_of_three_coupled_masses():
    X, omega = three_masses(200)
    dt = 0.1
    plain = fit_dmd(X)
    assert plain.rank <= 3  # three coordinates cannot carry six oscillatory eigenvalues
    model = fit_dmd(X, delays=4)
    freqs = np.sort(np.abs(np.angle(model.eigenvalues)) / dt)
    expected = np.sort(np.concatenate([omega, omega]))
    np.testing.assert_allclose(freqs, expected, atol=1e-6)
    np.testing.assert_allclose(np.abs(model.eigenvalues), 1.0, atol=1e-8)
    ahead, _ = three_masses(250)
    np.testing.assert_allclose(model.predict(50), ahead[:, 249], atol=1e-6)


def test_exact_dmd_eigenvalues_agree_with_pydmd():
    pydmd = pytest.importorskip("pydmd")
    rng = np.random.default_rng(11)
    X = rng.normal(size=(50, 5)) @ trajectory(stable_system(5, 11), rng.normal(size=5), 25)
    X += 1e-3 * rng.normal(size=X.shape)
    ref = pydmd.DMD(svd_rank=4, exact=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X)
    ours = fit_dmd(X, rank=4)
    # PyDMD's rank-4 SVD is of the raw data; ours of the same data (linear model)
    np.testing.assert_allclose(sorted_eigs(ours.eigenvalues), sorted_eigs(ref.eigs), atol=1e-8)


def test_energy_rank_from_singular_values():
    sigma = torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    assert choose_rank(sigma, (10, 10), 0.9) == 3
    assert choose_rank(sigma, (10, 10), 0.5) == 1
    assert choose_rank(sigma, (10, 10), None) == 4


def test_svht_rank_finds_signal_in_noise():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 60)) * 3
    X = signal + 0.05 * rng.normal(size=signal.shape)
    assert fit_dmd(X, rank="svht").rank == 3
    assert fit_dmd(np.zeros((5, 4)) + rng.normal(size=(5, 4)), rank="svht").rank >= 1


def _gavish_donoho_rank(M: np.ndarray) -> int:
    """Reference: the unknown-noise threshold on the full matrix, computed directly."""
    s = np.linalg.svd(M, compute_uv=False)
    beta = min(M.shape) / max(M.shape)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    return int((s > omega * np.median(s)).sum())


def test_svht_keeps_exact_low_rank_and_matches_gavish_donoho_on_tall_data():
    rng = np.random.default_rng(1)
    Q = np.linalg.qr(rng.standard_normal((200, 3)))[0]
    Z = np.array([[0.95**k, 2 * 0.8**k, 3 * 0.6**k] for k in range(12)]).T
    model = fit_dmd(Q @ Z, rank="svht")  # noise-free rank 3: all three modes kept
    assert model.rank == 3
    np.testing.assert_allclose(np.sort(model.eigenvalues.real), [0.6, 0.8, 0.95], atol=1e-8)
    for seed in range(3):  # tall, noisy, rank 6: the threshold of the full 400 x 39 matrix
        g = np.random.default_rng(10 + seed)
        low = g.standard_normal((400, 6)) @ g.standard_normal((6, 40))
        X = low + 1e-3 * g.standard_normal((400, 40))
        assert fit_dmd(X, rank="svht").rank == max(1, _gavish_donoho_rank(X[:, :-1]))


def test_int_rank_is_cut_with_a_warning():
    X = np.random.default_rng(0).normal(size=(100, 6))
    with pytest.warns(UserWarning, match="using 5"):
        model = fit_dmd(X, rank=10)
    assert model.rank == 5


def test_float32_drift_is_predicted_within_one_percent():
    """Weights of size 1 drifting 1e-5 per step, stored in float32."""
    D, T, d = 20_000, 16, 1e-5
    base = 1.0 + 0.1 * torch.rand(
        D, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    direction = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    steps = torch.arange(T, dtype=torch.float64)
    X = (base[:, None] + d * direction[:, None] * steps[None, :]).to(torch.float32)
    for affine in (False, True):
        model = fit_dmd(X, affine=affine)
        h = 50
        pred = model.predict(h)
        assert pred.dtype == torch.float32 and pred.shape == (D,)
        true_move = (d * direction * h).numpy()
        got_move = pred.double().numpy() - X[:, -1].double().numpy()
        rel = np.linalg.norm(got_move - true_move) / np.linalg.norm(true_move)
        assert rel < 0.01, (affine, rel)


@pytest.mark.parametrize("affine", [False, True])
def test_float32_rounding_noise_is_not_rank(affine):
    """Fewer coordinates than snapshots (no method of snapshots): a drift stored in float32
    has rank 2 (1 centred); the rounding noise (~4e-8) must not count as rank, or the
    full-rank fit grows (spectral radius 1.46 and a 1e33 prediction before the fix)."""
    w0 = 0.3 * torch.randn(9, generator=torch.Generator().manual_seed(0))
    X = torch.stack([w0 + 0.01 * k for k in range(10)], 1)  # float32
    model = fit_dmd(X, affine=affine)
    assert model.rank == (1 if affine else 2)
    assert model.spectral_radius == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(model.predict(250).numpy(), (w0 + 0.01 * 259).numpy(), atol=1e-4)
    # the same data in float64 is exact to float64's precision: nothing is cut there
    assert fit_dmd(X.double(), affine=affine).rank > model.rank


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("D", [3, 5000])
def test_constant_and_zero_windows(affine, D):
    const = np.tile(np.linspace(-2, 3, D)[:, None], (1, 8))
    np.testing.assert_allclose(fit_dmd(const, affine=affine).predict(100), const[:, 0], rtol=1e-12)
    zero = np.zeros((D, 8))
    assert np.array_equal(fit_dmd(zero, affine=affine).predict([1, 10]), np.zeros((2, D)))


def test_repeated_snapshots_rank_deficient_window():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=300), rng.normal(size=300)
    X = np.stack([a, a, b, b, a, a], axis=1)
    pred = fit_dmd(X).predict(2)
    assert np.all(np.isfinite(pred))


def test_torch_in_torch_out_and_dtype():
    X = torch.randn(30, 10, dtype=torch.float32)
    model = fit_dmd(X, rank=3, stabilize="clip")
    p = model.predict([1, 2])
    assert isinstance(p, torch.Tensor) and p.dtype == torch.float32 and p.shape == (2, 30)
    assert isinstance(model.eigenvalues, torch.Tensor) and model.eigenvalues.is_complex()
    assert isinstance(fit_dmd(X.numpy()).eigenvalues, np.ndarray)
    Xb = X.to(torch.bfloat16)
    assert fit_dmd(Xb, rank=3, stabilize="clip").predict(3).dtype == torch.bfloat16


def test_growing_modes_raise_or_are_clipped():
    A = np.diag([1.5, 0.5])
    X = trajectory(A, np.array([1.0, 1.0]), 6)
    model = fit_dmd(X)
    assert model.spectral_radius == pytest.approx(1.5)
    with pytest.raises(DivergentPredictionError, match="stabilize"):
        model.predict(3000)
    clipped = fit_dmd(X, stabilize="clip")
    assert clipped.spectral_radius == pytest.approx(1.0)
    np.testing.assert_allclose(clipped.predict(3000), [X[0, -1], 0.0], atol=1e-9)
    dropped = fit_dmd(X, stabilize="drop")
    np.testing.assert_allclose(dropped.predict(3000), [0.0, 0.0], atol=1e-9)
    assert np.all(np.isfinite(fit_dmd(X, stabilize="clip", rank=1).predict(10**6)))


@pytest.mark.parametrize(
    "X, kwargs, match",
    [
        (np.ones((4, 1)), {}, "at least 2 snapshots"),
        (np.ones((4, 3)), {"delays": 3}, "needs at least 4 snapshots"),
        (np.ones(4), {}, "2-D"),
        (np.ones((2, 3, 4)), {}, "2-D"),
        (np.ones((4, 5)), {"rank": 0}, "at least 1"),
        (np.ones((4, 5)), {"rank": -2}, "at least 1"),
        (np.ones((4, 5)), {"rank": 1.5}, r"\(0, 1\)"),
        (np.ones((4, 5)), {"stabilize": "bogus"}, "stabilize must be one of"),
        (np.ones((4, 5)), {"delays": 0}, "positive integer"),
    ],
)
def test_bad_input_gives_clear_value_error(X, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_dmd(X, **kwargs)


@pytest.mark.parametrize("D", [4, 5000])
def test_non_finite_snapshot_is_named(D):
    X = np.ones((D, 6))
    X[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"snapshot\(s\) 3 contain non-finite"):
        fit_dmd(X)
    X[1, 3] = np.inf
    with pytest.raises(ValueError, match="snapshot"):
        fit_dmd(X, affine=True)
    X[1, 3] = 1.0
    X[0, :4] = np.nan  # the reference and the next three: all four named
    with pytest.raises(ValueError, match=r"snapshot\(s\) 0, 1, 2, 3 contain non-finite"):
        fit_dmd(X)


def test_finite_but_overflowing_snapshots_are_called_too_large():
    X = np.random.default_rng(0).standard_normal((50, 6)) * 1e200
    with pytest.raises(ValueError, match="too large"):
        fit_dmd(X)


def test_predict_refuses_a_string_horizon():
    X = np.random.default_rng(0).standard_normal((3, 6))
    model = fit_dmd(X)
    with pytest.raises(TypeError, match="horizon"):
        model.predict("12")
    assert model.predict(np.int64(2)).shape == (3,)
    np.testing.assert_array_equal(model.predict(np.array(2)), model.predict(2))
    np.testing.assert_array_equal(model.predict(torch.tensor(2)), model.predict(2))
    np.testing.assert_array_equal(model.predict(np.array([2, 4])), model.predict([2, 4]))
    for bad in ([1.5], [float("nan")], [-1]):
        with pytest.raises(ValueError, match="non-negative integers"):
            model.predict(bad)


def test_negative_or_no_horizon_rejected():
    model = fit_dmd(np.random.default_rng(0).normal(size=(3, 5)))
    with pytest.raises(ValueError, match="non-negative"):
        model.predict(-1)
    with pytest.raises(ValueError, match="at least one horizon"):
        model.predict([])
    with pytest.raises(ValueError, match="at least one horizon"):
        fit_operators(torch.ones(2, 3, 4)).predict([])


def test_distributed_gram_reduction_matches_single_process():
    """Splitting the coordinates in two shards and summing their Grams gives the same fit."""
    rng = np.random.default_rng(4)
    X = torch.from_numpy(
        rng.normal(size=(400, 5)) @ trajectory(stable_system(5, 4), rng.normal(size=5), 12)
    )
    full = fit_dmd(X, rank=4, affine=True)
    shards = [X[:150], X[150:]]
    parts = [local_gram(shard) for shard in shards]
    total = parts[0] + parts[1]
    fits = [fit_dmd(shard, rank=4, affine=True, reduce_gram=lambda _: total) for shard in shards]
    joined = torch.cat([fits[0].predict(7), fits[1].predict(7)])
    torch.testing.assert_close(joined, full.predict(7), atol=1e-10, rtol=0)


def test_gram_kept_while_recording_equals_a_fresh_fit():
    rng = np.random.default_rng(6)
    X = torch.from_numpy(
        rng.normal(size=(900, 4)) @ trajectory(stable_system(4, 6), rng.normal(size=4), 10)
    )
    gram = torch.zeros(10, 10, dtype=torch.float64)
    for k in range(10):
        row = gram_row(X[:, : k + 1])
        gram[k, : k + 1] = row
        gram[: k + 1, k] = row
    torch.testing.assert_close(gram, local_gram(X), atol=1e-9, rtol=1e-12)
    for affine in (False, True):
        warm = fit_dmd(X, affine=affine, gram=gram).predict([3, 30])
        torch.testing.assert_close(
            warm, fit_dmd(X, affine=affine).predict([3, 30]), atol=1e-10, rtol=0
        )
