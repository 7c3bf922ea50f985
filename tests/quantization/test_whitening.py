"""The whitened (calibrated) low-rank fit: closed form, optimality, damping, LoftQ hook."""

import pytest
import torch

from leanfit.exceptions import BadInputError
from leanfit.quantization import LoraSpec, QuantSpec, fit_low_rank, loftq_decompose
from leanfit.quantization.loftq import fit_whitened
from leanfit.quantization.whitening import output_error, whiten


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Calibration-like inputs: a few directions carry most of the energy (scales 1 … 1e-2),
    mixed by a random rotation, as activations of a real layer are."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, d)
    rotation = torch.linalg.qr(torch.randn(d, d, generator=g)).Q
    return (torch.randn(n, d, generator=g) * scales) @ rotation.T


def residual(out: int, d: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(out, d, generator=torch.Generator().manual_seed(seed))


def output_norm(x: torch.Tensor, matrix: torch.Tensor) -> float:
    """‖X Mᵀ‖_F in float64: the error of the layer's outputs on the inputs X."""
    return float(torch.linalg.norm(x.double() @ matrix.double().T))


def test_an_identity_gram_gives_the_plain_truncated_svd():
    e = residual(20, 30)
    fit = fit_whitened(e, whiten(3.0 * torch.eye(30)), 4, svd="exact")
    left, right = fit.left, fit.right
    plain = fit_low_rank(e, 4, svd="exact")
    # G = cI: S = √(c(1+damp))·I, so E S and E have the same singular vectors; float32 products.
    torch.testing.assert_close(left @ right, plain.left @ plain.right, atol=1e-5, rtol=1e-5)


def test_the_whitened_fit_attains_the_lower_bound_of_the_output_error():
    x, e, rank = correlated_inputs(200, 30), residual(20, 30), 5
    fit = fit_whitened(e, whiten(x.T.double() @ x.double(), 1e-10), rank, svd="exact")
    left, right = fit.left, fit.right
    achieved = output_norm(x, e - left @ right)
    # X (LR)ᵀ has rank <= r, so no rank-r update can push ‖X Eᵀ − X (LR)ᵀ‖ below the
    # Eckart–Young tail of X Eᵀ; with X of full column rank the closed form reaches it.
    singular = torch.linalg.svdvals(x.double() @ e.double().T)
    bound = float(singular[rank:].square().sum().sqrt())
    # float32 whitening of a Gram whose eigenvalues span 1e4: 1e-3 relative.
    assert achieved == pytest.approx(bound, rel=1e-3)
    plain = fit_low_rank(e, rank, svd="exact")
    # The plain SVD ignores which input directions matter: clearly worse on these inputs
    # (measured 1.83× the whitened fit's error; 1.2× leaves room for other random draws).
    assert output_norm(x, e - plain.left @ plain.right) > 1.2 * achieved


def test_the_randomized_svd_matches_the_exact_whitened_fit():
    x, e = correlated_inputs(200, 30), residual(20, 30)
    whitening = whiten(x.T @ x)
    exact = fit_whitened(e, whitening, 5, svd="exact")
    randomized = fit_whitened(e, whitening, 5, generator=torch.Generator().manual_seed(0))
    # The 21-column sketch covers all 20 rows of E S, so the subspace is exact: only float32
    # rounding separates the two (0.1 %).
    assert output_error(e - randomized.left @ randomized.right, whitening) == pytest.approx(
        output_error(e - exact.left @ exact.right, whitening), rel=1e-3
    )


def test_damping_handles_a_singular_gram():
    x, e = correlated_inputs(6, 30), residual(20, 30)  # 6 tokens for 30 inputs: G has rank 6
    gram = x.T.double() @ x.double()
    assert torch.linalg.matrix_rank(gram) == 6
    whitening = whiten(gram)
    fit = fit_whitened(e, whitening, 4, svd="exact")
    left, right = fit.left, fit.right
    assert torch.isfinite(left).all() and torch.isfinite(right).all()
    plain = fit_low_rank(e, 4, svd="exact")
    # The damped objective adds 1 % of the mean input energy per weight error: the output
    # error still drops far below the plain fit's (which targets the weights): measured 0.24×.
    assert output_norm(x, e - left @ right) < 0.5 * output_norm(x, e - plain.left @ plain.right)
    # Nothing blows up in the 24 directions the calibration never excites: the update stays
    # of the size of the residual itself (measured 0.50×; an undamped fit would be unbounded).
    assert float(torch.linalg.norm(left @ right)) < 2 * float(torch.linalg.norm(e))


def test_a_zero_gram_falls_back_to_the_plain_fit():
    e = residual(20, 30)
    whitening = whiten(torch.zeros(30, 30))
    assert whitening.damping == pytest.approx(0.01)
    fit = fit_whitened(e, whitening, 3, svd="exact")
    left, right = fit.left, fit.right
    plain = fit_low_rank(e, 3, svd="exact")
    # S = 0.1·I: the same fit up to float32 rounding.
    torch.testing.assert_close(left @ right, plain.left @ plain.right, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("gram", "damp", "message"),
    [
        (torch.eye(3)[:2], 0.01, "gram must be a square (in × in) tensor"),
        (torch.eye(3), 0.0, "damp must be a finite number > 0; got 0.0"),
        (torch.full((3, 3), float("nan")), 0.01, "gram must be finite"),
        (-torch.eye(3), 0.01, "positive semi-definite"),
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 0.01, "positive semi-definite.*Cholesky"),
    ],
)
def test_bad_grams_are_refused(gram, damp, message):
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        whiten(gram, damp)


