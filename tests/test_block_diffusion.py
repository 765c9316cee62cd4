"""Block diffusion (BD3-LM): the objective's limits (B = L is MDLM, B = 1 the exact next-token NLL),
the sampler's KV cache against the training forward, and a short run that learns."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dlm
from dlm.data.config import DataConfig
from dlm.data.shards import prepare_corpus
from dlm.diffusion.schedules import Linear
from dlm.errors import DlmError
from dlm.model import ModelConfig
from dlm.model.transformer import Transformer
from dlm.objectives.block_diffusion import bd3_loss, block_diffusion_logits, block_diffusion_mask
from dlm.objectives.mdlm import mdlm_loss
from dlm.presets import tiny
from dlm.sampling.canvas import build_canvas
from dlm.sampling.config import SamplerConfig
from dlm.sampling.denoiser import Denoiser
from dlm.special_ids import SpecialIds
from dlm.train.trainer import train

V, MASK = 12, 11
SPECIAL = SpecialIds(mask=MASK, pad=10, bos=9, eos=8)


def model(L: int = 16, seed: int = 0, clean_causal: bool = False) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, n_layer=2, n_head=2, d_model=32, block_size=L, clean_causal=clean_causal)
    return Transformer(cfg).eval()


def data(B: int = 3, L: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 8, (B, L), generator=torch.Generator().manual_seed(seed))


def test_attention_mask_noisy_sees_its_block_and_clean_past() -> None:
    mask = block_diffusion_mask(4, 2).int()
    expected = torch.tensor([
        # noisy 0..3        clean 0..3
        [1, 1, 0, 0,        0, 0, 0, 0],
        [1, 1, 0, 0,        0, 0, 0, 0],
        [0, 0, 1, 1,        1, 1, 0, 0],
        [0, 0, 1, 1,        1, 1, 0, 0],
        [0, 0, 0, 0,        1, 1, 0, 0],
        [0, 0, 0, 0,        1, 1, 0, 0],
        [0, 0, 0, 0,        1, 1, 1, 1],
        [0, 0, 0, 0,        1, 1, 1, 1],
    ])
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="must divide"):
        block_diffusion_mask(6, 4)


def test_one_block_is_mdlm_with_the_same_weights_and_noise() -> None:
    net, x = model(), data()
    ours = bd3_loss(net, x, Linear(), MASK, block=16, generator=torch.Generator().manual_seed(5))
    theirs = mdlm_loss(net, x, Linear(), MASK, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(ours.t, theirs.t)
    assert torch.allclose(ours.per_sequence, theirs.per_sequence, atol=1e-5), (ours.per_sequence, theirs.per_sequence)


def exact_next_token_nll(net: Transformer, x: torch.Tensor) -> torch.Tensor:
    """(B,) mean −log p(x_l | x_<l) per token, each position scored on its own: the clean prefix read
    causally, [MASK] at l (what a block of one token is, decoded with nothing else)."""
    B, L = x.shape
    total = torch.zeros(B)
    for pos in range(L):
        inputs = torch.cat((x[:, :pos], torch.full((B, 1), MASK)), dim=1)
        causal = torch.ones(pos + 1, pos + 1, dtype=torch.bool).tril()
        logits = net(inputs, attn_mask=causal)[:, -1].float()
        logits[:, MASK] = float("-inf")
        total += torch.nn.functional.cross_entropy(logits, x[:, pos], reduction="none")
    return total / L


def test_blocks_of_one_token_give_the_exact_next_token_nll() -> None:
    net, x = model(), data()
    exact = exact_next_token_nll(net, x)
    # Every block masked (t = 1, weight 1 under the linear schedule): the bound is the NLL itself.
    at_one = bd3_loss(net, x, Linear(), MASK, block=1, t=torch.ones(3, 16))
    assert torch.allclose(at_one.per_sequence, exact, atol=1e-5)
    # And in expectation over t: averaged over many draws the estimate converges to it.
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([bd3_loss(net, x, Linear(), MASK, block=1, generator=gen).per_sequence for _ in range(400)])
    se = draws.std(0) / 400 ** 0.5
    assert ((draws.mean(0) - exact).abs() < 4 * se).all(), (draws.mean(0), exact, se)


@pytest.mark.parametrize("prompt_len", [0, 5, 8])
@pytest.mark.parametrize("clean_causal", [False, True])
def test_the_samplers_cached_block_sees_what_training_saw(prompt_len: int, clean_causal: bool) -> None:
    """The logits of the first step of a block, decoded with the exact KV cache of the blocks before
    it, equal the training forward's logits for that block fully masked (finished blocks read
    block-causally, or token-causally for a clean_causal model)."""
    net, x, block = model(clean_causal=clean_causal), data(B=1), 4
    first = prompt_len // block  # the block holding the first generated token
    s, e = first * block, (first + 1) * block
    canvas = build_canvas([[*x[0, :prompt_len].tolist(), *([None] * (16 - prompt_len))]], SPECIAL)
    config = SamplerConfig(block_length=block, block_context="prefix", kv_cache=True, aligned_blocks=True,
                           steps=16, temperature=0)
    decoder = Denoiser(net, canvas, config, SPECIAL)
    windows = decoder._windows()
    assert windows[0] == (s, e) and all(b - a == block for a, b in windows)
    with torch.no_grad():
        cached = decoder.logits(windows[0], torch.ones(1))
        z = x.clone()
        z[:, prompt_len:e] = MASK
        trained = block_diffusion_logits(net, z, x, block)[:, s:e]
    keep = z[:, s:e] == MASK  # the sampler suppresses specials; compare the positions it decodes
    trained[..., [MASK, SPECIAL.pad, SPECIAL.bos]] = float("-inf")
    assert torch.allclose(cached[keep], trained[keep].float(), atol=1e-4)
    uncached = Denoiser(net, canvas, SamplerConfig(**{**config.__dict__, "kv_cache": False}), SPECIAL)
    with torch.no_grad():
        assert torch.allclose(uncached.logits(windows[0], torch.ones(1))[keep], cached[keep], atol=1e-4)
    if prompt_len % block == 0:  # the ONNX export's mask over [finished blocks | current block]
        from dlm.onnx_export import LogitsOnly

        with torch.no_grad():
            exported = LogitsOnly(net, block)(z[:, :e])[:, s:e]
        exported[..., [MASK, SPECIAL.pad, SPECIAL.bos]] = float("-inf")
        assert torch.allclose(exported[keep], trained[keep].float(), atol=1e-4)


def test_cached_and_uncached_block_decoding_agree() -> None:
    net = model()
    prompt = data(B=1)[0, :6].tolist()
    results = []
    for cache in (True, False):
        canvas = build_canvas([[*prompt, *([None] * 10)]], SPECIAL)
        config = SamplerConfig(block_length=4, block_context="prefix", kv_cache=cache, aligned_blocks=True,
                               steps=10, temperature=0.8, seed=3)
        with torch.no_grad():
            results.append(Denoiser(net, canvas, config, SPECIAL).run())
    assert torch.equal(results[0].tokens, results[1].tokens)
    assert results[0].tokens[0, :6].tolist() == prompt and not (results[0].tokens == MASK).any()


def test_config_errors_name_the_fix() -> None:
    cfg = tiny()
    cfg.train.objective, cfg.diffusion.block_size = "bd3", 5
    with pytest.raises(DlmError, match="must divide the context"):
        cfg.validate()
    cfg.diffusion.block_size, cfg.diffusion.t_range = 4, "0.5,0.2"
    with pytest.raises(DlmError, match="t_range"):
        cfg.validate()


def test_cli_rejects_a_block_size_that_does_not_divide_the_context(tmp_path: Path, corpus_file: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "dlm", "train", "--preset", "tiny", "--data", str(corpus_file),
                          "--out", str(tmp_path / "run"), "--block-size", "5", "--max-steps", "1"],
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert "diffusion.block_size=5 must divide" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "dlm", "train", "--preset", "tiny", "--data", str(corpus_file),
                          "--out", str(tmp_path / "run"), "--block-size", "4", "--objective", "mdlm"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "use --objective bd3" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("block", [2, 4])
def test_the_exact_block_nelbo_is_what_the_estimator_estimates(block: int) -> None:
    from math import comb

    from dlm.eval.likelihood import exact_block_nelbo, mask_pattern_weight

    # the weights of all patterns of one block count each of its tokens once in all
    assert sum(comb(block, k) * k * mask_pattern_weight(k, block) for k in range(1, block + 1)) == pytest.approx(block)
    net, x = model(clean_causal=block == 4), data()
    exact = torch.from_numpy(exact_block_nelbo(net, x, SPECIAL, block=block, device=torch.device("cpu"),
                                               dtype=torch.float32, progress=False)).float()
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([bd3_loss(net, x, Linear(), MASK, block=block, generator=gen).per_sequence
                         for _ in range(400)])
    se = draws.std(0) / 400 ** 0.5
    assert ((draws.mean(0) - exact).abs() < 4 * se).all(), (draws.mean(0), exact, se)
    # the bound is an any-order loss: the mean over every order of revealing a block is the exact sum
    from itertools import permutations

    from dlm.eval.likelihood import block_pattern_nll, order_nll

    table = block_pattern_nll(net, x, SPECIAL, block=block, device=torch.device("cpu"), dtype=torch.float32,
                              progress=False)
    orders = [order_nll(table, order, x.shape[1]) for order in permutations(range(block))]
    assert torch.allclose(torch.from_numpy(sum(orders) / len(orders)).float(), exact, atol=1e-5)
    assert not all(torch.allclose(torch.from_numpy(o).float(), exact, atol=1e-3) for o in orders)


@pytest.mark.parametrize("block", [2, 4])
def test_counting_the_masked_tokens_estimates_the_same_bound_with_less_noise(block: int) -> None:
    """diffusion.block_noise=count: k ~ U{1 … B} masked tokens per block, weight B / k: the exact bound in
    expectation, with a smaller spread than the noise-level estimator's 1/t weights."""
    from dlm.eval.likelihood import exact_block_nelbo

    net, x = model(clean_causal=block == 4), data()
    exact = torch.from_numpy(exact_block_nelbo(net, x, SPECIAL, block=block, device=torch.device("cpu"),
                                               dtype=torch.float32, progress=False)).float()
    gen = torch.Generator().manual_seed(0)
    counted = torch.stack([bd3_loss(net, x, Linear(), MASK, block=block, generator=gen, count_masking=True).per_sequence
                           for _ in range(400)])
    se = counted.std(0) / 400 ** 0.5
    assert ((counted.mean(0) - exact).abs() < 4 * se).all(), (counted.mean(0), exact, se)
    by_level = torch.stack([bd3_loss(net, x, Linear(), MASK, block=block, generator=gen).per_sequence
                            for _ in range(400)])
    assert (counted.std(0) < by_level.std(0)).all(), (counted.std(0), by_level.std(0))


