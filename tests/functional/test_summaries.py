"""binary_auroc and jacobian_norm_summary against sklearn, numpy and per-example loops in float64."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_sensitivity.functional import binary_auroc, jacobian_norm_summary, mean_standard_error, train_val_ratio


def _auroc_loop(scores, positives):
    """Oracle: the fraction of (positive, negative) pairs ordered right, ties counted half."""
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_binary_auroc_hand_cases():
    assert binary_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    assert binary_auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([False, True, True])) == 1.0
    assert binary_auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, True, False])) == 0.0
    assert binary_auroc(torch.tensor([5.0, 5.0, 5.0, 5.0]), torch.tensor([1, 0, 1, 0])) == 0.5
    # One tie between a positive and a negative out of 4 pairs: (1 + 1 + 0.5 + 1) / 4.
    assert binary_auroc(torch.tensor([0.0, 1.0, 1.0, 2.0]), torch.tensor([0, 0, 1, 1])) == pytest.approx(0.875)
    # inf is ranked like any number; scores are not squashed, so huge values stay distinct.
    assert binary_auroc(torch.tensor([1e30, 2e30, float("inf")]), torch.tensor([0, 1, 1])) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_binary_auroc_matches_sklearn_and_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n = 40 + 7 * seed
    scores = torch.randint(0, 8, (n,), generator=g).double() / 2  # many ties
    if seed % 2:
        scores = torch.randn(n, generator=g, dtype=torch.float64)
    positives = torch.rand(n, generator=g) < 0.3
    got = binary_auroc(scores, positives)
    assert got == pytest.approx(roc_auc_score(positives.numpy(), scores.numpy()), abs=1e-12)
    assert got == pytest.approx(_auroc_loop(scores.tolist(), positives.tolist()), abs=1e-12)


def test_binary_auroc_equals_the_callbacks_scaled_torchmetrics_auroc():
    from torchmetrics.functional.classification import binary_auroc as tm_auroc

    g = torch.Generator().manual_seed(3)
    norms = (torch.rand(64, generator=g) * 50).float()  # float32 like the callback's norms
    wrong = torch.rand(64, generator=g) < 0.25
    scaled = norms.double() / norms.max()
    assert binary_auroc(norms, wrong) == pytest.approx(
        float(tm_auroc(scaled, wrong.long())), abs=1e-6
    )  # tm returns float32


def test_binary_auroc_nan_cases():
    assert math.isnan(binary_auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])))
    assert math.isnan(binary_auroc(torch.tensor([1.0, 2.0]), torch.tensor([False, False])))
    assert math.isnan(binary_auroc(torch.tensor([1.0, float("nan")]), torch.tensor([1, 0])))
    assert math.isnan(binary_auroc(torch.zeros(0), torch.zeros(0, dtype=torch.bool)))


def test_binary_auroc_bad_input():
    with pytest.raises(TypeError, match="`scores`"):
        binary_auroc([0.1, 0.2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`positives`"):
        binary_auroc(torch.ones(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="`scores`"):
        binary_auroc(torch.ones(2, 2), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="`positives`"):
        binary_auroc(torch.ones(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="`positives`"):
        binary_auroc(torch.ones(2), torch.tensor([0, 2]))


# --- jacobian_norm_summary ------------------------------------------------------------------------------------------


def _problem(n=30, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    norms = torch.rand(n, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, classes, (n,), generator=g)
    logits = torch.randn(n, classes, generator=g, dtype=torch.float64) * 2
    return norms, targets, logits


def test_quantiles_match_numpy():
    norms, _, _ = _problem()
    out = jacobian_norm_summary(norms.float())
    x = norms.float().double().numpy()
    assert out["mean"] == pytest.approx(np.mean(x), rel=1e-12)
    assert out["median"] == pytest.approx(np.median(x), rel=1e-12)
    assert out["p90"] == pytest.approx(np.percentile(x, 90), rel=1e-12)
    assert set(out) == {"mean", "median", "p90"}


def test_per_class_and_aurocs_match_loops():
    norms, targets, logits = _problem(classes=4)
    targets[targets == 2] = 1  # class 2 absent -> NaN
    out = jacobian_norm_summary(norms, targets, logits, num_classes=5)
    per_class = out["per_class"]
    assert per_class.shape == (5,) and per_class.dtype == torch.float64
    for c in range(5):
        members = [float(v) for v, y in zip(norms, targets, strict=True) if int(y) == c]
        if members:
            assert float(per_class[c]) == pytest.approx(sum(members) / len(members), rel=1e-12)
        else:
            assert math.isnan(float(per_class[c]))
    wrong, confidence, entropy = [], [], []
    for row, y in zip(logits.tolist(), targets.tolist(), strict=True):
        exps = [math.exp(v) for v in row]
        probs = [e / sum(exps) for e in exps]
        wrong.append(max(range(len(row)), key=lambda k: row[k]) != y)
        confidence.append(1 - max(probs))
        entropy.append(-sum(p * math.log(p) for p in probs if p > 0))
    assert 0 < sum(wrong) < len(wrong)
    assert out["misclassification_auroc"] == pytest.approx(roc_auc_score(wrong, norms.numpy()), abs=1e-12)
    assert out["confidence_auroc"] == pytest.approx(roc_auc_score(wrong, confidence), abs=1e-12)
    assert out["entropy_auroc"] == pytest.approx(roc_auc_score(wrong, entropy), abs=1e-12)


def test_num_classes_defaults_to_targets_and_logits():
    norms, targets, logits = _problem(classes=3)
    targets = targets.clamp_max(1)
    assert jacobian_norm_summary(norms, targets)["per_class"].shape == (2,)
    assert jacobian_norm_summary(norms, targets, logits)["per_class"].shape == (3,)


def test_all_right_predictions_and_non_finite_norms_give_nan_aurocs():
    norms, _, logits = _problem()
    targets = logits.argmax(1)
    out = jacobian_norm_summary(norms, targets, logits)
    assert all(math.isnan(out[k]) for k in ("misclassification_auroc", "confidence_auroc", "entropy_auroc"))
    norms2, targets2, logits2 = _problem(seed=1)
    norms2[3] = float("inf")
    out = jacobian_norm_summary(norms2, targets2, logits2)
    assert math.isnan(out["misclassification_auroc"])  # the callback leaves it out when a norm is not finite
    assert not math.isnan(out["confidence_auroc"])
    assert out["mean"] == float("inf")


def test_jacobian_norm_summary_bad_input():
    norms, targets, logits = _problem()
    with pytest.raises(ValueError, match="`logits`"):
        jacobian_norm_summary(norms, logits=logits)
    with pytest.raises(TypeError, match="`targets`"):
        jacobian_norm_summary(norms, targets.double())
    with pytest.raises(ValueError, match="`targets`"):
        jacobian_norm_summary(norms, targets[:-1])
    with pytest.raises(ValueError, match="`targets`"):
        jacobian_norm_summary(norms, targets, num_classes=2)
    with pytest.raises(ValueError, match="`logits`"):
        jacobian_norm_summary(norms, targets, logits[:-1])
    with pytest.raises(ValueError, match="`norms`"):
        jacobian_norm_summary(torch.zeros(0))
    with pytest.raises(TypeError, match="`norms`"):
        jacobian_norm_summary(torch.arange(3))
    with pytest.raises(TypeError, match="`norms`"):
        jacobian_norm_summary([1.0, 2.0])
    with pytest.raises(TypeError, match="`num_classes`"):
        jacobian_norm_summary(norms, targets, num_classes=4.0)


def test_train_val_ratio_and_mean_standard_error_equal_plain_arithmetic():
    assert train_val_ratio(3.0, 4.0) == 0.75
    assert train_val_ratio(2.0, 0.0) is None  # no held-out norm to compare with: nothing to log
    se = [0.1, 0.25, 0.4, 0.05]
    expected = math.sqrt(sum(v * v for v in se)) / len(se)
    assert mean_standard_error(torch.tensor(se, dtype=torch.float64)) == pytest.approx(expected, rel=1e-15)
    assert mean_standard_error(torch.zeros(0)) == 0.0
    with pytest.raises(ValueError, match="standard_errors"):
        mean_standard_error(torch.ones(2, 2))
