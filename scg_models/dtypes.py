"""The one table of dtype names used by the command lines and the trainers: fp32, fp16, bf16."""
from __future__ import annotations

import torch

#: name -> torch dtype (the ``--dtype`` / ``--save-dtype`` choices)
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
