"""Promotion: the F1 gate and the copy to the stable place, locally and in the emulator's S3."""

from __future__ import annotations

import numpy as np
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


# ------------------------------------------------------------------------------------------ champion, challenger


def _counts(correct: list[int], per_receipt_true: int = 4, label: str = "DATE") -> dict:
    """Receipts with ``per_receipt_true`` true entities each, of which ``correct[i]`` are found (nothing else)."""
    return {f"r{i:03d}": {label: [c, c, per_receipt_true]} for i, c in enumerate(correct)}


def test_a_candidate_above_productions_recorded_score_that_loses_on_the_same_receipts_is_refused():
    rng = np.random.default_rng(1)
    production_found = rng.integers(2, 5, size=200).tolist()
    candidate_found = [max(0, c - int(rng.integers(0, 2))) for c in production_found]  # loses a few everywhere
    candidate = _counts(candidate_found)
    # production recorded 0.5 on another split: the old gate would have promoted (candidate about 0.8)
    production = {"labels": ["DATE"], "counts": _counts(production_found), "scores": {"entity_f1": 0.5}}
    decision = promotion.decide_paired(candidate, ["DATE"], production, 0.01)
    assert decision.candidate_f1 > production["scores"]["entity_f1"]
    assert not decision.passed and "not better beyond doubt" in decision.reason
    assert decision.interval[1] < 0 and decision.difference < 0
    assert decision.receipts == 200 and decision.labels_compared == ["DATE"]


def test_a_candidate_that_wins_on_the_same_receipts_is_promoted_and_the_first_one_with_no_production():
    production_found = [2] * 100
    candidate = _counts([3] * 100)
    decision = promotion.decide_paired(
        candidate, ["DATE"], {"labels": ["DATE"], "counts": _counts(production_found)}, 0.01
    )
    assert decision.passed and decision.interval[0] > 0, decision.reason
    assert decision.label_deltas["DATE"]["support"] == 400
    first = promotion.decide_paired(candidate, ["DATE"], None, 0.01)
    assert first.passed and first.reason == "no production model yet" and first.production_f1 is None


def test_an_equal_candidate_passes_and_the_bootstrap_is_seeded():
    counts = _counts(list(np.random.default_rng(2).integers(0, 5, size=80)))
    decision = promotion.decide_paired(counts, ["DATE"], {"labels": ["DATE"], "counts": counts}, 0.01)
    assert decision.passed and decision.interval == (0.0, 0.0)
    worse = _counts([max(0, c - 1) for c in (counts[k]["DATE"][0] for k in sorted(counts))])
    a = promotion.paired_interval(
        *(promotion.count_matrix(c, sorted(counts), ["DATE"]).sum(axis=1) for c in (worse, counts))
    )
    b = promotion.paired_interval(
        *(promotion.count_matrix(c, sorted(counts), ["DATE"]).sum(axis=1) for c in (worse, counts))
    )
    assert a == b and a[1] < 0


def test_a_label_that_drops_with_enough_support_blocks_even_when_the_overall_f1_holds():
    keys = [f"r{i:03d}" for i in range(60)]
    candidate = {k: {"DATE": [4, 4, 4], "TAX": [0, 0, 1]} for k in keys}
    production = {k: {"DATE": [2, 2, 4], "TAX": [1, 1, 1]} for k in keys}
    decision = promotion.decide_paired(
        candidate, ["DATE", "TAX"], {"labels": ["DATE", "TAX"], "counts": production}, 0.01
    )
    assert decision.difference > 0 and decision.interval[0] > 0
    assert not decision.passed and "TAX -1.000 (support 60)" in decision.reason
    # under 20 true entities a label's drop is noise and does not block
    few = {k: v for k, v in list(candidate.items())[:15]}
    few_production = {k: production[k] for k in few}
    assert promotion.decide_paired(
        few, ["DATE", "TAX"], {"labels": ["DATE", "TAX"], "counts": few_production}, 0.01
    ).passed


def test_a_production_model_with_another_label_set_is_compared_on_shared_labels_and_needs_allow_label_change():
    keys = [f"r{i:03d}" for i in range(50)]
    candidate = {k: {"DATE": [3, 3, 4], "TIME": [1, 1, 1]} for k in keys}
    production = {"labels": ["DATE", "PHONE_NUMBER"], "counts": {k: {"DATE": [2, 2, 4]} for k in keys}}
    refused = promotion.decide_paired(candidate, ["DATE", "TIME"], production, 0.01)
    assert not refused.passed and "allow_label_change" in refused.reason and "PHONE_NUMBER, TIME" in refused.reason
    assert refused.labels_compared == ["DATE"]
    allowed = promotion.decide_paired(candidate, ["DATE", "TIME"], production, 0.01, allow_label_change=True)
    assert allowed.passed and allowed.candidate_f1 == pytest.approx(6 / 7)  # on DATE alone
