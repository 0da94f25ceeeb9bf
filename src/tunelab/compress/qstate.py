"""A quantized model's state as plain tensors, so it is saved with safetensors like every other
model tunelab writes (no pickle), and read back into a quantized skeleton of the same model.

A quantized tensor becomes its int8 values plus scale(s), zero point(s) and axis; a linear
layer's packed parameters (a tuple of weight and bias) become those two; a dtype becomes a code.
Keys are ``name::field`` (``name::weight::int`` inside a packed tuple).
"""

from __future__ import annotations

import torch

DTYPES = {torch.qint8: 0, torch.quint8: 1, torch.qint32: 2, torch.float32: 3}
BY_CODE = {code: dtype for dtype, code in DTYPES.items()}
PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)


def to_tensors(state: dict) -> dict[str, torch.Tensor]:
    flat = {}
    for key, value in state.items():
        if isinstance(value, tuple):  # a linear layer's packed (weight, bias)
            weight, bias = value
            flat |= _fields(f"{key}::weight", weight)
            if bias is not None:
                flat |= _fields(f"{key}::bias", bias)
        elif isinstance(value, torch.dtype):
            flat[f"{key}::dtype"] = torch.tensor(DTYPES[value])
        else:
            flat |= _fields(key, value)
    return flat


def from_tensors(flat: dict[str, torch.Tensor]) -> dict:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        name, _, field = key.partition("::")
        grouped.setdefault(name, {})[field] = value
    state = {}
    for name, fields in grouped.items():
        if set(fields) == {"dtype"}:
            state[name] = BY_CODE[int(fields["dtype"])]
        elif any(field.startswith("weight") for field in fields):
            bias = _tensor(_under(fields, "bias")) if any(f.startswith("bias") for f in fields) else None
            state[name] = (_tensor(_under(fields, "weight")), bias)
        else:
            state[name] = _tensor(fields)
    return state


def _fields(key: str, value: torch.Tensor) -> dict:
    if not value.is_quantized:
        return {key: value.detach().contiguous()}
    out = {f"{key}::int": value.int_repr().contiguous(), f"{key}::qdtype": torch.tensor(DTYPES[value.dtype])}
    if value.qscheme() in PER_CHANNEL:
        return out | {
            f"{key}::scales": value.q_per_channel_scales().contiguous(),
            f"{key}::zeros": value.q_per_channel_zero_points().contiguous(),
            f"{key}::axis": torch.tensor(value.q_per_channel_axis()),
        }
    return out | {f"{key}::scale": torch.tensor(value.q_scale()), f"{key}::zero": torch.tensor(value.q_zero_point())}


def _under(fields: dict, prefix: str) -> dict:
    """The fields of one member of a packed tuple, with its prefix taken off."""
    return {field.removeprefix(prefix).removeprefix("::"): value for field, value in fields.items()
            if field.startswith(prefix)}  # fmt: skip


def _tensor(fields: dict) -> torch.Tensor:
    if "int" not in fields:
        return fields[""]
    if "scales" in fields:
        return torch._make_per_channel_quantized_tensor(
            fields["int"], fields["scales"].double(), fields["zeros"], int(fields["axis"])
        )
    return torch._make_per_tensor_quantized_tensor(fields["int"], float(fields["scale"]), int(fields["zero"]))


def load_into(skeleton: torch.nn.Module, flat: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Fill a quantized skeleton (the same model, quantized the same way) with saved tensors.
    The skeleton's own state-dict metadata goes along: quantized modules read their format
    version from it."""
    from collections import OrderedDict

    state = OrderedDict(from_tensors(flat))
    state._metadata = skeleton.state_dict()._metadata  # type: ignore[attr-defined]
    skeleton.load_state_dict(state)
    return skeleton
