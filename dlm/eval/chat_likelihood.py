"""How well a model predicts held-out chat replies, per reply token.

Each example is laid out as in fine-tuning (prompt, reply, end-of-turn token, filler; dlm.data.
chat_loader) with the prompt given. Diffusion models: the NELBO terms of the reply and its
end-of-turn token — masked at noise level t, weighted 1/t (linear schedule), the filler masked
alike but not scored — averaged over `draws` stratified noise levels per example: an upper bound
on the NLL of the reply given the prompt, up to the filler's share. AR twins: the exact NLL of the
same tokens after the same prompt. Both in nats per reply token, with standard errors over examples.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dlm.data.chat import ChatExample, ChatTemplate
from dlm.data.chat_loader import chat_canvas
from dlm.diffusion.schedules import Linear
from dlm.inference import Pipeline
from dlm.objectives.autoregressive import ar_loss
from dlm.objectives.mdlm import mdlm_loss
from dlm.runtime import autocast


@torch.no_grad()
def reply_nll(pipe: Pipeline, examples: list[ChatExample], fill: str = "pad", draws: int = 8, batch_size: int = 64,
              seed: int = 0) -> dict:
    model, tok = pipe.model.eval(), pipe.tokenizer
    end_id = ChatTemplate(tok).end_id
    block = model.cfg.block_size
    canvases = [chat_canvas(e, block, tok.special, end_id, fill, pad_weight=0.0) for e in examples]
    ids = torch.tensor([c[0] for c in canvases])
    prompt = torch.tensor([c[1] for c in canvases])
    weight = torch.tensor([[1.0 if w == 1.0 and not p else 0.0 for w, p in zip(c[2], c[1], strict=True)]
                           for c in canvases])
    if fill == "eos":  # the end-of-turn filler is not the reply: score the reply and its first end only
        for row, example in enumerate(examples):
            weight[row, len(example.ids):] = 0.0
    tokens = weight.sum(1).numpy()  # reply tokens of each example (end-of-turn included)
    per_example = np.zeros(len(examples))
    generator = torch.Generator().manual_seed(seed)
    repeat = 1 if pipe.is_autoregressive else draws
    rows = torch.arange(len(examples)).repeat_interleave(repeat)
    offsets = torch.arange(repeat).repeat(len(examples)).float()
    for first in range(0, len(rows), batch_size):
        index = rows[first:first + batch_size]
        x, keep, w = ids[index].to(pipe.device), prompt[index].to(pipe.device), weight[index].to(pipe.device)
        with autocast(pipe.device, pipe.dtype):
            if pipe.is_autoregressive:
                out = ar_loss(model, x, tok.bos_id, token_weight=w)
            else:  # stratified noise levels within each example's draws
                t = ((offsets[first:first + batch_size] + torch.rand(len(index), generator=generator)) / repeat)
                out = mdlm_loss(model, x, Linear(), tok.mask_id, generator=generator, t=t.to(pipe.device),
                                prompt_mask=keep, token_weight=w)
        summed = (out.per_sequence.double().cpu() * x.shape[1]).numpy() / repeat  # nats of each row's reply
        np.add.at(per_example, index.numpy(), summed)
    per_token = per_example / np.maximum(tokens, 1)
    nats = float(per_example.sum() / tokens.sum())
    return {"kind": "exact_nll" if pipe.is_autoregressive else "nelbo_bound", "nats_per_reply_token": nats,
            "standard_error": float(np.std(per_token, ddof=1) / math.sqrt(len(examples))) if len(examples) > 1
            else None, "examples": len(examples), "reply_tokens": int(tokens.sum()),
            "draws_per_example": repeat}