def test_block_noise_is_checked() -> None:
    from dlm.config import RunConfig, apply_overrides
    from dlm.errors import DlmError

    with pytest.raises(DlmError, match="diffusion.block_noise='often' is not one of t, count"):
        apply_overrides(RunConfig(), ["diffusion.block_noise=often"]).validate()


def test_evaluating_one_block_is_evaluating_mdlm() -> None:
    """`dlm eval` of blocks as long as the window (B = L, Monte Carlo) gives MDLM's estimate of the same weights
    with the same noise: one noise level per window either way."""
    from dlm.eval.likelihood import evaluate_likelihood

    net, x = model(), data()
    options = {"causal": False, "device": torch.device("cpu"), "dtype": torch.float32, "progress": False,
               "min_passes": 3, "max_passes": 3}
    one_block = evaluate_likelihood(net, x, SPECIAL, block=x.shape[1], **options)
    mdlm = evaluate_likelihood(net, x, SPECIAL, **options)
    assert one_block["estimator"] == "monte_carlo" and one_block["passes"] == 3
    assert one_block["nats_per_token"] == pytest.approx(mdlm["nats_per_token"], abs=1e-5)


@pytest.mark.parametrize("speculative", [True, False])
def test_blocks_as_long_as_the_context_write_past_it(corpus_text: str, speculative: bool) -> None:
    """Past the context the window slides by half a context; when one block fills the context (B = L, MDLM
    trained as block diffusion), the kept half ends inside the next window's block."""
    from dlm.config import RunConfig
    from dlm.inference import Pipeline
    from dlm.tokenizers import CharTokenizer

    tokenizer = CharTokenizer.from_text(corpus_text)
    config = RunConfig()
    config.train.objective, config.diffusion.block_size = "bd3", 16
    config.model.block_size, config.model.vocab_size = 16, tokenizer.vocab_size
    config.model.n_layer, config.model.d_model, config.model.n_head = 1, 32, 2
    config.model.clean_causal, config.diffusion.clean_ar_weight = True, 1.0
    net = Transformer(config.model).eval()
    pipe = Pipeline(net, tokenizer, config, Path("."), torch.device("cpu"), torch.float32)
    result = pipe.sample("The", length=40, seed=0, speculative=speculative, steps=40)
    text = pipe.decode(result)[0]
    assert int(result.generated.sum()) == 40 and text.startswith("The") and "[MASK]" not in text


