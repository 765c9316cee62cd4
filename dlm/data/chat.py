"""Conversations: the Hugging Face `messages` format, a chat template over reserved tokens, and a
dialog corpus made from a play script.

A conversation is `{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}`,
one per line of a JSONL file or one per row of a `datasets` dataset. The template writes each turn
as its role token, the text and an end-of-turn token:

    <|system|>ROMEO speaks; JULIET answers.<|end|><|user|>…<|end|><|assistant|>…<|end|>

The four tokens are reserved ids added after a base tokenizer's (existing ids keep their meaning).
A pretrained tokenizer with ChatML's markers (SmolLM2, Qwen2: `tokenizer.chat_markup == "chatml"`)
keeps the turns its model was tuned on instead, `<|im_start|>ROLE\n…<|im_end|>\n`, and
`<|im_end|>` ends a reply.
Every assistant turn makes one training example: everything before its text is the prompt (never
masked, never scored), its text and end-of-turn token the reply; histories too long for the
context are cut from the left, whole turns first.

A play script (`SPEAKER:` on a line, then the speech, blank lines between speeches, like Tiny
Shakespeare) becomes cue → reply conversations: each speech answered by the next one when the
speaker changes, the speaker names in a system line. It splits by the same rule as pre-training:
conversations from the first 90 % of the text train, the rest are held out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dlm.errors import DlmError
from dlm.tokenizers import Tokenizer

ROLES = ("system", "user", "assistant")
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_OF_TURN = "<|end|>"
CHAT_TOKENS = (*ROLE_TOKENS.values(), END_OF_TURN)
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
SPEAKER = re.compile(r"^([A-Z][A-Za-z' .-]{0,40}):$")


@dataclass
class ChatExample:
    ids: list[int]
    """The prompt (history and the assistant role token), the reply, and its end-of-turn token."""
    prompt_len: int
    """Tokens before the reply: given, never masked, never scored."""

    @property
    def reply_len(self) -> int:
        return len(self.ids) - self.prompt_len


class ChatTemplate:
    """Turns messages into ids with the tokenizer's chat tokens (which `with_chat_tokens` adds), or
    with its model's own ChatML markers."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.chatml = tokenizer.chat_markup == "chatml"
        if self.chatml:
            start = tokenizer.token_to_id(CHATML_START)
            self.role_prefix = {role: [start, *tokenizer.encode(f"{role}\n")] for role in ROLES}
            self.end_id = tokenizer.token_to_id(CHATML_END)
            self.turn_suffix = [self.end_id, *tokenizer.encode("\n")]
            return
        missing = [t for t in CHAT_TOKENS if t not in tokenizer.added_tokens]
        if missing:
            raise DlmError("this model has no chat tokens (it was not fine-tuned for chat); fine-tune it first: "
                           "dlm finetune --base RUN --chat --data CONVERSATIONS")
        self.role_prefix = {role: [tokenizer.token_to_id(token)] for role, token in ROLE_TOKENS.items()}
        self.end_id = tokenizer.token_to_id(END_OF_TURN)
        self.turn_suffix = [self.end_id]

    def turn(self, role: str, content: str) -> list[int]:
        return [*self.role_prefix[role], *self.tokenizer.encode(content), *self.turn_suffix]

    def prompt(self, messages: list[dict], max_len: int | None = None) -> list[int]:
        """The ids that ask for the next assistant turn: every turn, then the assistant role marker.
        With `max_len`, the oldest turns are dropped (then the oldest tokens) to fit."""
        turns = [self.turn(m["role"], m["content"]) for m in messages]
        return fit_left(turns, list(self.role_prefix["assistant"]), max_len)

    def examples(self, messages: list[dict], max_len: int) -> list[ChatExample]:
        """One example per assistant turn whose reply fits in `max_len` with some history."""
        out = []
        for k, message in enumerate(messages):
            if message["role"] != "assistant" or k == 0:
                continue
            reply = [*self.tokenizer.encode(message["content"]), self.end_id]
            if len(reply) > max_len // 2:  # too long a reply for this context: leave it out
                continue
            prompt = self.prompt(messages[:k], max_len - len(reply))
            out.append(ChatExample(prompt + reply, len(prompt)))
        return out

    def render(self, messages: list[dict]) -> str:
        if self.chatml:
            return "".join(f"{CHATML_START}{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)
        return "".join(f"{ROLE_TOKENS[m['role']]}{m['content']}{END_OF_TURN}" for m in messages)


def fit_left(turns: list[list[int]], tail: list[int], max_len: int | None) -> list[int]:
    """turns + tail, dropping whole turns from the left, then tokens, to fit max_len."""
    if max_len is None:
        return [i for t in turns for i in t] + tail
    kept: list[list[int]] = []
    room = max_len - len(tail)
    for turn in reversed(turns):
        if len(turn) > room:
            if not kept:  # the newest turn alone is too long: keep its end
                kept.insert(0, turn[len(turn) - room:] if room > 0 else [])
            break
        kept.insert(0, turn)
        room -= len(turn)
    return [i for t in kept for i in t] + tail


def with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """The tokenizer with the chat tokens appended (a no-op when it has them, or has ChatML's own)."""
    return tokenizer if tokenizer.chat_markup == "chatml" else tokenizer.with_tokens(list(CHAT_TOKENS))


def check_conversation(obj, where: str) -> list[dict]:
    """The messages of one conversation, or a one-line error naming `where` and what is wrong."""
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DlmError(f"{where}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DlmError(f"{where}: each message needs a role ({', '.join(ROLES)}) and a string content; "
                           f"got {m!r:.80}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_jsonl(path: Path) -> list[list[dict]]:
    conversations = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DlmError(f"{path}:{number} is not JSON ({e.msg}); write one conversation per line") from None
            conversations.append(check_conversation(obj, f"{path}:{number}"))
    return conversations


def read_hf(spec: str) -> list[list[dict]]:
    try:
        import datasets
    except ImportError:
        raise DlmError(f"--data {spec} needs the optional `datasets` package: pip install 'dlm[hf]'") from None
    name, _, config = spec.removeprefix("hf:").partition(":")
    try:
        rows = datasets.load_dataset(name, config or None, split="train")
    except Exception as e:  # datasets raises many types (offline, unknown name, …)
        raise DlmError(f"could not open Hugging Face dataset {name!r} ({type(e).__name__}: {e}); "
                       "pass a local JSONL file instead") from None
    return [check_conversation(row, f"{name} row {i}") for i, row in enumerate(rows)]


def play_speeches(text: str) -> Iterator[tuple[int, str, str]]:
    """(character offset, speaker, speech) for each `SPEAKER:` block of a play script."""
    offset = 0
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        match = SPEAKER.match(lines[0].strip()) if lines else None
        if match and len(lines) > 1:
            yield offset, match.group(1), "\n".join(line.rstrip() for line in lines[1:]).strip()
        offset += len(block) + 2


def play_to_conversations(text: str) -> list[tuple[int, list[dict]]]:
    """(offset of the reply, conversation) for each speech that answers another speaker's."""
    speeches = list(play_speeches(text))
    out = []
    for (_, cue_speaker, cue), (offset, speaker, reply) in zip(speeches, speeches[1:], strict=False):
        if speaker != cue_speaker and cue and reply:
            out.append((offset, [{"role": "system", "content": f"{cue_speaker} speaks; {speaker} answers."},
                                 {"role": "user", "content": cue}, {"role": "assistant", "content": reply}]))
    return out


def looks_like_a_play(text: str) -> bool:
    speeches = sum(1 for _ in play_speeches(text[:200_000]))
    return speeches >= 10


def load_conversations(source: str, val_fraction: float = 0.1) -> tuple[list, list, str]:
    """(train conversations, held-out conversations, what the source was) from a JSONL file, a
    play script (a .txt file, or 'tinyshakespeare') or hf:NAME."""
    if source.startswith("hf:"):
        conversations = read_hf(source)
        kind = f"the Hugging Face dataset {source[3:]}"
    else:
        from dlm.data.corpus import resolve_files

        files = resolve_files(source)
        if len(files) == 1 and files[0].suffix.lower() in (".jsonl", ".json"):
            conversations = read_jsonl(files[0])
            kind = f"{len(conversations)} conversations from {files[0]}"
        else:
            text = "\n\n".join(p.read_text(encoding="utf-8") for p in files)
            if not looks_like_a_play(text):
                raise DlmError(f"{source} is neither JSONL conversations nor a play script (SPEAKER: lines then "
                               "speeches); see dlm finetune --help for the formats")
            pairs = play_to_conversations(text)
            cut = int(len(text) * (1 - val_fraction))  # the pre-training split: the last 10 % is held out
            train = [c for offset, c in pairs if offset < cut]
            held = [c for offset, c in pairs if offset >= cut]
            return train, held, f"a play script ({len(pairs)} cue → reply conversations made from its speeches)"
    if len(conversations) < 2:
        raise DlmError(f"{source} holds {len(conversations)} conversation(s); give at least 2 (one is held out)")
    n_val = max(1, int(len(conversations) * val_fraction))
    return conversations[:-n_val], conversations[-n_val:], kind
