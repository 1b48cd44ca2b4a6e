"""Training the compact model on CPU: the loss falls, checkpoints are complete or ignored, runs resume."""

from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest

from receipt_pipeline.core import batching, bio, storage, training
from receipt_pipeline.core.checkpoint_store import (
    COMPLETE_MARKER,
    CheckpointSync,
    checkpoint_dirs,
    complete_remote_checkpoints,
    restore_latest,
)
from receipt_pipeline.core.evaluation import evaluate
from receipt_pipeline.core.training import train
from receipt_pipeline.core.training_options import TrainingOptions
from receipt_pipeline.core.windows import WindowSet
from receipt_pipeline_tests.training_data import SAME_BATCHES, build_manifest, synthetic_words

# float32: validation under bf16 autocast (the default where the CPU has it) reads a few tokens otherwise than
# evaluate's float32 does, and these tests compare the two exactly
QUICK = dict(
    max_steps=8,
    eval_steps=4,
    per_device_batch_size=4,
    gradient_accumulation_steps=1,
    warmup_ratio=0.0,
    mixed_precision=False,
)


@pytest.fixture(scope="module")
def small_manifest(module_tmp):
    folder = module_tmp("windows")
    manifest, _ = build_manifest([synthetic_words(24)], folder / "windows", bio.SplitOptions(entity_share_target=0.7))
    return manifest


def test_the_collator_pads_every_tensor_to_the_longest_window_and_ignores_padding_in_the_loss():
    features = [
        {"input_ids": [101, 7, 102], "bbox": [[0, 0, 0, 0], [1, 2, 3, 4], [1000] * 4], "labels": [-100, 2, -100]},
        {"input_ids": [101, 102], "bbox": [[0, 0, 0, 0], [1000] * 4], "labels": [-100, -100]},
    ]
    batch = batching.WindowCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[101, 7, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, -100], [-100, -100, -100]]
    assert batch["bbox"].shape == (2, 3, 4) and batch["bbox"][1, 2].tolist() == [0, 0, 0, 0]
    assert batching.WindowCollator(0, multiple_of=8)(features)["input_ids"].shape == (2, 8)


def test_rare_labels_weigh_more_in_the_loss_as_the_root_of_their_rarity_up_to_the_cap():
    import torch

    tags = ["O", "B-TOTAL", "I-TOTAL", "B-ADDRESS", "I-ADDRESS", "B-DATE"]
    # 400 O, 4 TOTAL tokens, 100 ADDRESS tokens (20 B-, 80 I-), no DATE; padding ignored
    labels = np.array([0] * 400 + [1] * 4 + [3] * 20 + [4] * 80 + [-100] * 50)
    weights = batching.tag_weights(labels, tags, power=0.5, cap=8.0)
    # sqrt(100) capped; B- and I- of a label weigh the same; a label never seen gets the cap
    assert weights.tolist() == [1.0, 8.0, 8.0, 2.0, 2.0, 8.0]
    assert batching.tag_weights(labels, tags, power=0.0, cap=8.0) is None

    logits = torch.randn(1, 6, 6)
    targets = torch.tensor([[0, 1, 3, -100, 0, 1]])
    weighted = batching.TokenLoss(tag_weights=weights)({"logits": logits}, targets)
    kept = [0, 1, 2, 4, 5]
    per_token = torch.nn.functional.cross_entropy(logits[0, kept], targets[0, kept], reduction="none")
    expected = (per_token * torch.tensor([1.0, 8.0, 2.0, 1.0, 8.0])).sum() / 5
    assert torch.allclose(weighted, expected)
    assert torch.allclose(batching.TokenLoss()({"logits": logits}, targets), per_token.mean())


