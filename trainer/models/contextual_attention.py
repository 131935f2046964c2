"""Contextual attention (DeepFill v1, batched): defined once, in the runtime (:mod:`sdk.nets.contextual_attention`,
where the SDK's torch backend and the inpainter network find it); re-exported here for the trainer's code."""
from __future__ import annotations

from sdk.nets.contextual_attention import (NORM_EPS, ContextualAttention, attention_offsets,  # noqa: F401
                                           contextual_attention, fold_as_pad_sum, same_pads)

__all__ = ["ContextualAttention", "contextual_attention", "fold_as_pad_sum", "attention_offsets", "same_pads",
           "NORM_EPS"]
