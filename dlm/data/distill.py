"""Conversations written by a pretrained chat model itself: `dlm adapt MODEL --chat --data distill`.

Adapting an instruct LM into a diffusion chat model needs conversations in its own voice. Without a
chat data set at hand, the model writes them: dlm asks it `n` questions — everyday topics crossed
with question forms, below — and keeps its own replies (sampled with a fixed seed, up to
`max_new_tokens` tokens, stopped at its end-of-turn token). Distilling the teacher's replies is an
accepted recipe (the student learns to answer as the AR model does, in parallel). The result is an
ordinary JSONL of `messages`, cached under $DLM_CACHE/conversations, so a second run reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

from dlm.errors import DlmError

TOPICS = (
    "the weather", "a cup of tea", "sleep", "rain", "the sea", "a small garden", "bread", "bicycles", "the moon",
    "winter", "a library", "trees", "coffee", "music", "a long walk", "cats", "dogs", "the kitchen", "breakfast",
    "rivers", "mountains", "a good book", "friendship", "the city at night", "trains", "snow", "the market",
    "birds", "a picnic", "cooking rice", "learning a language", "a first job", "saving money", "exercise",
    "a birthday", "the stars", "old photographs", "writing letters", "a rainy afternoon", "apples",
    "the beach", "a quiet morning", "painting", "candles", "the wind", "a museum", "honey", "maps",
    "a village", "the forest",
)
FORMS = (
    "Tell me something about {}.", "Write two sentences about {}.", "What do you like about {}?",
    "Describe {} to a child.", "Give me one tip about {}.", "Why do people enjoy {}?",
)


def distill_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` questions, the same for a seed: every topic in every form, shuffled."""
    prompts = [form.format(topic) for topic in TOPICS for form in FORMS]
    random.Random(seed).shuffle(prompts)
    if n > len(prompts):
        raise DlmError(f"distill: {n} conversations asked for, but dlm has {len(prompts)} questions; ask for fewer")
    return prompts[:n]


def distilled_conversations(model_folder: str | Path, n: int = 300, max_new_tokens: int = 64, seed: int = 0,
                            batch_size: int = 16, progress: bool = True) -> Path:
    """The JSONL file of `n` conversations written by the chat model in `model_folder` (cached)."""
    from dlm.data.corpus import cache_dir

    folder = Path(model_folder)
    key = hashlib.sha256(f"{folder.resolve()}|{n}|{max_new_tokens}|{seed}".encode()).hexdigest()[:12]
    target = cache_dir() / "conversations" / f"distill-{folder.name}-{n}-{key}.jsonl"
    if target.is_file():
        return target
    rows = write_replies(folder, distill_prompts(n, seed), max_new_tokens, seed, batch_size, progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    partial.write_text("".join(json.dumps({"messages": r}, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(partial, target)
    return target


def write_replies(folder: Path, prompts: list[str], max_new_tokens: int, seed: int, batch_size: int,
                  progress: bool) -> list[list[dict]]:
    import torch

    from dlm.progress import Progress

    try:
        import transformers
    except ImportError:
        raise DlmError("--data distill needs transformers, which is not installed; pip install 'dlm[hf]'") from None
    transformers.utils.logging.disable_progress_bar()  # dlm's own bar counts the replies
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if not tokenizer.chat_template:
        raise DlmError(f"distill: {folder} has no chat template, so it is not a chat model; pass --data "
                       "CONVERSATIONS (a JSONL file of messages) instead")
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    bar = Progress(total=len(prompts), desc="the teacher writes replies", unit="reply", enabled=progress)
    rows = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7, top_p=0.9,
                                 repetition_penalty=1.1, pad_token_id=pad,
                                 eos_token_id=[t for t in (end, tokenizer.eos_token_id) if t is not None])
        for prompt, ids in zip(batch, out[:, enc["input_ids"].shape[1]:].tolist(), strict=True):
            reply = tokenizer.decode(ids, skip_special_tokens=True).strip()
            if not any(t in ids for t in (end, tokenizer.eos_token_id) if t is not None):
                # cut off at max_new_tokens: keep its whole sentences, so no reply teaches stopping mid-word
                last = max(reply.rfind(c) for c in ".!?")
                reply = reply[:last + 1] if last > 0 else ""
            if reply:
                rows.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}])
        bar.update(len(batch))
    bar.close()
    if not rows:
        raise DlmError(f"distill: {folder} wrote no reply to any question; is it a chat model?")
    return rows
