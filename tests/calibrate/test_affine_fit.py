"""The Newton core of the affine calibrators, its cross-validation and structured matrix
scaling, against scipy, autograd, a naive loop and probmetrics."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from exitwise import metrics
from exitwise.calibrate import (
    DirichletCalibration,
    MatrixScaling,
    StructuredMatrixScaling,
    TemperatureScaling,
    VectorScaling,
    affine_fit,
)
from exitwise.calibrate.affine_fit import affine_objective, fit_affine
from exitwise.calibrate.penalty_cv import cross_validate_penalty
from exitwise.datasets import load_dataset


def _eye(c: int) -> torch.Tensor:
    return torch.cat([torch.eye(c), torch.zeros(c, 1)], 1).double()


def _problem(n=300, e=2, c=4, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.randn(n, e, c, generator=g, dtype=torch.float64)
    x[torch.arange(n), :, y] += 1.0
    return x * scale, y


@settings(max_examples=25, deadline=None)
@given(
    c=st.integers(2, 5),
    structure=st.sampled_from(["full", "diagonal"]),
    seed=st.integers(0, 10_000),
    weight=st.floats(0.0, 1.0),
)
def test_gradient_and_hessian_equal_autograd(c, structure, seed, weight):
    x, y = _problem(n=40, e=2, c=c, seed=seed)
    a = c + 1 if structure == "full" else 2
    g = torch.Generator().manual_seed(seed + 1)
    theta = torch.randn(2, c, a, generator=g, dtype=torch.float64)
    centre = torch.randn(c, a, generator=g, dtype=torch.float64)
    weights = torch.full((c, a), weight, dtype=torch.float64)
    f, grad, hess = affine_fit._derivatives(x, y, theta, structure, 2)
    for e in range(2):

        def obj(t, e=e):
            th = theta.clone()
            th[e] = t.reshape(c, a)
            return affine_fit._derivatives(x, y, th, structure, 0)[0][e]

        flat = theta[e].reshape(-1)
        ref_g = torch.autograd.functional.jacobian(obj, flat)
        ref_h = torch.autograd.functional.hessian(obj, flat)
        assert torch.allclose(grad[e].reshape(-1), ref_g, atol=1e-10)
        # the Hessian's outer products are summed in float32 (a Newton matrix needs no more)
        assert torch.allclose(hess[e], ref_h, rtol=1e-5, atol=1e-5 * float(ref_h.abs().max()))
    # the penalised objective adds exactly the ridge term
    pen = affine_objective(x, y, theta, structure, weights, centre)
    assert torch.allclose(pen, f + (weights * (theta - centre) ** 2).sum((-2, -1)))


@pytest.mark.parametrize(
    ("name", "structure"), [("fashion_mnist_cnn", "full"), ("newsgroups_minilm", "diagonal")]
)
def test_newton_reaches_the_scipy_optimum_on_real_data(name, structure):
    out = load_dataset(name)[:1200]
    x = torch.log_softmax(out.logits.double(), -1)
    c = out.num_classes
    centre = _eye(c) if structure == "full" else torch.tensor([1.0, 0.0]).double()
    a = c + 1 if structure == "full" else 2
    weights = torch.full((c, a), 1e-3, dtype=torch.float64)
    fit = fit_affine(x, out.labels, structure, weights=weights, centre=centre)
    assert bool(fit.converged.all()) and fit.iterations <= 30
    for e in (out.num_exits - 1,):

        def obj(v, e=e):
            th = torch.tensor(v).reshape(1, c, a).requires_grad_(True)
            f = affine_objective(x[:, e : e + 1], out.labels, th, structure, weights, centre)
            f.sum().backward()
            return f.item(), th.grad.numpy().ravel()

        start = centre.expand(c, a).numpy().ravel()
        ref = minimize(
            obj,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 20000, "gtol": 1e-10, "ftol": 1e-16},
        )
        assert float(fit.objective[e]) <= ref.fun + 1e-10
        assert float(fit.objective[e]) == pytest.approx(ref.fun, abs=1e-7)


def test_lbfgs_path_for_large_maps_agrees_with_newton(monkeypatch):
    x, y = _problem(n=400, e=2, c=5)
    weights = torch.full((5, 6), 1e-2, dtype=torch.float64)
    newton = fit_affine(x, y, "full", weights=weights, centre=_eye(5))
    monkeypatch.setattr(affine_fit, "_NEWTON_MAX_PARAMS", 0)
    lbfgs = fit_affine(x, y, "full", weights=weights, centre=_eye(5), max_iter=500)
    assert bool(lbfgs.converged.all())
    assert torch.allclose(lbfgs.objective, newton.objective, atol=1e-9)
    assert torch.allclose(lbfgs.coefficients, newton.coefficients, atol=1e-4)


def test_singular_unpenalised_vector_scaling_still_converges():
    # without a penalty, adding a constant to every bias leaves the loss unchanged
    x, y = _problem(n=500, e=1, c=3)
    fit = fit_affine(x, y, "diagonal", weights=torch.zeros(()), centre=torch.tensor([1.0, 0.0]))
    assert bool(fit.converged.all())


def test_cross_validation_equals_a_naive_loop():
    x, y = _problem(n=240, e=2, c=3, seed=4, scale=2.0)
    scaled = torch.ones(3, 4, dtype=torch.float64)
    grid = [1.0, 0.1, 0.001]
    choice = cross_validate_penalty(
        x, y, "full", scaled=scaled, fixed=torch.zeros(()), centre=_eye(3), grid=grid, folds=4
    )
    gen = torch.Generator().manual_seed(0)
    fold_of = torch.empty(240, dtype=torch.long)
    fold_of[torch.randperm(240, generator=gen)] = torch.arange(240) % 4
    naive = np.zeros((3, 2))
    for i, lam in enumerate(grid):
        for k in range(4):
            tr, te = fold_of != k, fold_of == k
            fit = fit_affine(x[tr], y[tr], "full", weights=lam * scaled, centre=_eye(3), tol=1e-9)
            for e in range(2):
                w = fit.coefficients[e].numpy()
                s = x[te, e].numpy() @ w[:, :-1].T + w[:, -1]
                s -= s.max(1, keepdims=True)
                lp = s - np.log(np.exp(s).sum(1, keepdims=True))
                naive[i, e] -= lp[np.arange(int(te.sum())), y[te].numpy()].sum() / 240
    assert np.allclose(choice.cv_nll.numpy(), naive, atol=1e-6)
    best = naive.argmin(0)
    assert choice.penalty.tolist() == [grid[b] for b in best]


def test_cv_penalty_is_recorded_and_helps_on_held_out_data(real_outputs):
    for cls in (MatrixScaling, DirichletCalibration, VectorScaling):
        fitted = cls().fit(real_outputs[:1000])
        assert fitted.penalty_.shape == (4,) and fitted.cv_nll_.shape == (8, 4)
        tried = torch.nan_to_num(fitted.cv_nll_, nan=float("inf"))  # the path stops early
        assert torch.equal(fitted.penalty_, fitted.penalty_grid_[tried.argmin(0)])
        assert bool(torch.isfinite(fitted.cv_nll_[:3]).all())
        assert bool(fitted.converged_.all())
    # Dirichlet with its cross-validated penalty beats the weakest penalty of the grid
    cal, test = load_dataset("newsgroups_minilm").split(0.5, seed=0)
    cv = DirichletCalibration().fit(cal).transform(test)
    weak = DirichletCalibration(penalty=1e-5).fit(cal).transform(test)
    nll = lambda o: metrics.negative_log_likelihood(o.logits, o.labels, input="logits")  # noqa: E731
    assert float(nll(cv).mean()) < float(nll(weak).mean())


def test_vector_scaling_with_a_huge_penalty_is_temperature_scaling(real_outputs):
    cal, test = real_outputs.split(0.5, seed=0)
    vs = VectorScaling(penalty=1e9).fit(cal).transform(test)
    ts = TemperatureScaling().fit(cal).transform(test)
    assert torch.allclose(vs.logits.double(), ts.logits.double(), atol=1e-4)


def test_sms_matches_probmetrics_on_real_data():
    pytest.importorskip("numba")
    from probmetrics.calibrators import get_calibrator

    logging.getLogger("probmetrics").setLevel(logging.ERROR)
    for name in ("fashion_mnist_cnn", "newsgroups_minilm"):
        cal, test = load_dataset(name).split(0.5, seed=1)
        ours = StructuredMatrixScaling().fit(cal).predict_proba(test).double().numpy()
        y = test.labels.numpy()
        for e in range(cal.num_exits):
            ref = get_calibrator("sms", sms_print_init_info=False)
            ref.fit(torch.softmax(cal.logits[:, e].double(), -1).numpy(), cal.labels.numpy())
            p_ref = ref.predict_proba(torch.softmax(test.logits[:, e].double(), -1).numpy())
            nll_ref = -np.mean(np.log(p_ref[np.arange(len(y)), y]))
            nll_ours = -np.mean(np.log(ours[np.arange(len(y)), e, y]))
            assert nll_ours <= nll_ref * 1.01, (name, e, nll_ours, nll_ref)
            assert abs(nll_ours - nll_ref) <= 1e-3 * nll_ref, (name, e, nll_ours, nll_ref)


def test_sms_penalty_goes_to_temperature_scaling(real_outputs):
    cal, _ = real_outputs.split(0.5, seed=0)
    sms = StructuredMatrixScaling(penalty=1e9).fit(cal)
    ts = TemperatureScaling().fit(cal)
    assert torch.allclose(sms.temperatures_, ts.temperatures_.double())
    eye = _eye(10)
    assert torch.allclose(sms.coefficients_, eye.expand_as(sms.coefficients_), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"penalty": -1.0}, "`penalty` to be 'cv' or a number >= 0"),
        ({"penalty": "auto"}, "`penalty` to be 'cv' or a number >= 0"),
        ({"cv": 1}, "`cv`"),
        ({"penalty_grid": [-1.0, 1.0]}, "`penalty_grid`"),
    ],
)
def test_bad_penalty_arguments_are_named(real_outputs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MatrixScaling(**kwargs).fit(real_outputs[:500])


def test_intercept_penalty_cannot_be_cv(real_outputs):
    with pytest.raises(ValueError, match="`intercept_penalty`"):
        MatrixScaling(intercept_penalty="cv").fit(real_outputs[:500])
    fitted = MatrixScaling(penalty=1e-3, intercept_penalty=0.5).fit(real_outputs[:500])
    assert fitted.penalty_.tolist() == [1e-3] * 4


def test_the_penalty_path_stops_only_past_every_exits_minimum(monkeypatch):
    from exitwise.calibrate import penalty_cv

    x, y = _problem(n=300, e=3, c=3, seed=2)
    grid = [10.0, 1.0, 0.1, 0.01, 0.001, 1e-4, 1e-5, 1e-6]
    kwargs = dict(scaled=torch.ones(3, 4).double(), fixed=torch.zeros(()), centre=_eye(3))
    early = cross_validate_penalty(x, y, "full", grid=grid, folds=3, **kwargs)
    monkeypatch.setattr(penalty_cv, "_PATIENCE", 10**6)
    complete = cross_validate_penalty(x, y, "full", grid=grid, folds=3, **kwargs)
    assert bool(torch.isfinite(complete.cv_nll).all())
    tried = torch.isfinite(early.cv_nll).all(dim=1)
    assert 3 <= int(tried.sum()) < len(grid)  # it stopped, after two rises
    assert torch.allclose(early.cv_nll[tried], complete.cv_nll[tried], atol=1e-6)
    assert torch.equal(early.penalty, complete.penalty)  # the same choice on a unimodal curve