def test_loftq_with_an_identity_gram_is_plain_loftq():
    w = residual(64, 96, seed=3)
    plain = loftq_decompose(w, QuantSpec(2), LoraSpec(8, iters=3, svd="exact"))
    calibrated = loftq_decompose(
        w, QuantSpec(2), LoraSpec(8, iters=3, svd="exact"), gram=torch.eye(96)
    )
    # Same quantization targets and fits up to float32 rounding, so the same codes; the
    # relative errors are ratios of norms scaled by the same √(1 + damp).
    torch.testing.assert_close(
        calibrated.effective_weight(), plain.effective_weight(), atol=1e-5, rtol=0
    )
    assert calibrated.errors == pytest.approx(plain.errors, rel=1e-5)


def test_calibrated_loftq_lowers_the_output_error_of_every_iterate():
    w = residual(64, 96, seed=4)
    x = correlated_inputs(400, 96, seed=5)
    gram = x.T.double() @ x.double()
    plain = loftq_decompose(w, QuantSpec(2), LoraSpec(8, iters=3, svd="exact"))
    calibrated = loftq_decompose(w, QuantSpec(2), LoraSpec(8, iters=3, svd="exact"), gram=gram)
    plain_out = output_norm(x, w - plain.effective_weight())
    calibrated_out = output_norm(x, w - calibrated.effective_weight())
    # Rank 8 of 96 whitened directions that hold nearly all the energy: a large margin
    # (measured 0.74×).
    assert calibrated_out < 0.8 * plain_out
    # errors are relative output errors now: check the kept one against a direct computation
    # (damp 0.01 adds 1 % of the mean input energy to both norms; 2 % tolerance).
    assert calibrated.error == pytest.approx(calibrated_out / output_norm(x, w), rel=2e-2)
    assert calibrated.error < calibrated.qlora_error


def test_a_gram_of_the_wrong_size_is_named():
    with pytest.raises(BadInputError, match="gram must be an"):
        loftq_decompose(torch.randn(8, 12), QuantSpec(), LoraSpec(2), gram=torch.eye(8))


def test_the_captured_energy_gives_the_output_error_without_another_product():
    x, e = correlated_inputs(200, 30), residual(20, 30)
    whitening = whiten(x.T @ x)
    fit = fit_whitened(e, whitening, 5, svd="exact")
    # L R S projects E S orthogonally: ‖(E − L R) S‖² = ‖E S‖² − captured (float32 products,
    # 1e-4 relative on a difference of two squares of similar size).
    direct = output_error(e - fit.left @ fit.right, whitening)
    via_captured = (output_error(e, whitening) ** 2 - fit.captured) ** 0.5
    assert via_captured == pytest.approx(direct, rel=1e-4)
