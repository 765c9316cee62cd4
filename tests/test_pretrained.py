"""Pretrained causal LMs made diffusion models (`dlm adapt`): tiny random models of each supported
family, built from `transformers` configs with tokenizers trained here (no downloads)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import dlm
from dlm.cli import main
from dlm.data.chat import ChatTemplate

transformers = pytest.importorskip("transformers", reason="adapting a causal LM needs transformers (dlm[hf])")

FAMILY_SPECIALS = {
    "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
    "llama": {"bos_token": "<s>", "eos_token": "</s>"},
    "qwen2": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    "smollm2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|im_end|>"},
}
CHATML = ("<|im_start|>", "<|im_end|>")


def family_config(family: str, vocab: int):
    small = {"vocab_size": vocab, "max_position_embeddings": 128}
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=vocab, n_positions=128, n_embd=48, n_layer=2, n_head=2)
    if family == "llama":
        return transformers.LlamaConfig(**small, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    if family == "qwen2":
        return transformers.Qwen2Config(**small, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2)
    # SmolLM2 is the LLaMA architecture with tied embeddings, 3:1 grouped-query heads and ChatML tokens.
    return transformers.LlamaConfig(**small, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)


def save_tiny_causal_lm(folder: Path, family: str, text: str, extra_rows: int = 0, pretrain_steps: int = 0) -> Path:
    """A tiny causal LM of `family` with a byte-level BPE tokenizer trained on `text`; with
    `pretrain_steps`, first trained as the causal LM it is (next-token loss) on that text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = FAMILY_SPECIALS[family]
    names = list(dict.fromkeys([*specials.values(), *(CHATML if family in ("qwen2", "smollm2") else ())]))
    rust = Tokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    rust.train_from_iterator(text.splitlines(keepends=True), trainers.BpeTrainer(
        vocab_size=400, special_tokens=names, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, **specials)
    if family in ("qwen2", "smollm2"):
        fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(family_config(family, rust.get_vocab_size() + extra_rows))
    if pretrain_steps:
        ids = torch.tensor(rust.encode(text).ids)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(pretrain_steps):
            starts = torch.randint(0, len(ids) - 33, (16,), generator=generator)
            batch = torch.stack([ids[s:s + 32] for s in starts.tolist()])
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    path = tmp_path_factory.mktemp("adapt-corpus") / "corpus.txt"
    path.write_text(corpus_text)
    return path


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]


def adapt(model: Path, corpus: Path, out: Path, *extra: str, steps: int = 60) -> int:
    return main(["adapt", str(model), "--data", str(corpus), "--out", str(out), "--max-steps", str(steps), "--quiet",
                 "model.block_size=32", "train.batch_size=8", "train.lr=3e-3", "train.eval_interval=1000",
                 "train.ckpt_interval=1000", *extra])


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "smollm2"])
def test_each_family_adapts_samples_and_round_trips(family: str, corpus: Path, corpus_text: str,
                                                    tmp_path: Path) -> None:
    # Qwen2 keeps more embedding rows than its tokenizer has ids: [MASK] lands on a spare row.
    model = save_tiny_causal_lm(tmp_path / family, family, corpus_text, extra_rows=8 if family == "qwen2" else 0)
    run = tmp_path / "run"
    assert adapt(model, corpus, run, "--anneal-steps", "20") == 0
    pipe = dlm.load(run)
    tok = pipe.tokenizer
    assert tok.kind == "hf" and tok.token_to_id("<|mask|>") == tok.mask_id and "<|mask|>" in tok.added_tokens
    assert tok.chat_markup == ("chatml" if family in ("qwen2", "smollm2") else "")
    seen = losses(run)
    assert sum(seen[-3:]) / 3 < min(sum(seen[:2]) / 2, math.log(tok.n_real_tokens)) - 0.5, seen  # it learns
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    assert log[0]["attention_open"] < 1 and log[-1]["attention_open"] == 1.0  # annealed to bidirectional
    result = pipe.sample(["the", "a cat"], length=12, steps=6, seed=0)
    assert not (result.tokens == tok.mask_id).any()
    # The run loads without the original folder, and its Hub export gives the same logits.
    for path in model.iterdir():
        path.unlink()
    model.rmdir()
    export = tmp_path / "export"
    assert main(["export", str(run), "--hub", str(export)]) == 0
    again = dlm.load(export, dtype="fp32")
    pipe = dlm.load(run, dtype="fp32")
    x = torch.randint(0, tok.n_real_tokens, (2, 16))
    with torch.no_grad():
        assert torch.equal(pipe.model(x), again.model(x))


def llama_and_its_denoiser(corpus_text: str, tmp_path: Path):
    """A tiny LLaMA as saved, and the same weights read by HFCausalDenoiser."""
    from dlm.model.config import ModelConfig
    from dlm.model.hf_backbone import HFCausalDenoiser, read_backbone_config

    folder = save_tiny_causal_lm(tmp_path / "llama", "llama", corpus_text)
    cfg = ModelConfig(backbone=f"hf:{folder}", block_size=32)
    cfg.backbone_config = read_backbone_config(cfg)
    cfg.vocab_size = cfg.backbone_config["vocab_size"]
    original = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return original, HFCausalDenoiser(cfg, pretrained=True), cfg


