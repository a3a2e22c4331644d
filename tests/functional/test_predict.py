import pytest
import torch
from helpers import assert_unchanged, bn_dropout_cnn, state_snapshot

from lightning_sensitivity.functional import predict_logits


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_equals_an_eval_mode_forward_and_leaves_the_model_alone(chunk_size):
    torch.manual_seed(0)
    model = bn_dropout_cnn().train()  # train mode: the prediction must still be the eval-mode one
    x = torch.randn(7, 1, 6, 6)
    before = state_snapshot(model)
    got = predict_logits(model, x, chunk_size=chunk_size)
    assert_unchanged(model, before)
    reference = bn_dropout_cnn()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = reference.eval()(x)
    torch.testing.assert_close(got, expected)
    with torch.inference_mode():
        torch.testing.assert_close(predict_logits(model, x.clone(), chunk_size=chunk_size), expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="`chunk_size`"):
        predict_logits(torch.nn.Linear(3, 2), torch.randn(2, 3), chunk_size=0)
    with pytest.raises(ValueError, match=r"logits of shape \[N, C\]"):
        predict_logits(torch.nn.Unflatten(1, (3, 1)), torch.randn(2, 3))
