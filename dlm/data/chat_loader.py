"""Training batches of chat examples: each a canvas of the context length — prompt, reply,
end-of-turn token, then filler — with what the objective needs to score only the reply.

What follows the end-of-turn token (`fill`) decides whether the length of an answer is learnt
from the content or from the canvas (finetune.fill):

* pad       — [PAD] to the end, scored with `pad_weight` (0: masked but unscored);
* eos       — end-of-turn tokens to the end, fully scored (LLaDA's recipe; prone to "EOS flooding");
* block-eos — end-of-turn tokens to the end of the block holding the first one (blocks of
              `fill_block` counted from the reply's start), unscored [PAD] after (BD3-LM-style).

Like RandomWindows, examples are drawn by a generator whose state is saved, so resume is exact;
every rank draws the same indices and reads its own rows.
"""

from __future__ import annotations

import numpy as np
import torch

from dlm.data.chat import ChatExample
from dlm.errors import DlmError
from dlm.special_ids import SpecialIds

FILLS = ("pad", "eos", "block-eos")


def chat_canvas(example: ChatExample, length: int, special: SpecialIds, end_id: int, fill: str = "pad",
                pad_weight: float = 0.1, fill_block: int = 32) -> tuple[list[int], list[bool], list[float]]:
    """(ids, prompt mask, token weights) of one example on a canvas of `length`."""
    ids = list(example.ids[:length])
    n = len(ids)
    filler, weight_after = (end_id, 1.0) if fill == "eos" else (special.pad, pad_weight)
    weights = [0.0] * example.prompt_len + [1.0] * (n - example.prompt_len)
    if fill == "block-eos":
        block_end = example.prompt_len + -(-(n - example.prompt_len) // fill_block) * fill_block
        ids += [end_id] * (min(block_end, length) - n)
        weights += [1.0] * (min(block_end, length) - n)
        filler, weight_after = special.pad, 0.0
    weights += [weight_after] * (length - len(ids))
    ids += [filler] * (length - len(ids))
    prompt = [True] * example.prompt_len + [False] * (length - example.prompt_len)
    return ids, prompt, weights


class ChatBatches:
    def __init__(self, examples: list[ChatExample], block_size: int, seed: int, special: SpecialIds, end_id: int,
                 fill: str = "pad", pad_weight: float = 0.1, fill_block: int = 32,
                 device: torch.device | str = "cpu"):
        if not examples:
            raise DlmError("no chat example fits the model's context; use shorter conversations")
        self.block_size, self.device = block_size, torch.device(device)
        canvases = [chat_canvas(e, block_size, special, end_id, fill, pad_weight, fill_block) for e in examples]
        self.ids = torch.tensor([c[0] for c in canvases], dtype=torch.long)  # (N, T)
        self.prompt = torch.tensor([c[1] for c in canvases], dtype=torch.bool)
        self.weight = torch.tensor([c[2] for c in canvases], dtype=torch.float32)
        self.generator = torch.Generator().manual_seed(seed)
        self.last_extras: dict[str, torch.Tensor] = {}
        """The objective's keyword arguments for the last batch: prompt_mask and token_weight."""

    def __len__(self) -> int:
        return len(self.ids)

    def next_batch(self, batch_size: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        rows = torch.randint(0, len(self.ids), (batch_size,), generator=self.generator)
        per_rank = batch_size // world_size
        rows = rows[rank * per_rank:(rank + 1) * per_rank]
        self.last_extras = {"prompt_mask": self.prompt[rows].to(self.device),
                            "token_weight": self.weight[rows].to(self.device)}
        return self.ids[rows].to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def reply_lengths(examples: list[ChatExample]) -> np.ndarray:
    """Tokens of each reference reply, its end-of-turn token excluded."""
    return np.array([e.reply_len - 1 for e in examples])
