"""bitsandbytes settings for QLoRA: 4-bit NF4 (+ double quant) or 8-bit base weights."""

from __future__ import annotations

import torch
from transformers import BitsAndBytesConfig

from tunesmith.config.schema import QuantizationConfig
from tunesmith.errors import UserError


def bnb_config(quant: QuantizationConfig, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The transformers quantization config for `quant`; `compute_dtype` fills in "auto"."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise UserError(
            "quantization (QLoRA) needs bitsandbytes: run `pip install 'tunesmith[qlora]'`, "
            "or train as LoRA with `--cfg-options quantization=null`"
        ) from err
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if quant.compute_dtype != "auto":
        compute_dtype = DTYPES[quant.compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=torch.uint8,
    )


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
