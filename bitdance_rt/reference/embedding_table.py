"""``embedding_table(num, dim)``: an ``nn.Embedding`` that, when built on the meta device (as the loader builds every
module before assigning the file's tensors), skips drawing its random initial weights: a random draw on a meta
tensor makes torch import its compiler stack, seconds per process, for weights that are replaced at once. Built
anywhere else it is a plain ``nn.Embedding`` with its usual initialisation."""

from __future__ import annotations

import torch
from torch import nn


def embedding_table(num: int, dim: int) -> nn.Embedding:
    if torch.get_default_device().type == "meta":
        return nn.Embedding(num, dim, _weight=torch.empty(num, dim))
    return nn.Embedding(num, dim)
