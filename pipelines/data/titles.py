"""Item text: where titles come from, and DSSM's word hashing of them into letter trigrams.

**Where item text lives.** ``data/item_text.parquet`` (:func:`item_text_path`; columns
``item_id`` string, ``title`` string): the MovieLens importer writes it from ``u.item``'s
second field (or ``movies.csv``'s ``title``). The simulator writes *nothing*: its titles are a
pure function of an item's existing attributes (:func:`generate_titles` over ``item_id`` and
``category``, with a stable hash, never the simulator's random streams), generated when read, so
every file the simulator writes keeps its bytes under the same seed
(``tests/test_simulate_sequential.py`` pins them). :func:`load_item_text` is the one reader: the
file when the workspace has one, else generated titles when the workspace is simulated
(``truth/world.json``), else empty strings.

**Generated titles** read like catalog entries, ``"<Brand> <adjective> <noun>"``: the noun comes
from the category's own word list (so titles of a category share words, hence trigrams), the
adjective from a shared list and the brand is a made-up word of two or three syllables; each
choice is ``blake2b(item_id | category | slot)``, stable across processes and platforms.

**Word hashing** (Huang et al. 2013, the chapter's DSSM): lower-cased text is split into words
on anything that is not a letter or a digit, each word is framed as ``#word#`` and cut into its
letter trigrams (``#ca``, ``cat``, ``at#`` for ``cat``), and each trigram goes to bucket
``crc32(trigram) mod n_buckets``. A text becomes a bag: a sparse count vector ``(n_buckets,)``.
Hashing needs no vocabulary, so an unseen title still maps to known buckets.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from pipelines.core import layout, schema
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab

ITEM_TEXT_FILE = "item_text.parquet"
ITEM_TEXT = pa.schema(
    [pa.field("item_id", pa.string(), nullable=False), pa.field("title", pa.string())]
)

#: per simulator category, the nouns of its titles
CATEGORY_NOUNS: dict[str, tuple[str, ...]] = {
    "books": ("novel", "memoir", "anthology", "atlas", "cookbook", "handbook", "saga", "poems"),
    "electronics": ("headphones", "charger", "speaker", "monitor", "router", "tablet", "camera"),
    "home": ("lamp", "blanket", "curtain", "cushion", "rug", "vase", "shelf", "mirror"),
    "garden": ("shovel", "planter", "hose", "seeds", "trellis", "pruner", "compost"),
    "toys": ("puzzle", "robot", "doll", "blocks", "kite", "plush", "train set", "yo-yo"),
    "sports": ("racket", "dumbbell", "yoga mat", "helmet", "jersey", "football", "skates"),
    "beauty": ("serum", "lipstick", "shampoo", "perfume", "moisturizer", "mascara", "lotion"),
    "fashion": ("jacket", "sneakers", "scarf", "dress", "handbag", "sunglasses", "boots"),
    "grocery": ("coffee", "olive oil", "pasta", "granola", "tea", "honey", "chocolate"),
    "music": ("vinyl", "album", "guitar strings", "ukulele", "drumsticks", "songbook"),
    "movies": ("blu-ray", "box set", "documentary", "thriller", "comedy", "western", "anime"),
    "games": ("board game", "controller", "card game", "strategy game", "chess set", "dice"),
    "health": ("vitamins", "thermometer", "bandages", "probiotic", "massager", "first aid kit"),
    "auto": ("wiper", "tire gauge", "seat cover", "jump starter", "motor oil", "floor mats"),
    "pets": ("leash", "cat tree", "dog bed", "aquarium", "bird feeder", "chew toy", "litter"),
    "office": ("stapler", "notebook", "desk organizer", "fountain pen", "binder", "planner"),
}
ADJECTIVES = (
    "classic", "deluxe", "compact", "premium", "vintage", "modern", "essential", "ultra",
    "organic", "portable", "rugged", "elegant", "smart", "mini", "pro", "eco",
)  # fmt: skip
SYLLABLES = (
    "ka", "zor", "vel", "mi", "tra", "lon", "qui", "bex", "ra", "no", "sil", "du", "fen", "ori",
    "pax", "tel", "gu", "mar", "ix", "sta",
)  # fmt: skip
#: nouns of a category the simulator does not know (any other attribute table)
OTHER_NOUNS = ("item", "product", "goods", "article")

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _draw(item_id: str, category: str, slot: str, n: int) -> int:
    """A stable index in ``[0, n)`` for one choice of one item's title."""
    key = f"{item_id}|{category}|{slot}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") % n