def test_the_shift_and_the_annealed_attention(corpus_text: str, tmp_path: Path) -> None:
    original, wrapped, cfg = llama_and_its_denoiser(corpus_text, tmp_path)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.no_grad():
        causal_logits = original(input_ids=x).logits
        wrapped.train()
        wrapped.future_visible = 0.0  # the start of annealing: the causal LM as pretrained, shifted by one
        assert torch.allclose(wrapped(x)[:, 1:], causal_logits[:, :-1], atol=1e-5)
        assert torch.allclose(wrapped(x)[:, 0], causal_logits[:, 0], atol=1e-5)
        wrapped.future_visible = 0.5
        open_share = (wrapped._visibility(200, x.device).float().sum() - 200 * 201 / 2) / (200 * 199 / 2)
        assert 0.45 < float(open_share) < 0.55
        y = x.clone()
        y[:, -1] = (y[:, -1] + 1) % cfg.vocab_size
        wrapped.eval()  # outside training: every key visible, whatever the annealing left
        assert not torch.allclose(wrapped(x)[:, 1], wrapped(y)[:, 1])


def test_block_diffusion_keeps_the_shift_across_blocks(corpus_text: str, tmp_path: Path) -> None:
    from dlm.model.block_attention import block_layout
    from dlm.objectives.block_diffusion import block_diffusion_logits
    from dlm.sampling.canvas import Canvas, attention_mask

    original, wrapped, cfg = llama_and_its_denoiser(corpus_text, tmp_path)
    wrapped.eval()
    x = torch.randint(0, cfg.vocab_size - 1, (2, 16))
    z = torch.where(torch.rand(x.shape) < 0.5, cfg.vocab_size - 1, x)  # any id stands in for [MASK] here
    with torch.no_grad():
        # Blocks of 1: every token is the first of its block and reads the clean state before it,
        # which has seen exactly the tokens before it: the pretrained causal LM itself.
        one = block_diffusion_logits(wrapped, z, x, 1)
        assert torch.allclose(one[:, 1:], original(input_ids=x).logits[:, :-1], atol=1e-5)
        # Blocks of 4: the training layout gives each block what the sampler gives it, the clean
        # prefix (block-causal) followed by the noisy block.
        four = block_diffusion_logits(wrapped, z, x, 4)
        for b in range(4):
            s, e = 4 * b, 4 * b + 4
            canvas_ids = torch.cat((x[:, :s], z[:, s:e]), dim=1)
            canvas = Canvas(tokens=canvas_ids, fixed=torch.ones_like(canvas_ids, dtype=torch.bool),
                            valid=torch.ones_like(canvas_ids, dtype=torch.bool),
                            positions=torch.arange(e)[None].expand(2, -1))
            mask = attention_mask(canvas, 4, block_causal=True, aligned=True)
            assert torch.allclose(four[:, s:e], wrapped(canvas_ids, attn_mask=mask)[:, s:e], atol=1e-5), b
        # The trainer's input (the layout object, as the objective passes it) routes to the same logits.
        routed = wrapped(torch.cat((z, x), dim=1), attn_mask=block_layout(16, 4))
        assert torch.equal(routed, four)


def test_a_block_diffusion_adaptation_learns_and_samples(corpus: Path, corpus_text: str, tmp_path: Path,
                                                        capsys) -> None:
    model = save_tiny_causal_lm(tmp_path / "smollm2", "smollm2", corpus_text)
    run = tmp_path / "bd3"
    assert adapt(model, corpus, run, "--block-size", "4", "--anneal-steps", "10") == 0
    pipe = dlm.load(run)
    assert pipe.objective == "bd3" and pipe.diffusion_block == 4
    seen = losses(run)
    assert sum(seen[-3:]) / 3 < min(sum(seen[:2]) / 2, math.log(pipe.tokenizer.n_real_tokens)) - 0.5, seen
    result = pipe.sample(["the"], length=12, seed=0)
    assert not (result.tokens == pipe.tokenizer.mask_id).any()
    assert main(["eval", "--ckpt", str(run), "--max-passes", "2", "--quiet"]) == 0  # the block NELBO
    capsys.readouterr()
    assert adapt(model, corpus, tmp_path / "bad", "--block-size", "5") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "diffusion.block_size=5 must divide" in err


