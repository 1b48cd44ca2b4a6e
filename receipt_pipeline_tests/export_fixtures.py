"""A tiny randomly initialised LayoutLM and windows to export it on: tests of the export path, where a
2-layer model of width 64 exports and converts in seconds and what it predicts does not matter."""

from __future__ import annotations

import json
from pathlib import Path

from receipt_pipeline.core import bio
from receipt_pipeline_tests.training_data import build_manifest, compact_tokenizer, synthetic_words


def all_test_windows(folder: Path, receipts: int = 12) -> dict:
    """Windows of synthetic receipts, every receipt in the test split; the manifest is saved beside them."""
    manifest, _ = build_manifest([synthetic_words(receipts)], folder / "windows", bio.SplitOptions(shares=(0, 0, 1)))
    (folder / "windows_manifest.json").write_text(json.dumps(manifest))
    return manifest


def tiny_classifier(manifest: dict, folder: Path, seed: int = 0) -> Path:
    """A model folder as training leaves one (weights, config, tokenizer, label_map.json): the compact
    model's vocabulary and 2-D positions, 2 layers of width 64, random weights."""
    import torch
    from transformers import LayoutLMForTokenClassification

    from receipt_pipeline.core.model import compact_config

    config = compact_config(manifest["tags"])
    config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size = 2, 64, 2, 128
    torch.manual_seed(seed)
    LayoutLMForTokenClassification(config).save_pretrained(str(folder))
    compact_tokenizer().save_pretrained(str(folder))
    (folder / "label_map.json").write_text(json.dumps({"tags": manifest["tags"], "labels": manifest["labels"]}))
    return folder
