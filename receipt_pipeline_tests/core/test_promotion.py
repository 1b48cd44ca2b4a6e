"""Promotion: the F1 gate and the copy to the stable place, locally and in the emulator's S3."""

from __future__ import annotations

import pytest

from receipt_pipeline.core import promotion, storage


def _model_folder(root: str, weights: bytes) -> str:
    for name, data in {
        "model.safetensors": weights,
        "config.json": b"{}",
        "label_map.json": b'{"tags": ["O"]}',
        "vocab.txt": b"[PAD]",
        "COMPLETE": b'{"step": 4}',
    }.items():
        storage.write_bytes(storage.join(root, name), data)
    return root


def _production(f1: float) -> dict:
    return {"scores": {"entity_f1": f1}, "checkpoint": {"version": "abc"}}


def test_the_gate_passes_without_production_within_the_tolerance_and_above_and_blocks_below():
    assert promotion.decide(0.2, None, 0.01).passed
    assert promotion.decide(0.80, _production(0.80), 0.01).passed
    assert promotion.decide(0.795, _production(0.80), 0.01).passed
    assert promotion.decide(0.90, _production(0.80), 0.0).passed
    blocked = promotion.decide(0.70, _production(0.80), 0.01)
    assert not blocked.passed and blocked.production_f1 == 0.80
    assert "0.1000 below the production model's 0.8000" in blocked.reason and "abc" in blocked.reason


@pytest.mark.parametrize("where", ["local", "s3"])
def test_promotion_copies_the_model_replaces_the_previous_one_and_writes_its_manifest_last(where, tmp_path, request):
    if where == "s3":
        bucket = request.getfixturevalue("artifacts_bucket")
        base = f"s3://{bucket}"
    else:
        base = str(tmp_path)
    root = storage.join(base, "models", "production")
    first = _model_folder(storage.join(base, "runs", "a", "best"), b"weights-a")
    storage.write_bytes(storage.join(first, "tokenizer.json"), b"{}")
    promotion.promote(first, root, {"scores": {"entity_f1": 0.5}, "checkpoint": {"version": "a"}})
    assert storage.read_bytes(storage.join(root, "tokenizer.json")) == b"{}"

    second = _model_folder(storage.join(base, "runs", "b", "best"), b"weights-b")
    manifest = promotion.promote(second, root, {"scores": {"entity_f1": 0.6}, "checkpoint": {"version": "b"}})

    assert storage.read_bytes(storage.join(root, "model.safetensors")) == b"weights-b"
    assert not storage.exists(storage.join(root, "tokenizer.json")), "a file of the previous model was left"
    assert storage.exists(storage.join(root, "COMPLETE"))
    current = promotion.current_production(root)
    assert current == manifest and current["checkpoint"]["version"] == "b"
    assert sorted(current["files"]) == ["config.json", "label_map.json", "model.safetensors", "vocab.txt"]


def test_a_copy_cut_short_leaves_no_folder_that_claims_to_be_production(tmp_path, monkeypatch):
    root = str(tmp_path / "production")
    promotion.promote(_model_folder(str(tmp_path / "a"), b"a"), root, _production(0.5))
    copies = []
    real_copy = storage.copy

    def failing_copy(source: str, target: str) -> None:
        copies.append(target)
        if len(copies) == 2:
            raise OSError("disk full")
        real_copy(source, target)

    monkeypatch.setattr(storage, "copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        promotion.promote(_model_folder(str(tmp_path / "b"), b"b"), root, _production(0.6))
    assert promotion.current_production(root) is None
    assert not (tmp_path / "production" / "COMPLETE").exists()


def test_a_folder_without_safetensors_weights_is_refused(tmp_path):
    storage.write_bytes(str(tmp_path / "run" / "config.json"), b"{}")
    with pytest.raises(promotion.PromotionError, match="no safetensors weights"):
        promotion.promote(str(tmp_path / "run"), str(tmp_path / "production"), _production(0.5))
    assert promotion.current_production(str(tmp_path / "production")) is None
