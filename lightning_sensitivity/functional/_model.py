"""Transitional re-exports of the model preamble, which now lives in modules named for their concern.

* :mod:`~lightning_sensitivity.functional.model` (public): ``measurement_options``, ``current_options``,
  ``check_measure_dtype``, ``check_output_key``, ``unwrap_model``, ``model_output``, ``check_logits``;
* ``_purity``: ``pure_model``, ``measurement_context``, ``checkpointing_off``, ``detached_state``, ``as_function``,
  ``state_slots``, ``model_dtype``;
* ``_sharding``: ``has_sharded_parameters``, ``is_fsdp1``, ``is_dtensor``;
* ``_inputs``: ``prepare_inputs``, ``prepare_targets``, ``prepare_model_kwargs``, ``ModelKwargs``, ``match_model``,
  ``take``, ``check_loss_fn``;
* ``_chunks``: ``chunks``, ``check_chunk_size``, ``Progress``, ``report``, ``check_progress``;
* :mod:`~lightning_sensitivity.functional.predict` (public): ``predict_logits``.

Only ``functional/gram/``, ``per_layer.py`` and ``gram_statistics.py`` still import from here (they are being
reorganised on another branch); once their imports point at the modules above, delete this file.
"""

from lightning_sensitivity.functional._chunks import Progress, check_chunk_size, check_progress, chunks, report
from lightning_sensitivity.functional._inputs import (
    ModelKwargs,
    check_loss_fn,
    match_model,
    prepare_inputs,
    prepare_model_kwargs,
    prepare_targets,
    take,
)
from lightning_sensitivity.functional._purity import (
    as_function,
    checkpointing_off,
    detached_state,
    measurement_context,
    model_dtype,
    pure_model,
    state_slots,
)
from lightning_sensitivity.functional._sharding import has_sharded_parameters, is_dtensor, is_fsdp1
from lightning_sensitivity.functional.model import (
    MeasurementOptions,
    check_logits,
    check_measure_dtype,
    check_output_key,
    current_options,
    measurement_options,
    model_output,
    unwrap_model,
)
from lightning_sensitivity.functional.predict import predict_logits

__all__ = [
    "MeasurementOptions",
    "ModelKwargs",
    "Progress",
    "as_function",
    "check_chunk_size",
    "check_logits",
    "check_loss_fn",
    "check_measure_dtype",
    "check_output_key",
    "check_progress",
    "checkpointing_off",
    "chunks",
    "current_options",
    "detached_state",
    "has_sharded_parameters",
    "is_dtensor",
    "is_fsdp1",
    "match_model",
    "measurement_context",
    "measurement_options",
    "model_dtype",
    "model_output",
    "predict_logits",
    "prepare_inputs",
    "prepare_model_kwargs",
    "prepare_targets",
    "pure_model",
    "report",
    "state_slots",
    "take",
    "unwrap_model",
]
