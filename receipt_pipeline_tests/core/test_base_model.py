"""Loading the base model's tokenizer from the package, a local folder, S3, or (offline here) the hub."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from receipt_pipeline.core import base_model, storage
from receipt_pipeline.core.settings import PROD_BASE_MODEL

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def _receipt_tokens(tokenizer) -> list[str]:
    return tokenizer.tokenize("TOTAL RM 12.50 Starbucks Coffee")


def test_the_compact_tokenizer_ships_with_a_package_and_knows_its_vocabulary():
    tokenizer = base_model.load_tokenizer(base_model.COMPACT)
    assert tokenizer.is_fast
    assert _receipt_tokens(tokenizer) == ["total", "rm", "12", ".", "50", "starbucks", "coffee"]
    assert tokenizer.unk_token not in _receipt_tokens(tokenizer)


def test_a_local_folder_loads_the_same_tokenizer(tmp_path):
    for name in TOKENIZER_FILES:
        shutil.copy(base_model.compact_dir() / name, tmp_path / name)
    local = base_model.load_tokenizer(str(tmp_path))
    compact = base_model.load_tokenizer(base_model.COMPACT)
    assert base_model.tokenizer_fingerprint(local) == base_model.tokenizer_fingerprint(compact)


def test_an_s3_prefix_is_fetched_without_its_pickles(tmp_path, artifacts_bucket, monkeypatch):
    monkeypatch.setenv("RECEIPT_PIPELINE_MODEL_CACHE", str(tmp_path / "cache"))
    prefix = f"s3://{artifacts_bucket}/models/base"
    for name in TOKENIZER_FILES:
        storage.write_bytes(f"{prefix}/{name}", (base_model.compact_dir() / name).read_bytes())
    storage.write_bytes(f"{prefix}/model.safetensors", b"weights are fetched too, as safetensors")
    storage.write_bytes(f"{prefix}/pytorch_model.bin", b"a pickle: never fetched")
    tokenizer = base_model.load_tokenizer(prefix)
    assert _receipt_tokens(tokenizer)[0] == "total"
    fetched = {path.name for path in Path(base_model.resolve(prefix)).iterdir()}
    assert fetched == {*TOKENIZER_FILES, "model.safetensors"}


def test_files_replaced_under_the_same_s3_prefix_are_fetched_again_not_served_from_the_cache(
    tmp_path, artifacts_bucket, monkeypatch
):
    # a promotion rewrites models/production in place: the champion the gate scores must be the current one
    monkeypatch.setenv("RECEIPT_PIPELINE_MODEL_CACHE", str(tmp_path / "cache"))
    prefix = f"s3://{artifacts_bucket}/models/replaced"
    storage.write_bytes(f"{prefix}/config.json", b'{"model": "first"}')
    storage.write_bytes(f"{prefix}/model.safetensors", b"first weights")
    first = Path(base_model.resolve(prefix))
    assert base_model.resolve(prefix) == str(first), "an unchanged prefix is served from the cache"
    storage.write_bytes(f"{prefix}/model.safetensors", b"second weights")
    second = Path(base_model.resolve(prefix))
    assert (second / "model.safetensors").read_bytes() == b"second weights"
    assert (second / "config.json").read_bytes() == b'{"model": "first"}'
    assert (first / "model.safetensors").read_bytes() == b"first weights", "a copy served lately is left alone"

    # once nothing has been served the older copy for a while, the next fetch of the prefix removes it
    stale = time.time() - base_model.STALE_COPY_SECONDS - 1
    os.utime(first, (stale, stale))
    other = f"s3://{artifacts_bucket}/models/other"
    storage.write_bytes(f"{other}/model.safetensors", b"another prefix")
    other_copy = Path(base_model.resolve(other))
    os.utime(other_copy, (stale, stale))
    assert base_model.resolve(prefix) == str(second)
    assert not first.exists() and second.exists()
    assert other_copy.exists(), "another prefix's copy is not this prefix's to prune"


def test_an_s3_prefix_with_only_pickled_weights_is_refused(artifacts_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("RECEIPT_PIPELINE_MODEL_CACHE", str(tmp_path / "cache"))
    prefix = f"s3://{artifacts_bucket}/models/pickled"
    storage.write_bytes(f"{prefix}/config.json", b"{}")
    storage.write_bytes(f"{prefix}/pytorch_model.bin", b"pickle")
    with pytest.raises(base_model.BaseModelError, match="only pickled weights.*pytorch_model.bin"):
        base_model.resolve(prefix)
    with pytest.raises(base_model.BaseModelError, match="nothing under that S3 prefix"):
        base_model.resolve(f"s3://{artifacts_bucket}/models/absent")


def test_a_hub_id_that_cannot_be_fetched_fails_naming_it(monkeypatch):
    # no hub from this machine (offline mode fails at once instead of retrying); the error must still be clear
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert base_model.resolve(PROD_BASE_MODEL) == PROD_BASE_MODEL
    with pytest.raises(base_model.BaseModelError, match="microsoft/layoutlm-base-uncased"):
        base_model.load_tokenizer(PROD_BASE_MODEL)
    with pytest.raises(base_model.BaseModelError, match="no such folder"):
        base_model.resolve("./no/such/model")


def test_a_vocabulary_that_turns_every_word_into_unk_is_refused(tmp_path):
    # the transformers 5 trap: BertTokenizerFast(vocab_file=...) ignores the file; what it saves knows no words
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "[PAD]": 3}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    broken = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]"
    )
    broken.save_pretrained(tmp_path)
    with pytest.raises(base_model.BaseModelError, match=r"every probe word to \[UNK\]"):
        base_model.load_tokenizer(str(tmp_path))