def generate_title(item_id: str, category: str | None) -> str:
    """The simulator's title of one item: ``"<Brand> <adjective> <noun>"`` (module docstring)."""
    cat = category or ""
    nouns = CATEGORY_NOUNS.get(cat, OTHER_NOUNS)
    n_syll = 2 + _draw(item_id, cat, "length", 2)
    brand = "".join(
        SYLLABLES[_draw(item_id, cat, f"brand{k}", len(SYLLABLES))] for k in range(n_syll)
    )
    adjective = ADJECTIVES[_draw(item_id, cat, "adjective", len(ADJECTIVES))]
    noun = nouns[_draw(item_id, cat, "noun", len(nouns))]
    return f"{brand.capitalize()} {adjective} {noun}"


def generate_titles(item_ids: Sequence[str], categories: Sequence[str | None]) -> list[str]:
    """:func:`generate_title` of each ``(item_id, category)`` pair: ``len(item_ids)`` strings."""
    if len(item_ids) != len(categories):
        raise ValueError(f"{len(item_ids)} item ids but {len(categories)} categories")
    return [
        generate_title(str(i), None if pd.isna(c) else str(c))
        for i, c in zip(item_ids, categories, strict=True)
    ]


def letter_trigrams(text: str) -> list[str]:
    """Every letter trigram of every word of ``text``: ``"Red cat"`` → ``#re red ed# #ca cat at#``
    (lower-cased; a word is a run of letters or digits; a one-letter word gives ``#a#``)."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        framed = f"#{word}#"
        out.extend(framed[k : k + 3] for k in range(len(framed) - 2))
    return out


def trigram_bags(texts: Sequence[str], n_buckets: int) -> sp.csr_matrix:
    """Word hashing of ``texts``: a CSR ``(len(texts), n_buckets)`` float32 of trigram counts per
    bucket (``crc32(trigram) mod n_buckets``); an empty text is an empty row."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be positive, got {n_buckets}")
    cache: dict[str, int] = {}
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    cols: list[int] = []
    for row, text in enumerate(texts):
        for tri in letter_trigrams(text or ""):
            b = cache.get(tri)
            if b is None:
                b = cache[tri] = zlib.crc32(tri.encode()) % n_buckets
            cols.append(b)
        indptr[row + 1] = len(cols)
    data = np.ones(len(cols), dtype=np.float32)
    bags = sp.csr_matrix(
        (data, np.asarray(cols, dtype=np.int64), indptr), shape=(len(texts), n_buckets)
    )
    bags.sum_duplicates()
    return bags


# --- where item text lives -------------------------------------------------------------------
def item_text_path(settings: Settings) -> Path:
    """``data/item_text.parquet``: ``item_id``, ``title`` (schema :data:`ITEM_TEXT`)."""
    return settings.data_dir / ITEM_TEXT_FILE


def write_item_text(settings: Settings, frame: pd.DataFrame) -> Path:
    """Write ``frame`` (``item_id``, ``title``) to :func:`item_text_path` atomically, rows sorted
    by ``item_id`` (the same titles give the same bytes); the path."""
    frame = frame[["item_id", "title"]].astype({"item_id": str})
    frame = frame.sort_values("item_id", kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(frame, schema=ITEM_TEXT, preserve_index=False)
    path = item_text_path(settings)
    schema.write_table_atomic(table, path)
    return path


def load_item_text(settings: Settings, items: Vocab) -> list[str]:
    """The title of every item of ``items`` (``len(items)`` strings, ``""`` where unknown): from
    ``data/item_text.parquet`` when the workspace has it, else generated from ``items.parquet``'s
    categories when the workspace is simulated, else all empty."""
    ids = items.decode(range(len(items)))
    path = item_text_path(settings)
    if path.exists():
        table = pd.read_parquet(path, columns=["item_id", "title"])
        titles = dict(zip(table["item_id"].astype(str), table["title"].fillna(""), strict=True))
        return [titles.get(i, "") for i in ids]
    attrs = layout.attributes_path(settings, "items")
    if not layout.world_path(settings).exists() or not attrs.exists():
        return [""] * len(ids)
    frame = pd.read_parquet(attrs, columns=["item_id", "category"])
    category = dict(zip(frame["item_id"].astype(str), frame["category"], strict=True))
    known = [i for i in ids if i in category]
    generated = dict(zip(known, generate_titles(known, [category[i] for i in known]), strict=True))
    return [generated.get(i, "") for i in ids]
