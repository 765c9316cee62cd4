"""What a run trains on: windows of a token stream (pre-training, continued pre-training) or chat
examples (finetune.chat), with the tokenizer that encodes them, and the loaders over each split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dlm.config import RunConfig
from dlm.data.chat import ChatExample, ChatTemplate, load_conversations, with_chat_tokens
from dlm.data.chat_loader import ChatBatches
from dlm.data.loader import RandomWindows
from dlm.data.shards import PreparedCorpus, prepare_corpus
from dlm.errors import DlmError
from dlm.run_folder import locate_checkpoint
from dlm.tokenizers import Tokenizer


@dataclass
class TrainingData:
    tokenizer: Tokenizer
    corpus: PreparedCorpus | None = None
    """Token-stream runs: the prepared corpus (train.bin, val.bin)."""
    chat_train: list[ChatExample] | None = None
    chat_val: list[ChatExample] | None = None
    token_entropy: np.ndarray | None = None
    """With diffusion.masking=entropy: each training token's entropy under the AR twin."""
    mean_entropy: float = 1.0

    @property
    def is_chat(self) -> bool:
        return self.chat_train is not None

    def loader(self, cfg: RunConfig, split: str, seed: int, device: torch.device) -> RandomWindows | ChatBatches:
        """Batches of a split: random windows of the stream, or random chat canvases."""
        if self.is_chat:
            f = cfg.finetune
            template = ChatTemplate(self.tokenizer)
            examples = self.chat_train if split == "train" else self.chat_val
            return ChatBatches(examples, cfg.model.block_size, seed, self.tokenizer.special, template.end_id,
                               f.fill, f.pad_weight, f.fill_block, device)
        aux = self.token_entropy if split == "train" else None
        return RandomWindows(self.corpus.split(split), cfg.model.block_size, seed=seed, device=device, aux=aux)

    def describe(self) -> str:
        if self.is_chat:
            return f"train {len(self.chat_train):,} / held out {len(self.chat_val):,} chat examples"
        return f"train {len(self.corpus.split('train')):,} / val {len(self.corpus.split('val')):,} tokens"


def base_tokenizer(cfg: RunConfig) -> Tokenizer | None:
    """A fine-tune's base tokenizer, or a `transformers` backbone's own; None: build one from the corpus."""
    if cfg.finetune.base:  # a run folder, RUN/best or one checkpoint folder
        run, _ = locate_checkpoint(cfg.finetune.base)
        return run.read_tokenizer()
    if cfg.model.backbone:
        from dlm.model.hf_backbone import backbone_path, is_causal_lm, read_backbone_config
        from dlm.tokenizers.hf import HFModelTokenizer

        if is_causal_lm(cfg.model.backbone_config or read_backbone_config(cfg.model)):
            return HFModelTokenizer.from_causal_folder(backbone_path(cfg.model))
        return HFModelTokenizer.from_folder(backbone_path(cfg.model))
    return None


def prepare_training_data(cfg: RunConfig, saved_tokenizer: Tokenizer | None, progress: bool = False,
                          echo=print) -> TrainingData:
    """Tokenize what `cfg` names. A resumed run keeps its own tokenizer (`saved_tokenizer`); a
    fine-tune starts from its base's, grown by the chat tokens for a chat run."""
    tokenizer = saved_tokenizer or base_tokenizer(cfg)
    if not cfg.finetune.chat:
        return TrainingData((corpus := prepare_corpus(cfg.data, tokenizer=tokenizer, progress=progress)).tokenizer,
                            corpus)
    tokenizer = with_chat_tokens(tokenizer)
    train, held, kind = load_conversations(cfg.data.source, cfg.data.val_fraction)
    template = ChatTemplate(tokenizer)
    train_examples = [e for c in train for e in template.examples(c, cfg.model.block_size)]
    val_examples = [e for c in held for e in template.examples(c, cfg.model.block_size)]
    if not train_examples or not val_examples:
        raise DlmError(f"{cfg.data.source}: no conversation has an assistant reply that fits the context of "
                       f"{cfg.model.block_size} tokens on both sides of the split; use shorter or more conversations")
    echo(f"dlm: chat data from {kind}: {len(train_examples):,} training and {len(val_examples):,} held-out "
         "replies (one per assistant turn that fits the context)")
    return TrainingData(tokenizer, None, train_examples, val_examples)
