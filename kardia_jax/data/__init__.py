"""KardiaBench data: records -> validated dialogues -> turn-level examples in the
four-span format -> tokenised with the Qwen2.5 chat template -> grain batches.

    from kardia_jax import data
    dialogues, report = data.load_dialogues("train.jsonl", mode="skip")
    tok = data.load_tokenizer()                      # Qwen2.5 + span markers, offline
    examples = data.build_examples(dialogues, tok, max_length=2048, report=report)
    ds = data.build_sft_dataset(examples, batch_size=8, seed=0)

Names are imported lazily, so the span parser (used by the format reward) does not pull
in transformers or grain.
"""

from __future__ import annotations

from kardia_jax.lazy import lazy_exports

_EXPORTS = {
    "EMOTIONS": "emotions",
    "normalize_emotion": "emotions",
    "is_known_emotion": "emotions",
    "SPAN_NAMES": "spans",
    "SPAN_MARKERS": "spans",
    "SPAN_REASONS": "spans",
    "FourSpans": "spans",
    "SpanError": "spans",
    "parse_spans": "spans",
    "span_error": "spans",
    "normalize_target": "spans",
    "Dialogue": "schema",
    "Message": "schema",
    "RecordError": "schema",
    "RECORD_REASONS": "schema",
    "parse_record": "schema",
    "iter_records": "reader",
    "sample_path": "reader",
    "ValidationReport": "validate",
    "load_dialogues": "validate",
    "CHAT_TEMPLATE": "template",
    "render_chat": "template",
    "load_tokenizer": "tokenizer",
    "add_span_markers": "tokenizer",
    "span_marker_ids": "tokenizer",
    "TurnExample": "examples",
    "TokenizedExample": "examples",
    "turn_examples": "examples",
    "encode_dialogue": "examples",
    "encode_whole_dialogue": "examples",
    "EXAMPLE_FORMS": "examples",
    "build_examples": "examples",
    "stage_split": "splits",
    "profile_split": "splits",
    "paper_difficulty": "splits",
    "verdict_difficulty": "splits",
    "build_sft_dataset": "pipeline",
    "build_prompt_dataset": "pipeline",
    "steps_per_epoch": "pipeline",
    "dataset_stats": "stats",
    "emotion_disagreements": "stats",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
