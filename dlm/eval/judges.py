"""Judges of sample quality: a causal model that scores samples (generative perplexity) and
embeds them (MAUVE features).

Two kinds implement the same small interface and both take dlm token ids (N, L):

* `DlmJudge` — an AR run of dlm trained with the same tokenizer. It scores the dlm tokens
  themselves, so its gen-PPL is per dlm token (per character for char-level runs).
* `HFJudge` (dlm/eval/hf_judge.py) — any local Hugging Face causal LM folder. The samples are
  decoded to text and re-tokenized with the judge's tokenizer, so its gen-PPL is per *judge*
  token: comparable between runs judged by the same model, not with a dlm judge's figure.

`load_judge` tells them apart by the folder's contents.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

import torch

from dlm.errors import DlmError
from dlm.eval.packaged_judges import is_packaged, resolve_judge
from dlm.inference import Pipeline, load
from dlm.objectives.autoregressive import ar_loss


class Judge(Protocol):
    path: str
    kind: str
    """'dlm' or 'hf'."""
    token_unit: str
    """What one scored token is: 'dlm token' or 'judge token'."""

    def score(self, samples: torch.Tensor, batch_size: int = 32) -> tuple[float, int]:
        """Summed NLL (nats) of the samples (N, L) of dlm ids under the judge, and the tokens scored."""
        ...

    def features(self, samples: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N, D) float32 CPU features for MAUVE: the last layer's hidden state at the last token."""
        ...

    def describe(self) -> dict:
        """Fields for the eval JSON that say which judge this is."""
        ...


class DlmJudge:
    """An AR twin of dlm (same tokenizer as the sampled run); scores each sample from [BOS]."""

    kind = "dlm"
    token_unit = "dlm token"

    def __init__(self, path: str, pipe: Pipeline) -> None:
        self.path = path
        self.pipe = load(path, device=str(pipe.device.type))
        if not self.pipe.is_autoregressive:
            raise DlmError(f"--judge {path} is a diffusion run; the judge must be an AR run (--objective ar) "
                           "or a Hugging Face causal LM folder")
        if self.pipe.tokenizer.to_json() != pipe.tokenizer.to_json():
            raise DlmError(f"--judge {path} uses another tokenizer; train the judge on the same data")

    def score(self, samples: torch.Tensor, batch_size: int = 32) -> tuple[float, int]:
        return causal_nll_sum(self.pipe.model, samples.to(self.pipe.device), self.pipe.tokenizer.bos_id, batch_size)

    def features(self, samples: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        return judge_features(self.pipe.model, samples.to(self.pipe.device), self.pipe.tokenizer.bos_id,
                              batch_size)

    def describe(self) -> dict:
        return {"judge": self.path, "judge_kind": self.kind}


@torch.no_grad()
def causal_nll_sum(judge: torch.nn.Module, samples: torch.Tensor, bos_id: int,
                   batch_size: int = 32) -> tuple[float, int]:
    """Summed NLL (nats) of `samples` (N, L) under a causal `judge`, each scored from [BOS], and the
    number of tokens scored."""
    judge.eval()
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        out = ar_loss(judge, samples[i:i + batch_size], bos_id)
        total += float(out.nll_sum)
        count += out.n_tokens
    return total, count


@torch.no_grad()
def judge_features(judge: torch.nn.Module, samples: torch.Tensor, bos_id: int, batch_size: int = 32) -> torch.Tensor:
    """(N, D) features for MAUVE: the causal judge's final hidden state at the last position,
    which has read the whole sequence (as MAUVE does with GPT-2)."""
    judge.eval()
    out = []
    for i in range(0, len(samples), batch_size):
        x = samples[i:i + batch_size]
        inputs = torch.cat((torch.full_like(x[:, :1], bos_id), x), dim=1)
        # A sample as long as the context leaves no room for [BOS]: drop it (the last position still
        # reads every token of the sample).
        inputs = inputs[:, -judge.cfg.block_size:] if hasattr(judge, "cfg") else inputs
        out.append(judge(inputs, return_hidden=True)[:, -1].float().cpu())
    return torch.cat(out)


def judge_kind(path: str | Path) -> str:
    """'dlm' for a dlm run or checkpoint folder, 'hf' for a Hugging Face model folder (by contents)
    or a packaged judge's name (dlm/eval/packaged_judges.py)."""
    if is_packaged(path):
        return "hf"
    path = Path(path)
    if not path.exists():
        raise DlmError(f"--judge {path} not found; pass an AR run folder of dlm or a Hugging Face causal LM "
                       "folder (config.json + weights + tokenizer, as written by save_pretrained)")
    if (path / "checkpoints").is_dir() or ((path / "model.safetensors").is_file()
                                           and (path / "manifest.json").is_file()):
        return "dlm"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        config = None
    if isinstance(config, dict) and "model_type" in config:
        return "hf"
    raise DlmError(f"--judge {path} is neither a dlm run (no checkpoints/) nor a Hugging Face model folder "
                   "(no config.json with model_type); pass an AR run or a save_pretrained folder")


def load_judge(path: str, pipe: Pipeline) -> Judge:
    """The judge at `path` for samples of `pipe` (a dlm Pipeline), on `pipe`'s device."""
    if judge_kind(path) == "dlm":
        return DlmJudge(path, pipe)
    from dlm.eval.hf_judge import HFJudge

    return HFJudge(resolve_judge(path), pipe.tokenizer, pipe.device)


def judge_perplexity(judge: Judge, samples: torch.Tensor, batch_size: int = 32) -> dict:
    """exp(mean NLL per judge-scored token) of the samples, with its unit and token count stated."""
    total, count = judge.score(samples, batch_size)
    if count == 0:
        raise DlmError(f"the samples hold no text the judge {judge.path} can score (all special tokens); "
                       "sample longer sequences")
    nll = total / count
    result = {"gen_ppl": math.exp(nll), "judge_nll_per_token": nll, "gen_ppl_unit": f"per {judge.token_unit}",
              "judge_tokens": count, **judge.describe()}
    if judge.kind == "dlm":
        result["tokens"] = count  # the field's name before HF judges existed
    return result
