"""A local Hugging Face causal LM (e.g. GPT-2) as the judge of samples: gen-PPL and MAUVE features.

Needs `transformers` (`pip install 'dlm[hf]'`); it is imported only when such a judge is used.
Nothing is downloaded: the folder must hold config.json, the weights and the tokenizer files, as
written by `save_pretrained`.

From dlm ids to judge ids. Each sample is cut at dlm's [EOS] (the document separator); every
piece is decoded to text with the dlm tokenizer (other reserved ids — [MASK], [PAD], [BOS] —
are dropped) and re-tokenized with the judge's tokenizer without its own special tokens; the
pieces are joined by the judge's EOS (or by a newline when it has none). Each sample is then
scored from the judge's BOS, or its EOS when it has no BOS (the GPT-2 convention), and cut to
the judge's context. The gen-PPL is exp(mean NLL per *judge token*): it depends on the judge's
tokenizer and is not a per-dlm-token figure.

Batches are right-padded; the attention mask keeps padding out of every real position (the
model is causal, so real positions never see the padding after them anyway) and padded
positions are left out of the NLL sum and count.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.tokenizers import Tokenizer


def import_transformers():
    """The transformers module, or a one-line DlmError naming the extra to install."""
    try:
        import transformers
    except ImportError:
        raise DlmError("a Hugging Face judge needs transformers, which is not installed; "
                       "pip install 'dlm[hf]'") from None
    return transformers


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class HFJudge:
    """A causal LM from a local Hugging Face folder, fp32, in eval mode on `device`."""

    kind = "hf"
    token_unit = "judge token"

    def __init__(self, path: str | Path, dlm_tokenizer: Tokenizer, device: torch.device | str = "cpu") -> None:
        transformers = import_transformers()
        self.path, self.dlm_tokenizer, self.device = str(path), dlm_tokenizer, torch.device(device)
        no_tokenizer = (f"the Hugging Face judge {self.path} has no usable tokenizer; "
                        "save the model's tokenizer there with tokenizer.save_pretrained")
        # Without tokenizer files, AutoTokenizer (transformers 5) can return an empty tokenizer silently.
        if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
            raise DlmError(no_tokenizer)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DlmError(f"cannot load the tokenizer of the Hugging Face judge {self.path} ({_first_line(e)}); "
                           "save it there with tokenizer.save_pretrained") from None
        if len(self.tokenizer) < 2:
            raise DlmError(no_tokenizer)
        hf_logging = transformers.utils.logging
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in dlm's output
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DlmError(f"cannot load the Hugging Face causal LM in {self.path} ({_first_line(e)}); "
                           "the folder needs config.json and weights written by save_pretrained") from None
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.model = model.to(device=self.device, dtype=torch.float32).eval()
        n_embeddings = self.model.get_input_embeddings().num_embeddings
        if len(self.tokenizer) > n_embeddings:
            raise DlmError(f"the tokenizer in {self.path} has {len(self.tokenizer)} tokens but the model only "
                           f"{n_embeddings} embeddings; save the model's own tokenizer there")
        start = self.tokenizer.bos_token_id
        self.start_id = start if start is not None else self.tokenizer.eos_token_id
        if self.start_id is None:
            raise DlmError(f"the tokenizer of the judge {self.path} has neither a BOS nor an EOS token to score "
                           "from; set bos_token or eos_token and save it again")
        config = self.model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_tokens = int(positions) - 1 if positions else None
        """Longest sample scored, in judge tokens (the start token takes one position)."""
        self.truncated = 0
        """Samples cut to the judge's context by the last call to `encode`."""

    def encode(self, samples: torch.Tensor) -> list[list[int]]:
        """Judge token ids (without the start token) for each row of dlm ids (N, L)."""
        tok = self.dlm_tokenizer
        eos, dropped = tok.eos_id, set(tok.special_ids) - {tok.eos_id}
        judge_eos = self.tokenizer.eos_token_id
        rows, self.truncated = [], 0
        for sample in samples.tolist():
            pieces: list[list[int]] = [[]]
            for i in sample:
                if i == eos:
                    pieces.append([])
                elif i not in dropped:
                    pieces[-1].append(i)
            texts = [tok.decode(p) for p in pieces]
            if judge_eos is None:
                texts = ["\n".join(texts)]
            ids: list[int] = []
            for k, text in enumerate(texts):
                if k:
                    ids.append(judge_eos)
                ids.extend(self.tokenizer.encode(text, add_special_tokens=False) if text else [])
            if self.max_tokens is not None and len(ids) > self.max_tokens:
                ids, self.truncated = ids[:self.max_tokens], self.truncated + 1
            rows.append(ids)
        return rows

    def _batches(self, rows: list[list[int]], batch_size: int):
        """(input_ids, attention_mask) pairs (B, T): the start token, the sample, right padding."""
        for first in range(0, len(rows), batch_size):
            chunk = [[self.start_id, *r] for r in rows[first:first + batch_size]]
            width = max(len(r) for r in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)  # padding id: any valid id, masked out
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, r in enumerate(chunk):
                ids[b, :len(r)] = torch.tensor(r)
                mask[b, :len(r)] = 1
            yield ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def score(self, samples: torch.Tensor, batch_size: int = 32) -> tuple[float, int]:
        """Summed NLL (nats, float64) of every judge token of the samples, and how many were scored."""
        total, count = 0.0, 0
        for ids, mask in self._batches(self.encode(samples), batch_size):
            logits = self.model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
            keep = mask[:, 1:].bool()
            total += float(nll[keep].double().sum())
            count += int(keep.sum())
        return total, count

    @torch.no_grad()
    def features(self, samples: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(N, D) last-layer hidden state at each sample's last real token (the start token for an
        empty sample), float32 on the CPU."""
        out = []
        for ids, mask in self._batches(self.encode(samples), batch_size):
            hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            last = mask.sum(1) - 1  # (B,) index of the last real position
            out.append(hidden[torch.arange(len(ids), device=hidden.device), last].float().cpu())
        return torch.cat(out)

    def describe(self) -> dict:
        return {"judge": self.path, "judge_kind": self.kind,
                "judge_model_type": getattr(self.model.config, "model_type", None),
                "judge_truncated_samples": self.truncated}