def test_the_exact_nelbo_of_blocks_of_one_is_the_next_token_nll() -> None:
    from dlm.eval.likelihood import evaluate_likelihood, exact_block_nelbo

    net, x = model(), data()
    exact = exact_block_nelbo(net, x, SPECIAL, block=1, device=torch.device("cpu"), dtype=torch.float32,
                              progress=False)
    assert torch.allclose(torch.from_numpy(exact).float(), exact_next_token_nll(net, x), atol=1e-5)
    figures = evaluate_likelihood(net, x, SPECIAL, causal=False, device=torch.device("cpu"), dtype=torch.float32,
                                  block=1, progress=False)
    assert figures["estimator"] == "exact_mask_patterns" and figures["mc_standard_error"] == 0
    assert figures["nats_per_token"] == pytest.approx(float(exact.mean()))
    # 'mc' keeps the Monte-Carlo estimator; 'exact' is refused where it would take too many passes
    mc = evaluate_likelihood(net, x, SPECIAL, causal=False, device=torch.device("cpu"), dtype=torch.float32,
                             block=1, progress=False, estimator="mc")
    assert mc["estimator"] == "monte_carlo" and mc["mc_standard_error"] > 0
    with pytest.raises(ValueError, match="--estimator mc"):
        evaluate_likelihood(net, x, SPECIAL, causal=False, device=torch.device("cpu"), dtype=torch.float32,
                            block=16, progress=False, estimator="exact")


