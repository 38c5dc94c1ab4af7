"""Image-report pairs of prepared MIMIC-CXR for pre-training: augmentations, sentence shuffling, tokens.

The prepared cache already holds the protocol's pairs (frontal views, official split, findings +
impression split into sentences, the <3-token filter, the fixed 30% subset), so this module only
augments and batches them. Augmentations are seeded by (seed, epoch, index): a resumed run sees the
same images it would have seen without the interruption, whatever the number of loader workers.
Each sentence is tokenised on its own and every token remembers its sentence, so the report encoder
can form a sentence as the max over its tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cxrbench.datasets import PreparedSplit
from cxrbench.io_utils import atomic_write_text

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_augmentation(resolution: int) -> A.Compose:
    """The protocol's pre-training augmentation (LoVT; docs/protocol.md), for uint8 grey images."""
    return A.Compose(
        [
            A.RandomResizedCrop(size=(resolution, resolution), scale=(0.6, 1.0)),
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-20, 20), translate_percent=(-0.1, 0.1), scale=(0.95, 1.05), p=1.0),
            A.ColorJitter(brightness=(0.6, 1.4), contrast=(0.6, 1.4), saturation=0.0, hue=0.0, p=1.0),
            A.GaussianBlur(sigma_limit=(0.1, 3.0), blur_limit=0, p=1.0),
        ]
    )


def eval_transform(resolution: int) -> A.Compose:
    return A.Compose([A.Resize(resolution, resolution)])


class PretrainPairs(Dataset):
    """(image, sentences) pairs of one prepared split; `epoch` re-seeds the augmentation per epoch.

    With `augment`, sentences="all" keeps every sentence in a random order (LoVT) and "one" keeps a
    single random sentence (ConVIRT, CLIP* in the reference); without it, all sentences in order.
    """

    def __init__(
        self,
        split: PreparedSplit,
        resolution: int,
        mean: float,
        std: float,
        augment: bool,
        seed: int = 0,
        max_images: int | None = None,
        sentences: str = "all",
    ):
        if sentences not in ("all", "one"):
            raise ValueError(f"sentences must be 'all' or 'one', not {sentences!r}")
        self.sampling = sentences
        indices = np.arange(len(split))
        if max_images is not None and len(indices) > max_images:
            indices = np.sort(np.random.default_rng(seed).choice(indices, max_images, replace=False))
            split = split.subset(indices)
        self.split = split
        self.sentences: list[list[str]] = split.field("sentences")
        self.mean, self.std, self.augment, self.seed = mean, std, augment, seed
        self.transform = train_augmentation(resolution) if augment else eval_transform(resolution)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image = self.split.image(index)
        sentences = list(self.sentences[index])
        if self.augment:
            self.transform.set_random_seed(int(rng.integers(2**31)))
            rng.shuffle(sentences)
            if self.sampling == "one" and sentences:
                sentences = sentences[:1]  # the first of a random permutation: one random sentence
        pixels = self.transform(image=np.ascontiguousarray(image))["image"]
        x = torch.from_numpy(pixels.astype(np.float32) / 255.0).sub_(self.mean).div_(self.std)
        return {"image": x.unsqueeze(0).expand(3, -1, -1).contiguous(), "sentences": sentences}


@dataclass
class PairCollator:
    """Stack images; tokenise each sentence separately into one sequence [CLS] s1 s2 ... [SEP].

    Output: images B x 3 x R x R, input_ids / attention_mask B x T, sentence_index B x T (the
    sentence of each token, -1 for special and padding tokens), sentence_mask B x S (True = a sentence
    with at least one token left after truncation to `max_length`).
    """

    tokenizer: object
    max_length: int = 512

    def __call__(self, items: Sequence[dict]) -> dict[str, Tensor]:
        tok = self.tokenizer
        flat = [s for item in items for s in item["sentences"]]
        encoded = tok(flat, add_special_tokens=False)["input_ids"] if flat else []
        sequences, owners = [], []
        position = 0
        for item in items:
            ids, owner = [tok.cls_token_id], [-1]
            for k in range(len(item["sentences"])):
                piece = encoded[position + k][: max(0, self.max_length - 1 - len(ids))]
                ids += piece
                owner += [k] * len(piece)
            position += len(item["sentences"])
            sequences.append([*ids, tok.sep_token_id])
            owners.append([*owner, -1])
        length = max(len(s) for s in sequences)
        n_sent = max(1, max((max(o) + 1 for o in owners), default=1))
        input_ids = torch.full((len(items), length), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(items), length), dtype=torch.long)
        sentence_index = torch.full((len(items), length), -1, dtype=torch.long)
        sentence_mask = torch.zeros((len(items), n_sent), dtype=torch.bool)
        for i, (ids, owner) in enumerate(zip(sequences, owners)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            sentence_index[i, : len(owner)] = torch.tensor(owner)
            present = sorted({k for k in owner if k >= 0})
            sentence_mask[i, present] = True
        return {
            "images": torch.stack([item["image"] for item in items]),
            "input_ids": input_ids,
            "attention_mask": attention,
            "sentence_index": sentence_index,
            "sentence_mask": sentence_mask,
        }


def offline_vocabulary(texts: Sequence[str], vocab_size: int = 2000) -> list[str]:
    """A WordPiece vocabulary built deterministically from `texts` (no download).

    The special tokens, every character seen (alone and as a "##" continuation, so any word can be
    tokenised), then whole words by descending frequency with ties broken alphabetically. The
    `tokenizers` WordPiece trainer breaks frequency ties by hash-map order, so two processes built
    different vocabularies from the same reports, and so different encoders from the same seed.
    """
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    normalizer, pre_tokenizer = BertNormalizer(lowercase=True), BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    taken = set(vocab)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken]
    return vocab + words[: max(0, vocab_size - len(vocab))]


def build_offline_tokenizer(texts: Sequence[str], out_dir: Path, vocab_size: int = 2000):
    """A lower-case BertTokenizerFast over `offline_vocabulary(texts)`.

    Used by the demo profile and tests, whose report encoder is a small randomly initialised BERT;
    the vocabulary is saved in `out_dir` (vocab.txt) so a resumed run gets the identical tokenizer.
    """
    from transformers import BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file = out_dir / "vocab.txt"
    if not vocab_file.exists():
        atomic_write_text(vocab_file, "\n".join(offline_vocabulary(texts, vocab_size)) + "\n")
    return BertTokenizerFast.from_pretrained(str(out_dir), do_lower_case=True)