def test_mask_rows_start_at_the_mean_and_pretraining_helps(corpus: Path, corpus_text: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    pretrained = save_tiny_causal_lm(tmp_path / "pretrained", "llama", corpus_text, pretrain_steps=150)
    first = tmp_path / "one-step"
    assert adapt(pretrained, corpus, first, "train.lr=1e-9", steps=1) == 0
    tok = dlm.load(first).tokenizer
    weights = load_file(str(next((first / "checkpoints").iterdir()) / "model.safetensors"))
    original = load_file(str(pretrained / "model.safetensors"))["model.embed_tokens.weight"]
    embed = weights["hf.model.embed_tokens.weight"]
    assert torch.allclose(embed[tok.mask_id], original.mean(0), atol=1e-5)
    assert torch.allclose(embed[:original.shape[0]], original, atol=1e-6)  # the pretrained rows are kept
    # Equal steps from the causal LM's weights and from fresh ones of the same shape: the pretrained
    # start, read with its own shift, is far ahead.
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    assert adapt(pretrained, corpus, warm, steps=30) == 0
    assert adapt(pretrained, corpus, cold, "model.backbone_init=config", steps=30) == 0
    assert sum(losses(warm)[-3:]) < sum(losses(cold)[-3:]) - 3 * 0.3, (losses(warm), losses(cold))


def test_lora_and_gradient_checkpointing(corpus: Path, corpus_text: str, tmp_path: Path) -> None:
    from dlm.model.lora import LoRALinear

    for family in ("gpt2", "llama"):  # GPT-2's linear maps are Conv1D, stored transposed
        model = save_tiny_causal_lm(tmp_path / family, family, corpus_text)
        run = tmp_path / f"{family}-lora"
        assert adapt(model, corpus, run, "--lora", "4", "train.gradient_checkpointing=true", steps=40) == 0
        pipe = dlm.load(run)
        adapters = [m for m in pipe.model.modules() if isinstance(m, LoRALinear)]
        assert len(adapters) >= 2 * 4  # attention and MLP maps of both layers
        seen = losses(run)
        assert sum(seen[-3:]) / 3 < sum(seen[:2]) / 2 - 0.3, seen
        trainable = {n for n, p in pipe.model.named_parameters() if p.requires_grad}
        assert all("lora_" in n or "embed" in n or "wte" in n or "lm_head" in n for n in trainable), trainable


def test_a_chat_model_in_its_own_markup_answers_and_stops(corpus: Path, corpus_text: str, tmp_path: Path) -> None:
    model = save_tiny_causal_lm(tmp_path / "smol", "smollm2", corpus_text)
    pairs = [("The cat sat on the mat.", "All that glitters is not gold."),
             ("Where there is smoke?", "There is fire.")]
    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": c},
                                                         {"role": "assistant", "content": r}]})
                               for c, r in pairs * 6))
    run = tmp_path / "chat"
    assert main(["adapt", str(model), "--chat", "--data", str(chats), "--out", str(run), "--max-steps", "200",
                 "--quiet", "model.block_size=48", "train.batch_size=8", "train.lr=3e-3", "train.eval_interval=1000",
                 "--anneal-steps", "20"]) == 0
    pipe = dlm.load(run)
    template = ChatTemplate(pipe.tokenizer)
    assert pipe.tokenizer.decode(template.prompt([{"role": "user", "content": "Hi"}])) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    for cue, reply in pairs:
        assert pipe.chat([{"role": "user", "content": cue}], temperature=0.0) == reply


def test_an_unsupported_family_is_one_line(corpus: Path, corpus_text: str, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "opt"
    transformers.OPTForCausalLM(transformers.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                       ffn_dim=32, num_attention_heads=2)).save_pretrained(folder)
    save_tiny_causal_lm(tmp_path / "tok", "gpt2", corpus_text)
    (folder / "tokenizer.json").write_bytes((tmp_path / "tok" / "tokenizer.json").read_bytes())
    capsys.readouterr()
    assert adapt(folder, corpus, tmp_path / "run") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not supported yet" in err and "gpt2 (GPT-2)" in err and "qwen2" in err
    assert main(["adapt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")]) == 2
    assert "not a model folder" in capsys.readouterr().err


def test_the_model_writes_its_own_conversations(corpus_text: str, tmp_path: Path, isolated_cache: Path) -> None:
    from dlm.data.distill import distill_prompts

    model = save_tiny_causal_lm(tmp_path / "smol", "smollm2", corpus_text, pretrain_steps=60)
    run = tmp_path / "chat"
    assert main(["adapt", str(model), "--chat", "--data", "distill:24", "--out", str(run), "--max-steps", "3",
                 "--quiet", "model.block_size=128", "train.batch_size=4"]) == 0
    (written,) = (isolated_cache / "conversations").glob("distill-smol-24-*.jsonl")
    rows = [json.loads(line)["messages"] for line in written.read_text().splitlines()]
    assert 0 < len(rows) <= 24 and all(r[0]["role"] == "user" and r[1]["role"] == "assistant" and r[1]["content"]
                                       for r in rows)
    assert {r[0]["content"] for r in rows} <= set(distill_prompts(24))
    assert json.loads((run / "config.json").read_text())["data"]["source"] == str(written)
    before = written.stat().st_mtime_ns  # a second run reuses the file
    assert main(["adapt", str(model), "--chat", "--data", "distill:24", "--out", str(tmp_path / "again"),
                 "--max-steps", "1", "--quiet", "model.block_size=128", "train.batch_size=4"]) == 0
    assert written.stat().st_mtime_ns == before
    assert main(["adapt", str(model), "--data", "distill", "--out", str(tmp_path / "x")]) == 2
    assert main(["adapt", str(model), "--chat", "--data", "distill:many", "--out", str(tmp_path / "y")]) == 2