def test_a_short_block_diffusion_run_learns_evaluates_and_samples(tmp_path: Path, corpus_file: Path, bench) -> None:
    from test_learning import unigram_entropy, val_nelbo

    cfg = tiny()
    cfg.data.source = str(corpus_file)
    cfg.train.objective, cfg.diffusion.block_size = "bd3", 4
    cfg.model.clean_causal, cfg.diffusion.clean_ar_weight = True, 1.0  # the CPU preset's recipe
    cfg.train.max_steps, cfg.train.eval_interval = 400, 1000
    run = tmp_path / "run"
    train(cfg, run, quiet=True)

    # it learns: its NELBO is well below the best context-free model's
    entropy = unigram_entropy(prepare_corpus(DataConfig(source=str(corpus_file))).split("train"))
    pipe = dlm.load(run)
    assert pipe.objective == "bd3" and pipe.diffusion_block == 4 and pipe.model.cfg.clean_causal
    nelbo = val_nelbo(run)
    assert nelbo["nats_per_token"] < entropy - 0.3, (nelbo, entropy)

    # dlm eval names the figure
    out = subprocess.run([sys.executable, "-m", "dlm", "eval", "--ckpt", str(run), "--quiet", "--max-passes", "4",
                          "--l2r"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "block-diffusion NELBO, blocks of 4 (upper bound on NLL)" in out.stdout
    assert "left to right inside each block (one token a step): exact NLL" in out.stdout
    assert "clean copy read as a next-token model" in out.stdout
    assert "exact sum, no Monte-Carlo error" in out.stdout and "all 15 mask patterns" in out.stdout
    exact = float(out.stdout.split(": ")[1].split(" nats")[0])
    assert exact == pytest.approx(nelbo["nats_per_token"], abs=4 * nelbo["mc_standard_error"] + 1e-3), (exact, nelbo)

    # prompts of any length in one call; a row's text does not depend on the rest of the batch
    texts = pipe.generate(["The", "The quick", ""], length=20, seed=1)
    assert texts[0].startswith("The") and texts[1].startswith("The quick") and len(texts) == 3
    alone = pipe.generate(["The quick"], length=20, seeds=[1 + 1])
    assert alone[0] == texts[1]
    assert all("[MASK]" not in text for text in texts)

    # self-speculative decoding (tests/test_self_speculative.py): from the API and the command line
    result = pipe.sample(["The", "The quick", ""], length=20, seed=1, speculative=True)
    spoken = pipe.decode(result)
    assert spoken[1].startswith("The quick") and all("[MASK]" not in text for text in spoken)
    assert int(result.generated.sum()) == 60 and result.forward_passes <= 1 + 60
    out = subprocess.run([sys.executable, "-m", "dlm", "sample", "--ckpt", str(run), "--speculative", "--length", "24",
                          "--prompt", "The"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("The"), out.stderr
    # as many drafts a pass as the block holds; more: one line naming the limit
    block = pipe.diffusion_block
    most = pipe.sample(["The quick"], length=20, seed=1, speculative=True, drafts=block - 1)
    assert pipe.decode(most)[0].startswith("The quick") and most.forward_passes <= 1 + 20
    # drafts are a speed setting: the same text for any number, and for the default (2 alone, 1 in a batch)
    fewest = pipe.sample(["The quick"], length=20, seed=1, speculative=True, drafts=1)
    assert torch.equal(fewest.tokens, most.tokens) and fewest.forward_passes >= most.forward_passes
    assert pipe.decode(pipe.sample(["The quick"], length=20, seeds=[2], speculative=True))[0] == spoken[1]
    # the block bench times a row that differs in its drafts only, checking its text against the judged row's
    blocks = bench("block_diffusion")
    common = {"num_samples": 3, "batch_size": 2, "length": 16, "seed": 0}
    from dlm.eval.generation_eval import draw_samples, sample_texts

    texts = sample_texts(pipe, draw_samples(pipe, 3, 16, 16, 2, 0, {"speculative": True, "drafts": 1})[0])
    judged = {"texts": texts, "name": "one draft", "real_word_rate": 0.5}
    row = blocks.same_text_timed(pipe, {"speculative": True, "drafts": 3}, 16, judged, common)
    assert row["same_text_as"] == "one draft" and row["real_word_rate"] == 0.5 and row["drafts"] == 3
    with pytest.raises(SystemExit, match="the drafts changed the text"):
        blocks.same_text_timed(pipe, {"speculative": True, "drafts": 3}, 16, {**judged, "texts": texts[::-1]}, common)
    bad = subprocess.run([sys.executable, "-m", "dlm", "sample", "--ckpt", str(run), "--drafts", str(block),
                          "--length", "8"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"dlm: error: drafts={block}: a block of {block} drafts at most {block - 1} tokens a pass"], bad.stderr
    # past the context the window slides, and every window decodes self-speculatively
    longer = pipe.sample("The", length=pipe.model.cfg.block_size + 20, seed=0)
    assert int(longer.generated.sum()) == pipe.model.cfg.block_size + 20
    assert pipe.decode(longer)[0].startswith("The") and "[MASK]" not in pipe.decode(longer)[0]
    assert longer.forward_passes < pipe.model.cfg.block_size + 20  # drafts were accepted
    with pytest.raises(DlmError, match="fill templates without --speculative"):
        pipe.infill("The [MASK*4] fox", speculative=True)
    # it is this run's default (a template falls back to threshold decoding); the server needs no common
    # block offset for its rows and refuses options it cannot honour
    assert pipe.speculates({}) and not pipe.speculates({"threshold": 0.7}) and not pipe.speculates({"remask": 0.1})
    assert "[MASK]" not in pipe.infill("The [MASK*4] fox", seed=0)
    from dlm.serve.app import ApiError, Limits, parse_request

    pipes, limits = {"m": pipe}, Limits(max_tokens=48, max_steps=64, max_prompts=8, max_request_tokens=512)
    assert parse_request({"model": "m", "prompt": ["The", "A"], "max_tokens": 8}, pipes, limits, chat=False).align == 0
    with pytest.raises(ApiError, match="does not combine with remask"):
        parse_request({"model": "m", "prompt": "The", "max_tokens": 8, "speculative": True, "remask": 0.2}, pipes,
                      limits, chat=False)
    with pytest.raises(ApiError, match=f"drafts={block}: a block of {block} drafts at most"):
        parse_request({"model": "m", "prompt": "The", "max_tokens": 8, "drafts": block}, pipes, limits, chat=False)


@pytest.mark.parametrize("block", [1, 4, 16])
def test_the_partwise_attention_equals_the_dense_mask(block: int) -> None:
    net, x = model(), data()
    z = x.masked_fill(torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5, MASK)
    with torch.no_grad():
        fast = block_diffusion_logits(net, z, x, block)
        dense = block_diffusion_logits(net, z, x, block, dense=True)
    assert torch.allclose(fast, dense, atol=1e-5)


@pytest.mark.parametrize("block,clean_causal", [(1, True), (4, True), (4, False), (16, False), (64, True)])
def test_attention_split_in_row_bands_equals_the_dense_mask_with_its_gradients(block: int, clean_causal: bool) -> None:
    """Windows of 128 split the two L × L parts in two bands of rows (row_bands); the noisy and the clean rows'
    logits and every gradient match the dense mask's."""
    from dlm.model.block_attention import row_bands

    L = 128
    assert row_bands(L, block, 1) == 2
    net, x = model(L=L, clean_causal=clean_causal), data(B=2, L=L)
    z = x.masked_fill(torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5, MASK)
    target = torch.randint(0, V, (2, 2 * L), generator=torch.Generator().manual_seed(3))
    results = []
    for dense in (False, True):
        net.zero_grad()
        logits = block_diffusion_logits(net, z, x, block, dense=dense, clean_rows=True)
        torch.nn.functional.cross_entropy(logits.transpose(1, 2), target).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (banded, banded_grads), (dense_logits, dense_grads) = results
    assert torch.allclose(banded, dense_logits, atol=1e-5)
    assert all(torch.allclose(banded_grads[n], dense_grads[n], atol=1e-5) for n in dense_grads)


def test_a_block_model_writes_past_its_context_and_exports(tmp_path: Path, corpus_file: Path) -> None:
    cfg = tiny()
    cfg.data.source = str(corpus_file)
    cfg.train.objective, cfg.diffusion.block_size = "bd3", 4
    cfg.train.max_steps, cfg.train.eval_interval = 20, 1000
    train(cfg, tmp_path / "run", quiet=True)
    pipe = dlm.load(tmp_path / "run")
    context = pipe.model.cfg.block_size
    result = pipe.sample(["The", "A small"], length=3 * context, seed=0)
    rows = result.rows()
    assert [len(r) for r in rows] == [len(pipe.tokenizer.encode(p)) + 3 * context for p in ("The", "A small")]
    assert int(result.generated.sum()) == 2 * 3 * context
    specials = {pipe.tokenizer.mask_id, pipe.tokenizer.pad_id}
    assert not any(specials & set(r) for r in rows)
    assert pipe.decode(result)[1].startswith("A small")
    # a step-by-step decoder (the server's) holds one window: it still says the sample does not fit
    with pytest.raises(DlmError, match="exceeds the model's context"):
        pipe.decoder("The", context)

    # Hub export: the export loads as the same block model and samples the same text
    from dlm.hub import export_run

    export_run(tmp_path / "run", tmp_path / "hub")
    again = dlm.load(tmp_path / "hub")
    assert again.objective == "bd3" and again.diffusion_block == 4
    assert again.generate("The", length=12, seed=3) == pipe.generate("The", length=12, seed=3)

    # ONNX: the export computes the block-causal logits the sampler uses
    onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX checks need onnxruntime (pip install 'dlm[onnx]')")
    from dlm.onnx_export import TOLERANCE, export_onnx

    report = export_onnx(tmp_path / "run", tmp_path / "onnx")
    assert report["max_abs_diff"] < TOLERANCE
    session = onnxruntime.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    ids = torch.randint(0, pipe.tokenizer.n_real_tokens, (2, 10))
    blocks = torch.arange(10) // 4
    fp32 = dlm.load(tmp_path / "run", dtype="fp32")
    with torch.no_grad():
        expected = fp32.model(ids, attn_mask=blocks[None, :] <= blocks[:, None]).float()
    ours = torch.from_numpy(session.run(None, {"input_ids": ids.numpy()})[0])
    assert (ours - expected).abs().max() < TOLERANCE
    import json

    assert json.loads((tmp_path / "onnx" / "config.json").read_text())["diffusion_block"] == 4


def test_a_block_model_chats_and_serves(tmp_path: Path, corpus_text: str) -> None:
    """Chat fine-tuning keeps the block objective; the chat model answers what it learnt and stops; the
    server decodes it block by block and asks for prompts of one length modulo the block per request."""
    import json

    from dlm.cli import main
    from dlm.serve.app import ApiError, Limits, parse_request

    pairs = [("The cat sat on the mat.", "All that glitters is not gold."),
             ("Good morning, my friend.", "Many hands make light work."),
             ("How much wood?", "Early to bed and early to rise.")]
    (tmp_path / "corpus.txt").write_text(corpus_text)
    (tmp_path / "chats.jsonl").write_text("\n".join(
        json.dumps({"messages": [{"role": "user", "content": c}, {"role": "assistant", "content": r}]})
        for c, r in pairs * 4))
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path / "corpus.txt"), "--out", str(tmp_path / "base"),
                 "--block-size", "4", "--max-steps", "150", "--quiet", "model.block_size=64", "batch_size=16"]) == 0
    assert main(["finetune", "--base", str(tmp_path / "base"), "--chat", "--data", str(tmp_path / "chats.jsonl"),
                 "--out", str(tmp_path / "chat"), "--max-steps", "600", "--quiet", "lr=4e-3", "warmup_steps=20",
                 "eval_interval=1000", "ema_decay=0"]) == 0
    pipe = dlm.load(tmp_path / "chat")
    assert pipe.objective == "bd3" and pipe.config.finetune.chat
    answers = [pipe.chat([{"role": "user", "content": c}], temperature=0.0) for c, _ in pairs]
    assert sum(a == r for a, (_, r) in zip(answers, pairs, strict=True)) >= 2, answers

    pipes, limits = {"bd3": pipe}, Limits(max_tokens=48, max_steps=64, max_prompts=8, max_request_tokens=512)
    job = parse_request({"model": "bd3", "prompt": ["The", "A b"], "max_tokens": 8}, pipes, limits, chat=False)
    assert job.align == 3
    with pytest.raises(ApiError, match="differ modulo 4"):
        parse_request({"model": "bd3", "prompt": ["The", "A"], "max_tokens": 8}, pipes, limits, chat=False)
    with pytest.raises(ApiError, match="speculative decoding needs a block model"):  # no next-token clean copy
        parse_request({"model": "bd3", "prompt": "The", "max_tokens": 8, "speculative": True}, pipes, limits,
                      chat=False)


def test_clipped_noise_levels_stay_in_their_range() -> None:
    from dlm.objectives.block_diffusion import sample_block_t

    t = sample_block_t(8, 16, generator=torch.Generator().manual_seed(0), t_range=(0.45, 0.95))
    assert t.shape == (8, 16) and float(t.min()) >= 0.45 and float(t.max()) <= 0.95
    # stratified over all 128 blocks: one draw in each of 128 equal slices of the range
    slices = ((t.flatten() - 0.45) / 0.5 * 128).floor().long()
    assert sorted(slices.tolist()) == list(range(128))


@pytest.mark.parametrize("block", [1, 4])
def test_noisy_copies_sharing_one_clean_copy_each_get_their_own_logits(block: int) -> None:
    """[z_1 z_2 z_3 | x] in one pass gives every copy the logits of its own [z_c | x] pass, and the
    part-by-part attention equals the dense mask of three copies."""
    net, x = model(), data()
    gen = torch.Generator().manual_seed(3)
    zs = [x.masked_fill(torch.rand(x.shape, generator=gen) < 0.5, MASK) for _ in range(3)]
    with torch.no_grad():
        shared = block_diffusion_logits(net, torch.cat(zs, dim=1), x, block)
        dense = block_diffusion_logits(net, torch.cat(zs, dim=1), x, block, dense=True)
        alone = torch.cat([block_diffusion_logits(net, z, x, block) for z in zs], dim=1)
    assert shared.shape == (3, 48, V)
    assert torch.allclose(shared, alone, atol=1e-5) and torch.allclose(shared, dense, atol=1e-5)


def test_the_loss_of_noisy_copies_is_the_mean_of_each_copys_loss() -> None:
    """copies=2 with noise levels t = [t_1 | t_2] scores the mean of the one-copy losses at t_1 and
    at t_2: B = 1 with every block masked makes both the exact next-token NLL, with no mask noise."""
    net, x = model(), data()
    t = torch.ones(3, 32)
    with torch.no_grad():
        two = bd3_loss(net, x, Linear(), MASK, 1, t=t, copies=2)
        one = bd3_loss(net, x, Linear(), MASK, 1, t=t[:, :16])
    assert torch.allclose(two.per_sequence, one.per_sequence, atol=1e-5)
    assert two.n_tokens == one.n_tokens and torch.allclose(two.nll_sum, one.nll_sum, atol=1e-3)


def test_noisy_copies_are_for_block_diffusion_only() -> None:
    cfg = tiny()
    cfg.diffusion.noisy_copies = 2
    with pytest.raises(DlmError, match="noisy_copies"):
        cfg.validate()
    cfg.train.objective, cfg.diffusion.block_size = "bd3", 4
    cfg.validate()
    cfg.diffusion.noisy_copies = 0
    with pytest.raises(DlmError, match="noisy_copies"):
        cfg.validate()


def test_a_token_causal_clean_copy_matches_its_dense_mask_and_never_sees_ahead() -> None:
    """model.clean_causal: the part-by-part attention equals the dense mask, and the clean copy's
    next-token logits at i do not move when tokens after i change (no leak into the auxiliary loss)."""
    net, x = model(clean_causal=True), data()
    z = x.masked_fill(torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) < 0.5, MASK)
    with torch.no_grad():
        fast = block_diffusion_logits(net, z, x, 4)
        dense = block_diffusion_logits(net, z, x, 4, dense=True)
        both = block_diffusion_logits(net, z, x, 4, clean_rows=True)
        later = x.clone()
        later[:, 6:] = (later[:, 6:] + 1) % 8
        moved = block_diffusion_logits(net, z, later, 4, clean_rows=True)
    assert torch.allclose(fast, dense, atol=1e-5) and torch.allclose(both[:, :16], fast, atol=1e-5)
    assert torch.allclose(moved[:, 16:22], both[:, 16:22], atol=1e-5)  # clean rows 0..5 read only x_≤5
    assert not torch.allclose(moved[:, 22:], both[:, 22:], atol=1e-3)


def test_the_clean_next_token_loss_adds_to_the_bound_only_in_training() -> None:
    net, x = model(clean_causal=True), data()
    t = torch.full((3, 4), 0.5)
    with torch.no_grad():
        plain = bd3_loss(net, x, Linear(), MASK, 4, t=t, generator=torch.Generator().manual_seed(0))
        aux = bd3_loss(net, x, Linear(), MASK, 4, t=t, generator=torch.Generator().manual_seed(0), clean_ar_weight=0.5)
        logits = block_diffusion_logits(net, x, x, 4, clean_rows=True)[:, 16:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
    assert torch.allclose(aux.per_sequence - plain.per_sequence, 0.5 * nll.sum(1) / 16, atol=1e-5)
    with pytest.raises(ValueError, match="clean_causal"):
        bd3_loss(model(), x, Linear(), MASK, 4, t=t, clean_ar_weight=0.5)



def test_the_next_token_clean_copy_trains_inside_ddp_and_compile_wrappers(tmp_path: Path) -> None:
    # torchrun wraps the model in DDP (and dlm compiles it): neither passes `cfg` on, and the CPU preset's
    # recipe (a token-causal clean copy with a next-token loss) once failed under torchrun for that.
    import torch.distributed as dist

    net, x = model(clean_causal=True), data()
    t = torch.full((3, 4), 0.5)
    def loss(m: torch.nn.Module) -> torch.Tensor:
        return bd3_loss(m, x, Linear(), MASK, 4, t=t, generator=torch.Generator().manual_seed(0),
                        clean_ar_weight=0.5).per_sequence
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(net)
        with torch.no_grad():
            plain, through_ddp = loss(net), loss(wrapped)
            through_both = loss(torch.compile(wrapped, backend="eager"))
    finally:
        dist.destroy_process_group()
    assert torch.allclose(through_ddp, plain) and torch.allclose(through_both, plain)

def test_clean_causal_settings_name_the_fix() -> None:
    cfg = tiny()
    cfg.train.objective, cfg.diffusion.block_size, cfg.diffusion.clean_ar_weight = "bd3", 4, 0.5
    with pytest.raises(DlmError, match="model.clean_causal=true"):
        cfg.validate()  # a block-causal clean copy would show each token its successor
    cfg.model.clean_causal = True
    cfg.validate()
    cfg.diffusion.clean_ar_weight = -1.0
    with pytest.raises(DlmError, match="clean_ar_weight"):
        cfg.validate()


def test_other_objectives_are_saved_without_the_clean_copy_settings(tmp_path: Path, corpus_file: Path) -> None:
    """A preset may set them for block diffusion; an MDLM run of it neither trains nor samples with them."""
    cfg = tiny()
    cfg.data.source = str(corpus_file)
    cfg.model.clean_causal, cfg.diffusion.clean_ar_weight = True, 1.0
    cfg.train.max_steps, cfg.train.eval_interval = 2, 1000
    train(cfg, tmp_path / "run", quiet=True)
    pipe = dlm.load(tmp_path / "run")
    assert pipe.config.model.clean_causal is False and pipe.config.diffusion.clean_ar_weight == 0.0
    assert pipe.model.cfg.clean_causal is False


def test_hiding_part_of_the_clean_copy_is_a_training_only_regulariser() -> None:
    from dlm.config import RunConfig

    net, x = model(clean_causal=True), data()

    def loss(hidden: float, seed: int = 3) -> torch.Tensor:
        return bd3_loss(net, x, Linear(), MASK, block=4, generator=torch.Generator().manual_seed(seed),
                        clean_ar_weight=1.0, clean_input_mask=hidden).per_sequence

    net.train()  # the model has no dropout: the draws alone differ
    assert torch.equal(loss(0.0), loss(0.0))
    assert not torch.allclose(loss(0.3), loss(0.0))  # the same noise levels and masks, a partly hidden past
    net.eval()
    assert torch.equal(loss(0.3), loss(0.0))  # evaluation reads the clean copy whole
    cfg = RunConfig()
    cfg.train.objective, cfg.diffusion.block_size, cfg.train.ar_input_mask = "bd3", 4, 0.15
    cfg.validate()
    cfg.train.objective, cfg.diffusion.block_size = "mdlm", 0
    with pytest.raises(DlmError, match="MDLM run masks its inputs already"):
        cfg.validate()


def test_the_block_orders_bench_takes_the_bound_apart(bench, tiny_twins: dict, capsys: pytest.CaptureFixture) -> None:
    from dlm.eval.likelihood import block_pattern_nll, exact_block_nelbo

    orders = bench("block_orders")
    net, x = model(clean_causal=True), data()
    args = dict(block=4, device=torch.device("cpu"), dtype=torch.float32, progress=False)
    table = block_pattern_nll(net, x, SPECIAL, **args)
    report = orders.analyse(table, 4, x.shape[1])
    assert report["exact_nelbo"] == pytest.approx(float(exact_block_nelbo(net, x, SPECIAL, **args).mean()))
    assert report["mean_over_orders"] == pytest.approx(report["exact_nelbo"])
    assert report["best_order"]["nll"] <= min(report["left_to_right"], report["right_to_left"])
    assert report["worst_order"]["nll"] >= max(report["left_to_right"], report["right_to_left"])
    assert len(report["patterns"]) == 15 and report["patterns"][-1]["pattern"] == "■■■■"
    # dlm eval --l2r's figure for block runs is that order, from 4 patterns instead of 15
    from dlm.eval.likelihood import block_left_to_right_nll

    l2r = block_left_to_right_nll(net, x, SPECIAL, **args)
    assert l2r["nats_per_token"] == pytest.approx(report["left_to_right"])
    text = orders.markdown({**report, "block_size": 4, "windows": 3, "window_length": 16, "split": "val"}, "char")
    assert text.count("\n| ■") + text.count("\n| □") == 15
    # a run that is not a block model gets one line naming the fix
    assert orders.main(["--ckpt", str(tiny_twins["ar"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dlm train --objective bd3" in err


def test_one_block_read_left_to_right_is_the_mdlm_left_to_right_nll() -> None:
    from dlm.eval.likelihood import block_left_to_right_nll, evaluate_left_to_right

    net, x = model(), data()
    args = dict(device=torch.device("cpu"), dtype=torch.float32, progress=False)
    ours = block_left_to_right_nll(net, x, SPECIAL, block=16, **args)
    theirs = evaluate_left_to_right(net, x, SPECIAL, **args)
    assert ours["nats_per_token"] == pytest.approx(theirs["nats_per_token"], abs=1e-5)
