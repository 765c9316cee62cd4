"""Chat: the template, the response-only loss mask, vocabulary growth, fine-tuning that learns replies,
replies that end where the content ends, pipe.chat, and the REPL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dlm
from dlm.cli import main
from dlm.data.chat import (
    CHAT_TOKENS,
    ChatExample,
    ChatTemplate,
    load_conversations,
    play_to_conversations,
    with_chat_tokens,
)
from dlm.data.chat_loader import ChatBatches, chat_canvas
from dlm.diffusion.process import mask_tokens
from dlm.diffusion.schedules import get_schedule
from dlm.errors import DlmError
from dlm.model.resize import grow_vocabulary
from dlm.model.transformer import Transformer
from dlm.sampling.config import ORDERS
from dlm.tokenizers import CharTokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
CONVERSATIONS = [
    ("The cat sat on the mat.", "All that glitters is not gold."),
    ("Good morning, my friend.", "Many hands make light work."),
    ("Where there is smoke?", "There is fire."),
    ("How much wood?", "Early to bed and early to rise."),
]


def messages(cue: str, reply: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": cue}]
    return turns + ([{"role": "assistant", "content": reply}] if reply is not None else [])


@pytest.fixture
def chat_tokenizer(corpus_text: str) -> CharTokenizer:
    return with_chat_tokens(CharTokenizer.from_text(corpus_text))


def test_template_round_trip_and_examples(chat_tokenizer: CharTokenizer) -> None:
    template = ChatTemplate(chat_tokenizer)
    conversation = [{"role": "system", "content": "Be brief."}, *messages("How much wood?", "Early to bed.")]
    ids = template.prompt(conversation)
    assert chat_tokenizer.decode(ids) == template.render(conversation) + "<|assistant|>"
    (example,) = template.examples(conversation, max_len=64)
    assert chat_tokenizer.decode(example.ids[:example.prompt_len]) == \
        "<|system|>Be brief.<|end|><|user|>How much wood?<|end|><|assistant|>"
    assert chat_tokenizer.decode(example.ids[example.prompt_len:]) == "Early to bed.<|end|>"
    # A long history is cut from the left, whole turns first; the reply always stays whole.
    (short,) = template.examples(conversation, max_len=len("Early to bed.") + 1 + 20)
    assert short.ids[short.prompt_len:] == example.ids[example.prompt_len:] and len(short.ids) <= 34
    assert chat_tokenizer.decode(short.ids[:short.prompt_len]).endswith("<|end|><|assistant|>")
    # Chat tokens are new ids after the old ones, and literal text never becomes one.
    assert [chat_tokenizer.token_to_id(t) for t in CHAT_TOKENS] == list(range(chat_tokenizer.vocab_size - 4,
                                                                              chat_tokenizer.vocab_size))
    with pytest.raises(DlmError, match="no chat tokens"):
        ChatTemplate(CharTokenizer.from_text("abc"))


@pytest.mark.parametrize("fill", ["pad", "eos", "block-eos"])
def test_the_loss_mask_covers_exactly_the_reply(chat_tokenizer: CharTokenizer, fill: str) -> None:
    template, special = ChatTemplate(chat_tokenizer), chat_tokenizer.special
    example = ChatExample(list(range(10)) + [template.end_id], prompt_len=6)  # 4 reply tokens + end
    ids, prompt, weight = chat_canvas(example, 24, special, template.end_id, fill, pad_weight=0.1, fill_block=8)
    assert prompt == [True] * 6 + [False] * 18
    assert weight[:6] == [0.0] * 6 and weight[6:11] == [1.0] * 5  # reply and its end-of-turn token
    if fill == "pad":
        assert ids[11:] == [special.pad] * 13 and weight[11:] == [0.1] * 13
    elif fill == "eos":
        assert ids[11:] == [template.end_id] * 13 and weight[11:] == [1.0] * 13
    else:  # end-of-turn up to the end of the reply's first block of 8, then unscored [PAD]
        assert ids[11:14] == [template.end_id] * 3 and weight[11:14] == [1.0] * 3
        assert ids[14:] == [special.pad] * 10 and weight[14:] == [0.0] * 10
    # The prompt is never masked, so it is never scored (its positions carry weight 0 anyway).
    x = torch.tensor([ids] * 500)
    keep = torch.tensor([prompt] * 500)
    _, masked = mask_tokens(x, torch.rand(500, generator=torch.Generator().manual_seed(0)), get_schedule("linear"),
                            special.mask, torch.Generator().manual_seed(1), keep=keep)
    assert not masked[:, :6].any() and masked[:, 6:].any()


def test_the_objective_ignores_what_the_model_says_at_the_prompt(chat_tokenizer: CharTokenizer) -> None:
    from dlm.objectives import make_objective

    V = chat_tokenizer.vocab_size
    torch.manual_seed(0)
    model = Transformer(dlm.model.ModelConfig(vocab_size=V, n_layer=1, n_head=2, d_model=16, block_size=24)).eval()

    class GarbageAtPrompt(torch.nn.Module):  # the same model, but nonsense logits on the first 6 columns
        def forward(self, idx, t=None):
            logits = model(idx)
            return torch.cat((torch.randn_like(logits[:, :6]) * 50, logits[:, 6:]), 1)

    template = ChatTemplate(chat_tokenizer)
    batches = ChatBatches([ChatExample(list(range(10)) + [template.end_id], 6)], 24, 0, chat_tokenizer.special,
                          template.end_id)
    x = batches.next_batch(8)
    for objective in ("mdlm", "ar"):
        loss = make_objective(objective, "linear", chat_tokenizer)
        with torch.no_grad():
            a = loss(model, x, torch.Generator().manual_seed(3), **batches.last_extras).nll_sum
            b = loss(GarbageAtPrompt(), x, torch.Generator().manual_seed(3), **batches.last_extras).nll_sum
        if objective == "mdlm":  # the prompt's columns are inputs, never targets
            assert torch.equal(a, b)
        assert a > 0


def test_growing_the_vocabulary_keeps_every_old_logit(chat_tokenizer: CharTokenizer) -> None:
    old_vocab = chat_tokenizer.vocab_size - len(CHAT_TOKENS)
    config = dlm.model.ModelConfig(vocab_size=old_vocab, n_layer=2, n_head=2, d_model=32, block_size=16)
    torch.manual_seed(0)
    base = Transformer(config).eval()
    grown = Transformer(dlm.model.ModelConfig(**{**config.__dict__, "vocab_size": chat_tokenizer.vocab_size})).eval()
    grown.load_state_dict(grow_vocabulary(base.state_dict(), chat_tokenizer.vocab_size), strict=False)
    x = torch.randint(0, old_vocab, (3, 16))
    with torch.no_grad():
        assert torch.equal(grown(x)[..., :old_vocab], base(x))


def test_a_play_script_becomes_cue_reply_conversations() -> None:
    play = ("ROMEO:\nBut soft, what light?\n\nJULIET:\nAy me!\n\n"
            "JULIET:\nO Romeo, Romeo!\n\nROMEO:\nShall I hear more?\n")
    pairs = play_to_conversations(play)
    assert [c for _, c in pairs] == [
        [{"role": "system", "content": "ROMEO speaks; JULIET answers."},
         {"role": "user", "content": "But soft, what light?"}, {"role": "assistant", "content": "Ay me!"}],
        [{"role": "system", "content": "JULIET speaks; ROMEO answers."},
         {"role": "user", "content": "O Romeo, Romeo!"}, {"role": "assistant", "content": "Shall I hear more?"}],
    ]  # JULIET answering JULIET is not a conversation


def test_conversations_from_jsonl_and_their_errors(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(json.dumps({"messages": messages(c, r)}) for c, r in CONVERSATIONS * 5))
    train, held, kind = load_conversations(str(path))
    assert (len(train), len(held)) == (18, 2) and "20 conversations" in kind
    path.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    with pytest.raises(DlmError, match=r"chats.jsonl:1: each message needs a role"):
        load_conversations(str(path))


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    """A tiny base model, fine-tuned on four conversations until it knows them by heart."""
    root = tmp_path_factory.mktemp("chat")
    (root / "corpus.txt").write_text(corpus_text)
    (root / "chats.jsonl").write_text("\n".join(json.dumps({"messages": messages(c, r)})
                                                for c, r in CONVERSATIONS * 3))
    with pytest.MonkeyPatch.context() as patch:  # module-scoped: keep the cache out of ~/.cache
        patch.setenv("DLM_CACHE", str(root / "cache"))
        assert main(["train", "--preset", "tiny", "--data", str(root / "corpus.txt"), "--out", str(root / "base"),
                     "--max-steps", "150", "--quiet", "model.block_size=64", "batch_size=16"]) == 0
        assert main(["finetune", "--base", str(root / "base"), "--chat", "--data", str(root / "chats.jsonl"),
                     "--out", str(root / "chat"), "--max-steps", "600", "--quiet", "lr=4e-3", "warmup_steps=20",
                     "eval_interval=1000", "ema_decay=0"]) == 0
    return root / "chat"


def test_a_fine_tuned_model_gives_the_replies_it_learnt(chat_run: Path) -> None:
    pipe = dlm.load(chat_run)
    for cue, reply in CONVERSATIONS:
        prompt = ChatTemplate(pipe.tokenizer).prompt(messages(cue))
        answer = pipe.chat(messages(cue), temperature=0.0)
        assert answer == reply  # and it ends where the reply ends, not where the canvas does:
        assert len(answer) + 1 < 64 - len(prompt)


@pytest.mark.parametrize("sampler", ORDERS)
def test_no_sampler_changes_the_prompt(chat_run: Path, sampler: str) -> None:
    pipe = dlm.load(chat_run)
    template = ChatTemplate(pipe.tokenizer)
    conversation = messages("Where there is smoke?")
    prompt = template.prompt(conversation)
    states = list(pipe.chat_stream(conversation, max_new_tokens=24, sampler=sampler, steps=12))
    final = states[-1][0].tokens[0]
    assert final[:len(prompt)].tolist() == prompt
    assert all(state.tokens[0, :len(prompt)].tolist() == prompt for state, _ in states)


def test_the_chat_command_once_and_as_a_repl(chat_run: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    once = subprocess.run([sys.executable, "-m", "dlm", "chat", "--ckpt", str(chat_run), "--once", "How much wood?",
                           "--temperature", "0"], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    assert once.returncode == 0, once.stderr
    assert once.stdout.strip() == "Early to bed and early to rise."
    script = "How much wood?\n/steps 16\n/sampler margin\nThe cat sat on the mat.\n/reset\n/bogus\n"
    repl = subprocess.run([sys.executable, "-m", "dlm", "chat", "--ckpt", str(chat_run), "--temperature", "0"],
                          input=script, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert repl.returncode == 0, repl.stderr  # end of input: a clean exit
    out = repl.stdout
    assert "dlm> Early to bed and early to rise." in out and "(steps: 16)" in out and "(sampler: margin)" in out
    assert "dlm> All that glitters is not gold." in out and "(new conversation)" in out and "commands:" in out
    assert "Traceback" not in repl.stderr


def test_lora_fine_tuning_trains_adapters_on_frozen_blocks(chat_run: Path, tmp_path: Path) -> None:
    base = chat_run.parent / "base"
    out = tmp_path / "lora"
    assert main(["finetune", "--base", str(base), "--chat", "--data", str(chat_run.parent / "chats.jsonl"),
                 "--out", str(out), "--max-steps", "20", "--lora", "4", "--quiet", "ema_decay=0"]) == 0
    tuned, original = dlm.load(out).model, dlm.load(base).model
    assert tuned.cfg.lora_rank == 4
    qkv = tuned.blocks[0].attn.qkv
    assert torch.equal(qkv.base.weight, original.blocks[0].attn.qkv.weight)  # frozen
    assert qkv.lora_b.abs().sum() > 0  # the adapter learnt
    assert dlm.load(out).chat(messages("How much wood?"), max_new_tokens=16, steps=8) is not None