def test_explicit_label_weights_replace_the_computed_ones_for_their_labels_and_reach_the_loss():
    import torch

    tags = ["O", "B-TOTAL", "I-TOTAL", "B-ADDRESS", "I-ADDRESS", "B-DATE"]
    labels = np.array([0] * 400 + [1] * 4 + [3] * 20 + [4] * 80)
    computed = batching.tag_weights(labels, tags, power=0.5, cap=8.0)  # [1, 8, 8, 2, 2, 8]
    weights = batching.with_label_weights(computed, tags, {"ADDRESS": 5.0, "DATE": 0.5})
    assert weights.tolist() == [1.0, 8.0, 8.0, 5.0, 5.0, 0.5]
    assert computed.tolist() == [1.0, 8.0, 8.0, 2.0, 2.0, 8.0]  # not changed in place
    # with every computed weight 1 (power 0) the others weigh 1; with no explicit weights, nothing changes
    assert batching.with_label_weights(None, tags, {"TOTAL": 3.0}).tolist() == [1.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    assert batching.with_label_weights(None, tags, None) is None
    assert batching.with_label_weights(computed, tags, None) is computed

    logits = torch.randn(1, 4, 6)
    targets = torch.tensor([[0, 3, 4, 5]])
    weighted = batching.TokenLoss(tag_weights=weights)({"logits": logits}, targets)
    per_token = torch.nn.functional.cross_entropy(logits[0], targets[0], reduction="none")
    assert torch.allclose(weighted, (per_token * torch.tensor([1.0, 5.0, 5.0, 0.5])).sum() / 4)


def test_unset_batch_and_rate_follow_the_base_model_and_set_ones_are_kept():
    compact = TrainingOptions(base_model="compact").resolved()
    assert (compact.per_device_batch_size, compact.gradient_accumulation_steps, compact.learning_rate) == (4, 1, 2e-4)
    base = TrainingOptions(base_model="microsoft/layoutlm-base-uncased").resolved()
    assert (base.per_device_batch_size, base.gradient_accumulation_steps, base.learning_rate) == (8, 4, 5e-5)
    chosen = TrainingOptions(base_model="compact", per_device_batch_size=16, learning_rate=3e-5).resolved()
    assert (chosen.per_device_batch_size, chosen.gradient_accumulation_steps, chosen.learning_rate) == (16, 1, 3e-5)


def test_on_a_gpu_the_default_accumulation_is_folded_into_the_batch_unless_either_was_set():
    def batch(**options) -> tuple[int, int]:
        resolved = TrainingOptions(**options).resolved(gpu=True)
        return resolved.per_device_batch_size, resolved.gradient_accumulation_steps

    base = "microsoft/layoutlm-base-uncased"
    assert batch(base_model=base) == (32, 1)
    assert TrainingOptions(base_model=base).resolved(gpu=True).learning_rate == 5e-5
    assert batch(base_model="compact") == (4, 1)
    assert batch(base_model=base, per_device_batch_size=8) == (8, 4)
    assert batch(base_model=base, gradient_accumulation_steps=2) == (8, 2)


def _train_losses(run_dir) -> list[float]:
    history = json.loads((run_dir / "best" / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def test_micro_batches_with_accumulation_train_as_the_folded_batch(tmp_path):
    """What folding the accumulation into the batch on a GPU relies on: batch 2 x accumulation 2 and batch
    4 x 1 take the same optimizer steps (dropout off and a random order, so both see the same 4 windows a
    step; the token-weighted loss weighs each micro-batch by its tokens). Not bit for bit: padding a batch to its
    longest window moves its losses by up to 2.5% on these windows."""
    manifest, _ = build_manifest([synthetic_words(40)], tmp_path / "windows", bio.SplitOptions(entity_share_target=0.7))
    assert manifest["splits"]["train"]["windows"] >= 6 * 4
    folded = train(
        manifest,
        tmp_path / "folded",
        TrainingOptions(per_device_batch_size=4, gradient_accumulation_steps=1, **SAME_BATCHES),
    )
    accumulated = train(
        manifest,
        tmp_path / "accumulated",
        TrainingOptions(per_device_batch_size=2, gradient_accumulation_steps=2, **SAME_BATCHES),
    )
    assert folded.steps == accumulated.steps == 6 and folded.real_tokens == accumulated.real_tokens
    assert _train_losses(tmp_path / "accumulated") == pytest.approx(_train_losses(tmp_path / "folded"), rel=0.03)
    assert accumulated.evaluations[-1]["eval_loss"] == pytest.approx(folded.evaluations[-1]["eval_loss"], rel=0.03)
    assert folded.first_loss > 1.15 * folded.last_loss


def test_a_few_steps_make_the_loss_fall_and_leave_the_best_model_folder(small_manifest, tmp_path):
    evaluations = []
    result = train(small_manifest, tmp_path / "run", TrainingOptions(**QUICK), on_evaluate=evaluations.append)
    # on the same validation windows: a step's train loss depends on how many rare, weighted-up tags its batch has
    assert evaluations[0]["eval_loss"] > evaluations[-1]["eval_loss"], evaluations
    assert result.tag_weights["O"] == 1.0 and max(result.tag_weights.values()) > 1.0
    assert result.steps == 8 and result.device == "cpu"
    assert [e["step"] for e in evaluations] == [4, 8] and all("eval_f1" in e for e in evaluations)
    assert result.real_tokens > 0 and result.real_tokens_per_second > 0
    best = tmp_path / "run" / "best"
    names = {p.name for p in best.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "label_map.json", "trainer_state.json"} <= names
    assert {"training_options.json", "training_args.json"} <= names and not any(
        n.endswith((".bin", ".pt", ".pth")) for n in names
    )
    assert json.loads((best / "label_map.json").read_text())["tags"] == small_manifest["tags"]
    assert json.loads((best / "training_args.json").read_text())["train_sampling_strategy"] == "group_by_length"
    assert json.loads((best / "training_options.json").read_text())["learning_rate"] == 2e-4
    checkpoints = checkpoint_dirs(tmp_path / "run")
    assert checkpoints and all((c / COMPLETE_MARKER).is_file() for c in checkpoints)
    # the model kept scores on validation what selection measured, its O offset included
    chosen = next(e for e in evaluations if e["eval_f1"] == result.best_f1)
    assert result.outside_offset == chosen["eval_outside_offset"]
    assert evaluate(str(best), small_manifest, split="validation").entity["overall"]["f1"] == result.best_f1


def test_validation_picks_the_o_offset_under_which_entity_tags_that_rank_second_win(small_manifest):
    from transformers import EvalPrediction

    from receipt_pipeline.core.trainer import entity_f1_metrics

    windows = WindowSet(small_manifest, "validation")
    labels = np.full((len(windows), int(windows.lengths.max())), -100)
    for i in range(len(windows)):
        labels[i, : windows.lengths[i]] = windows[i]["labels"]
    outside = windows.tags.index(bio.OUTSIDE)
    entity = (labels >= 0) & (labels != outside)
    # O leads every true entity tag by 1 and every other tag by 3: argmax finds no entity at all
    margins = np.stack([np.where(entity, 1.0, 3.0), np.where(entity, labels, (outside + 1) % len(windows.tags))], -1)
    metrics = entity_f1_metrics(windows)(EvalPrediction(predictions=margins, label_ids=labels))
    assert metrics["argmax_f1"] == 0.0
    assert metrics["f1"] == 1.0 and metrics["outside_offset"] == -1.5  # the smallest offset that finds them all
    assert metrics["selection"] == metrics["f1"]  # by default the overall entity F1 selects


def test_the_macro_f1_of_a_group_is_the_mean_of_seqevals_per_label_f1_over_the_groups_labels():
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    from receipt_pipeline.core.trainer import macro_entity_f1

    truth = {
        "r1": ["B-PRODUCT_NAME", "I-PRODUCT_NAME", "B-LINE_TOTAL", "O", "B-DATE", "O"],
        "r2": ["B-PRODUCT_NAME", "O", "B-LINE_TOTAL", "O", "B-QUANTITY", "O"],
    }
    predicted = {
        # PRODUCT_NAME: 1 of 2 right (r1's span cut short, r2's found); LINE_TOTAL: both right; DATE missed
        "r1": ["B-PRODUCT_NAME", "O", "B-LINE_TOTAL", "O", "O", "O"],
        # QUANTITY: one predicted where none is true, the true one missed; UNIT_PRICE: predicted, never true
        "r2": ["B-PRODUCT_NAME", "B-QUANTITY", "B-LINE_TOTAL", "B-UNIT_PRICE", "O", "O"],
    }
    group = ("PRODUCT_NAME", "QUANTITY", "UNIT_PRICE", "LINE_TOTAL")
    # by hand: PRODUCT_NAME P 1/2 R 1/2 F1 0.5; LINE_TOTAL 1.0; QUANTITY P 0/1 R 0/1: 0; UNIT_PRICE P 0/1: 0
    assert macro_entity_f1(truth, predicted, group) == pytest.approx((0.5 + 1.0 + 0.0 + 0.0) / 4)
    report = classification_report(
        list(truth.values()), list(predicted.values()), mode="strict", scheme=IOB2, output_dict=True, zero_division=0
    )
    assert macro_entity_f1(truth, predicted, group) == pytest.approx(
        sum(report[label]["f1-score"] for label in group) / len(group)
    )
    # DATE is outside the group; a label of the group with no true nor predicted entity is not counted
    assert macro_entity_f1(truth, predicted, ("PRODUCT_NAME", "DATE")) == pytest.approx((0.5 + 0.0) / 2)
    assert macro_entity_f1(truth, predicted, ("LINE_TOTAL", "COUPON")) == 1.0
    assert macro_entity_f1(truth, predicted, ("COUPON",)) == 0.0
    assert macro_entity_f1(truth, {}, group) == 0.0  # nothing predicted


def test_the_groups_macro_f1_picks_the_o_offset_and_is_reported_beside_the_overall_scores(small_manifest):
    from transformers import EvalPrediction

    from receipt_pipeline.core.evaluation import overall_entity_scores, receipt_tags, true_receipt_tags
    from receipt_pipeline.core.trainer import entity_f1_metrics, macro_entity_f1

    windows = WindowSet(small_manifest, "validation")
    labels = np.full((len(windows), int(windows.lengths.max())), -100)
    for i in range(len(windows)):
        labels[i, : windows.lengths[i]] = windows[i]["labels"]
    tags = windows.tags
    outside = tags.index(bio.OUTSIDE)
    group = ("MERCHANT_NAME", "DATE", "ADDRESS_LINE", "GRAND_TOTAL")  # a few entities a receipt
    in_group = np.isin(labels, [tags.index(t) for t in tags if t.split("-", 1)[-1] in group])
    entity = (labels >= 0) & (labels != outside)
    # other entities win at offset 0; the group's rank second to O by 1, and every O token's best entity tag
    # (a tax, outside the group) by 1.2: from offset -1.5 the group is found and every O token read as a tax
    lead = np.where(in_group, 1.0, np.where(entity, -1.0, 1.2))
    best = np.where(entity, labels, tags.index("B-TAX"))
    margins = np.stack([lead, best], -1).astype(np.float32)
    prediction = EvalPrediction(predictions=margins, label_ids=labels)

    def read(offset: float) -> dict:
        ids = [np.where(margins[i, :n, 0] + offset >= 0, outside, margins[i, :n, 1]).astype(np.int64)
               for i, n in enumerate(windows.lengths)]  # fmt: skip
        return receipt_tags(windows, ids)

    truth = true_receipt_tags(windows)
    overall = {offset: overall_entity_scores(truth, read(offset))["f1"] for offset in (0.0, -1.5)}
    macro = {offset: macro_entity_f1(truth, read(offset), group) for offset in (0.0, -1.5)}
    assert overall[0.0] > overall[-1.5] and macro[-1.5] == 1.0 > macro[0.0] == 0.0  # the two disagree

    by_f1 = entity_f1_metrics(windows)(prediction)
    assert by_f1["outside_offset"] == 0.0 and by_f1["selection"] == by_f1["f1"] == overall[0.0]
    by_group = entity_f1_metrics(windows, group)(prediction)
    assert by_group["outside_offset"] == -1.5 and by_group["selection"] == 1.0
    # the overall scores are still reported, under the offset the group chose
    assert by_group["f1"] == overall[-1.5] and by_group["argmax_f1"] == by_f1["argmax_f1"] == overall[0.0]


def test_the_model_kept_predicts_as_validation_scored_it_with_the_weights_taken_out_and_the_offset_added():
    import torch

    from receipt_pipeline.core.trainer import apply_outside_offset, outside_margins, weight_correction

    tags = ["O", "B-TOTAL", "B-DATE"]
    weights = np.array([1.0, 9.0, 4.0], dtype=np.float32)
    correction = weight_correction(weights)
    assert np.allclose(correction, np.log(weights))
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.classifier = torch.nn.Linear(5, 3)
    features = 10 * torch.randn(200, 5)
    with torch.no_grad():
        margins = outside_margins(tags, correction)(model.classifier(features), None).numpy()
    offset = 0.5
    scored = np.where(margins[:, 0] + offset >= 0, 0, margins[:, 1])  # how validation reads a prediction
    apply_outside_offset(model, tags, offset, correction)
    with torch.no_grad():
        kept = model.classifier(features).argmax(-1).numpy()
    assert (kept == scored).mean() == 1.0
    assert len(set(kept.tolist())) > 1  # not all one tag: the comparison says something


def test_a_rerun_resumes_from_the_newest_complete_checkpoint_and_skips_a_half_written_one(small_manifest, tmp_path):
    run = tmp_path / "run"
    train(small_manifest, run, TrainingOptions(**{**QUICK, "max_steps": 4}))
    # a crash mid-save leaves a checkpoint folder without its marker: it is never resumed from
    half = run / "checkpoints" / "checkpoint-99"
    half.mkdir()
    (half / "config.json").write_text("{")
    result = train(small_manifest, run, TrainingOptions(**QUICK))
    assert result.resumed_from == str(run / "checkpoints" / "checkpoint-4")
    assert result.steps == 8
    assert not half.exists()


def test_a_checkpoint_with_another_label_list_is_refused(small_manifest, tmp_path):
    run = tmp_path / "run"
    train(small_manifest, run, TrainingOptions(**{**QUICK, "max_steps": 4}))
    relabelled = {**small_manifest, "tags": [*small_manifest["tags"], "B-NEW", "I-NEW"]}
    with pytest.raises(training.TrainingError, match="trained on the tags .* new run folder"):
        train(relabelled, run, TrainingOptions(**QUICK))


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes_from_it(small_manifest, tmp_path):
    run = tmp_path / "run"
    options = TrainingOptions(**{**QUICK, "max_steps": 40, "eval_steps": 20})

    timer = threading.Timer(8.0, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with pytest.raises(training.TrainingInterrupted, match="SIGTERM .* a re-run resumes"):
            train(small_manifest, run, options)
    finally:
        timer.cancel()
    [saved] = [c for c in checkpoint_dirs(run) if (c / COMPLETE_MARKER).is_file()]
    interrupted_at = int(saved.name.split("-")[-1])
    assert 0 < interrupted_at < 40
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back
    result = train(small_manifest, run, TrainingOptions(**{**QUICK, "max_steps": interrupted_at + 2, "eval_steps": 20}))
    assert result.resumed_from == str(saved)
    assert result.steps == interrupted_at + 2


def test_checkpoints_sync_to_s3_marker_last_and_restore_without_pickles(small_manifest, tmp_path, artifacts_bucket):
    run_uri = f"s3://{artifacts_bucket}/runs/r1"
    result = train(small_manifest, tmp_path / "run", TrainingOptions(**QUICK), sync=CheckpointSync(run_uri))
    complete = complete_remote_checkpoints(run_uri)
    assert sorted(complete) == [int(c.name.split("-")[-1]) for c in checkpoint_dirs(tmp_path / "run")]
    uploaded = [uri.rsplit("/", 1)[-1] for uris in complete.values() for uri in uris]
    assert "model.safetensors" in uploaded and not any(n.endswith((".pt", ".pth", ".bin")) for n in uploaded)
    assert storage.exists(f"{run_uri}/best/model.safetensors") and storage.exists(f"{run_uri}/best/COMPLETE")

    # an upload cut short (no marker) is not a checkpoint
    storage.write_bytes(f"{run_uri}/checkpoint-999/model.safetensors", b"partial")
    restored = restore_latest(run_uri, tmp_path / "fresh")
    assert restored.name == f"checkpoint-{max(complete)}"
    assert (restored / COMPLETE_MARKER).is_file()
    assert {p.suffix for p in restored.iterdir()} <= {".json", ".safetensors", ".txt", ""}

    # the F1 that chose the best checkpoint is the F1 the evaluation finds for it on the same windows
    report = evaluate(f"{run_uri}/best", small_manifest, split="validation")
    assert report.windows > 0
    assert result.best_f1 == pytest.approx(max(e.get("eval_f1", 0) for e in result.evaluations))
    assert report.entity["overall"]["f1"] == pytest.approx(result.best_f1)


def test_dynamic_padding_feeds_fewer_tokens_than_padding_to_512_and_trains_the_same(small_manifest, tmp_path):
    # the same order (not grouped by length) and no dropout: padding is all that differs
    same = dict(QUICK, max_steps=2, eval_steps=2, group_by_length=False, dropout=0.0)
    fixed = train(small_manifest, tmp_path / "fixed", TrainingOptions(pad_to_length=512, **same))
    dynamic = train(small_manifest, tmp_path / "dynamic", TrainingOptions(**same))

    assert fixed.padded_tokens == 2 * 4 * 512
    assert dynamic.real_tokens == fixed.real_tokens
    assert dynamic.padded_tokens < fixed.padded_tokens
    assert fixed.real_tokens / fixed.padded_tokens < dynamic.real_tokens / dynamic.padded_tokens <= 1
    # padding is masked out of attention and loss: the losses agree but for float rounding (other shapes)
    assert dynamic.first_loss == pytest.approx(fixed.first_loss, rel=1e-3)
    assert dynamic.last_loss == pytest.approx(fixed.last_loss, rel=0.01)  # Adam amplifies the rounding
    assert dynamic.step_seconds > 0 and dynamic.step_seconds <= dynamic.wall_seconds


def test_the_length_bucket_sampler_pads_little_and_its_order_depends_only_on_seed_and_epoch():
    lengths = [((i * 37) % 500) + 12 for i in range(103)]
    sampler = batching.LengthBucketSampler(lengths, batch_size=8, seed=3)
    first = sampler.batches()
    assert sorted(i for batch in first for i in batch) == list(range(103))  # every window once
    assert max(lengths[i] for i in first[0]) == max(lengths)  # the longest batch first
    # full batches, and the short remainder (the shortest windows) last: the DataLoader, which cuts the
    # stream into batches of 8 again, then cuts it where the sampler did
    assert [len(batch) for batch in first] == [8] * 12 + [7]
    assert max(lengths[i] for i in first[-1]) == sorted(lengths)[6]
    # batches of similar length: far less padding than the same windows batched in index order
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in first)
    in_order = sum(8 * max(lengths[i : i + 8]) for i in range(0, 103, 8))
    assert sum(lengths) / padded > 0.9 > 0.7 > sum(lengths) / in_order

    again = batching.LengthBucketSampler(lengths, batch_size=8, seed=3)
    assert again.batches() == first and list(again) == [i for batch in first for i in batch]
    sampler.set_epoch(1)
    assert sampler.batches() != first
    again.set_epoch(1)
    assert again.batches() == sampler.batches()


def test_the_padding_efficiency_is_that_of_the_batches_training_feeds_the_model(small_manifest):
    import torch

    from receipt_pipeline.core.windows import WindowSet

    train_set = WindowSet(small_manifest, "train")
    for batch_size in (4, 8):
        # what the Trainer builds from WindowTrainer's sampler and collator, on a CPU
        sampler = batching.LengthBucketSampler(train_set.lengths, batch_size, seed=42)
        loader = torch.utils.data.DataLoader(
            train_set, batch_size=batch_size, sampler=sampler, collate_fn=batching.WindowCollator(0)
        )
        padded = sum(int(batch["input_ids"].numel()) for batch in loader)
        efficiency = batching.padding_efficiency(train_set.lengths, batch_size)
        assert efficiency["length_buckets"] == pytest.approx(int(train_set.lengths.sum()) / padded)
        assert efficiency["padded_to_max"] == pytest.approx(train_set.lengths.sum() / (len(train_set) * 512))
        assert efficiency["padded_to_max"] < efficiency["length_buckets"] <= 1.0


def _other_tokenizer_folder(folder):
    """A base model folder whose tokenizer has a vocabulary of its own (a few receipt words)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "total", "cash", "date", "store", "tax"]
    backend = Tokenizer(models.WordPiece({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    BertTokenizerFast(tokenizer_object=backend).save_pretrained(str(folder))
    return folder


def test_a_base_model_whose_tokenizer_differs_from_the_windows_is_refused_naming_both(small_manifest, tmp_path):
    other = str(_other_tokenizer_folder(tmp_path / "other-base-model"))

    with pytest.raises(training.TrainingError) as refused:
        train(small_manifest, tmp_path / "run", TrainingOptions(base_model=other, **QUICK))

    message = str(refused.value)
    assert repr(other) in message and repr(small_manifest["tokenizer"]["base_model"]) in message
    assert small_manifest["tokenizer"]["fingerprint"] in message
    assert not (tmp_path / "run" / "best").exists(), "refused before anything was trained or saved"
    # the windows' own base model passes the same check
    assert training.matching_tokenizer("compact", small_manifest).vocab_size > 30000


def test_selection_by_a_groups_macro_f1_and_explicit_label_weights_are_recorded_with_the_model(
    small_manifest, tmp_path
):
    evaluations = []
    options = TrainingOptions(
        **{**QUICK, "max_steps": 4, "eval_steps": 2},
        selection_metric="macro_f1:product_details",
        label_weights={"GRAND_TOTAL": 3.0, "DATE": 0.5},
    )
    result = train(small_manifest, tmp_path / "run", options, on_evaluate=evaluations.append)
    assert all("eval_selection" in e and "eval_f1" in e for e in evaluations)
    assert (result.selection_metric, result.label_weights) == (
        "macro_f1:product_details",
        {"GRAND_TOTAL": 3.0, "DATE": 0.5},
    )
    assert result.tag_weights["B-GRAND_TOTAL"] == result.tag_weights["I-GRAND_TOTAL"] == 3.0
    assert result.tag_weights["B-DATE"] == 0.5 and result.tag_weights["O"] == 1.0
    assert result.hyperparameters["selection_metric"] == "macro_f1:product_details"
    # the checkpoint kept is the best by the group's F1; best_f1 is its overall entity F1, its offset its own
    assert result.best_selection == max(e["eval_selection"] for e in evaluations)
    chosen = next(e for e in evaluations if e["eval_selection"] == result.best_selection)
    assert (result.best_f1, result.outside_offset) == (chosen["eval_f1"], chosen["eval_outside_offset"])
    best = tmp_path / "run" / "best"
    marker = json.loads((best / COMPLETE_MARKER).read_text())
    assert marker["selection_metric"] == "macro_f1:product_details" and marker["best_metric"] == result.best_selection
    assert marker["label_weights"] == {"GRAND_TOTAL": 3.0, "DATE": 0.5}
    saved = json.loads((best / "training_options.json").read_text())
    assert (saved["selection_metric"], saved["label_weights"]) == (options.selection_metric, options.label_weights)
    # the model kept, the weights' correction and the offset in its biases, reads validation as selection did
    assert evaluate(str(best), small_manifest, split="validation").entity["overall"]["f1"] == result.best_f1


def test_early_stopping_reads_the_selection_metric_not_the_overall_f1():
    from types import SimpleNamespace

    from receipt_pipeline.core.trainer import SmoothedEarlyStopping

    callback = SmoothedEarlyStopping(patience=3)
    state = SimpleNamespace(log_history=[])
    plateau = [0.30, 0.50, 0.60, 0.61, 0.58, 0.59, 0.57, 0.58]
    for count, score in enumerate(plateau, start=1):
        # the overall F1 keeps rising; the selection metric has stopped
        state.log_history.append({"eval_f1": 0.1 * count, "eval_selection": score, "step": count})
        control = SimpleNamespace(should_training_stop=False)
        callback.on_evaluate(None, state, control)
        if control.should_training_stop:
            break
    assert count == 8 and control.should_training_stop


@pytest.mark.parametrize(
    ("scores", "stops_after"),
    [
        # a peak and three lower scores: patience 3 on the raw F1 stopped here, the average still rises
        ([0.30, 0.45, 0.52, 0.60, 0.55, 0.58, 0.57, 0.63, 0.66], None),
        # a real plateau: three evaluations without a better average
        ([0.30, 0.50, 0.60, 0.61, 0.58, 0.59, 0.57, 0.58], 8),
    ],
)
def test_early_stopping_follows_the_average_validation_f1_not_single_noisy_evaluations(scores, stops_after):
    from types import SimpleNamespace

    from receipt_pipeline.core.trainer import SmoothedEarlyStopping

    callback = SmoothedEarlyStopping(patience=3)
    state = SimpleNamespace(log_history=[])
    stopped = None
    for count, score in enumerate(scores, start=1):
        state.log_history.append({"eval_f1": score, "eval_selection": score, "step": count})
        control = SimpleNamespace(should_training_stop=False)
        callback.on_evaluate(None, state, control)
        if control.should_training_stop:
            stopped = count
            break
    assert stopped == stops_after


def _budgeted_schedule(total_steps: int, clock: dict):
    import torch

    from receipt_pipeline.core.trainer import BudgetedLinearSchedule

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    return optimizer, BudgetedLinearSchedule(optimizer, total_steps, 0.1, lambda: clock["spent"])


def test_a_time_budget_anneals_the_learning_rate_to_zero_before_the_planned_steps_end():
    clock = {"spent": 0.0}
    optimizer, schedule = _budgeted_schedule(total_steps=1000, clock=clock)
    rates = []
    for step in range(100):
        clock["spent"] = step / 100  # the budget ends after 100 of the 1,000 planned steps
        optimizer.step()
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    peak = max(rates)
    assert rates.index(peak) == 10 and peak == pytest.approx(1e-3, rel=0.02), "warm-up: the first tenth of the budget"
    assert rates[-1] < 0.02 * peak, "annealed as the budget runs out"
    assert all(later <= earlier for earlier, later in zip(rates[10:], rates[11:], strict=False))

    # with the budget to spare, the steps lay it out: the Trainer's own linear schedule
    clock["spent"] = 0.0
    optimizer, by_steps = _budgeted_schedule(total_steps=100, clock=clock)
    for _ in range(55):
        optimizer.step()
        by_steps.step()
    assert by_steps.get_last_lr()[0] == pytest.approx(1e-3 * 45 / 90)


def test_a_resumed_run_lays_the_rest_of_the_schedule_over_its_own_budget(tmp_path):
    import torch

    clock = {"spent": 0.0}
    optimizer, schedule = _budgeted_schedule(total_steps=1000, clock=clock)
    for step in range(60):
        clock["spent"] = step / 100
        optimizer.step()
        schedule.step()
    before = schedule.get_last_lr()[0]
    torch.save(schedule.state_dict(), tmp_path / "scheduler.pt")

    clock["spent"] = 0.0  # a new process, a new budget
    optimizer, resumed = _budgeted_schedule(total_steps=1000, clock=clock)
    resumed.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    optimizer.step()
    resumed.step()
    assert resumed.get_last_lr()[0] == pytest.approx(before, rel=0.05), "goes on where it stopped, no new warm-up"
    clock["spent"] = 0.5
    optimizer.step()
    resumed.step()
    assert resumed.progress == pytest.approx(0.59 + 0.41 * 0.5, abs=0.01)
    clock["spent"] = 1.0
    optimizer.step()
    resumed.step()
    assert resumed.get_last_lr()[0] == 0.0
