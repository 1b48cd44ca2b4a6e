"""The word table's content hash: the data version of both source assets."""

from receipt_pipeline.core import word_table
from receipt_pipeline_tests.training_data import synthetic_words


def test_the_content_hash_ignores_row_order_and_changes_with_any_value():
    frame = synthetic_words(receipts=5)
    version = word_table.content_hash(frame)
    shuffled = frame.sample(frac=1.0, random_state=3)
    assert word_table.content_hash(shuffled) == version
    relabelled = frame.copy()
    relabelled.loc[relabelled.index[0], "label"] = "SOMETHING_ELSE"
    assert word_table.content_hash(relabelled) != version
    moved = frame.copy()
    moved.loc[moved.index[-1], "x0"] += 0.001
    assert word_table.content_hash(moved) != version
