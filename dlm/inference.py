"""Inference on a trained run: `load(run_dir)` → a `Pipeline` (model, tokenizer, config) that turns
text into ids, samples with either twin (generate, stream, infill, edit) and turns ids back into text.

This is what `dlm.load` returns, and what evaluation, chat and the server receive. It reads the run
through dlm.run_folder and samples through dlm.sampling; it knows nothing of training.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm.config import RunConfig
from dlm.data.chat import ChatTemplate, check_conversation
from dlm.errors import DlmError
from dlm.model.hf_backbone import build_model
from dlm.run_folder import is_hub_repo_id, load_weights, locate_checkpoint
from dlm.runtime import autocast, pick_device, pick_inference_dtype
from dlm.sampling.autoregressive import ARDecoder
from dlm.sampling.canvas import Canvas, build_canvas
from dlm.sampling.config import AR_TEMPERATURE, SamplerConfig
from dlm.sampling.denoiser import Denoiser, DenoiseStep, GenerationResult
from dlm.sampling.self_speculative import SelfSpeculativeDecoder
from dlm.special_ids import SpecialIds
from dlm.tokenizers import Tokenizer

# The default decoding of block-diffusion runs that cannot decode self-speculatively (or whose canvas
# is not a continuation): the most real words of the block samplers measured in docs/block-diffusion.md
# (blocks of 4: 91 % real words against 78 % for random order, one token a step).
BD3_SAMPLER = {"sampler": "confidence", "threshold": 0.9}
TEMPLATE_MASK = re.compile(r"\[MASK(?:\*(\d+))?\]")


@dataclass
class Pipeline:
    model: torch.nn.Module
    """dlm's Transformer, or a `transformers` masked LM wrapped the same way (model.backbone)."""
    tokenizer: Tokenizer
    config: RunConfig
    checkpoint: Path
    device: torch.device
    dtype: torch.dtype
    weights: str = "raw"
    """Which weights were loaded: 'ema' or 'raw'."""

    @property
    def is_autoregressive(self) -> bool:
        return self.model.cfg.causal

    @property
    def objective(self) -> str:
        """'ar', 'bd3' (block diffusion) or 'mdlm'."""
        return "ar" if self.is_autoregressive else "bd3" if self.diffusion_block else "mdlm"

    @property
    def diffusion_block(self) -> int:
        """Tokens per block of a block-diffusion (bd3) run; 0 for MDLM and AR runs."""
        return self.config.diffusion.block_size if self.config.train.objective == "bd3" else 0

    @property
    def special_ids(self) -> SpecialIds:
        return self.tokenizer.special

    def encode_prompt(self, prompt: str, length: int) -> list[int]:
        ids = self.tokenizer.encode(prompt) if prompt else []
        # (The AR twin reads a [BOS] first but never reads its last token: the same budget.)
        self._check_fits(len(ids) + length, f"prompt ({len(ids)} tokens) plus length {length}",
                         "shorten the prompt or lower --length")
        return ids

    def _check_fits(self, n_tokens: int, what: str, fix: str) -> None:
        block = self.model.cfg.block_size
        if n_tokens > block:
            raise DlmError(f"{what} exceeds the model's context of {block} tokens; {fix}")

    def parse_template(self, template: str) -> list[int | None]:
        """'To be, [MASK*40] the question' → ids with None where a [MASK] goes ([MASK] alone is one)."""
        row: list[int | None] = []
        pos = 0
        for match in TEMPLATE_MASK.finditer(template):
            if match.start() > pos:
                row.extend(self.tokenizer.encode(template[pos:match.start()]))
            count = int(match.group(1) or 1)
            if count < 1:
                raise DlmError(f"{match.group(0)} in the template asks for no masks; write [MASK*N] with N ≥ 1")
            row.extend([None] * count)
            pos = match.end()
        if pos < len(template):
            row.extend(self.tokenizer.encode(template[pos:]))
        if None not in row:
            raise DlmError("the template has no [MASK] to fill; mark gaps with [MASK] or [MASK*N]")
        self._check_fits(len(row), f"template ({len(row)} tokens)", "shorten it")
        return row

    @property
    def drafts_itself(self) -> bool:
        """A block model whose clean copy learnt next-token prediction (the CPU preset's recipe): it can
        decode self-speculatively (dlm.sampling.self_speculative), and does so by default."""
        cfg = self.config
        return bool(self.diffusion_block and cfg.model.clean_causal and cfg.diffusion.clean_ar_weight
                    and not cfg.model.backbone and not getattr(self.model.cfg, "time_conditioning", False))

    def speculates(self, options: dict, continuation: bool = True) -> bool:
        """Whether sampling with these options decodes self-speculatively: when asked to, or by default for
        a model that drafts itself, continuing prompts, with no order, threshold or option it cannot honour."""
        if options.get("speculative") is not None:
            return bool(options["speculative"])
        if options.get("sampler") is not None or options.get("threshold") is not None:
            return False
        others = any(options.get(k) for k in ("remask", "edit_threshold", "guidance_scale")) \
            or (options.get("repetition_penalty") or 1.0) != 1.0
        return continuation and self.drafts_itself and not others

    def sampler_config(self, **options) -> SamplerConfig:
        """The settings that continuing a prompt with these options runs, this model's defaults filled in."""
        return self._config(dict(options), continuation=True)

    def _config(self, options: dict, continuation: bool = False) -> SamplerConfig:
        """`continuation`: the canvas is prompts followed by masks that fit the context (self-speculative
        decoding can then be the default)."""
        options = {k: v for k, v in options.items() if v is not None}  # None: the default for this model
        if self.is_autoregressive:
            options.setdefault("temperature", AR_TEMPERATURE)
        elif self.diffusion_block:  # block diffusion decodes as it was trained: blocks, exact prefix cache
            # measured, docs/block-diffusion.md: self-speculative decoding where the model can (within
            # reach of the twin's samples, faster than threshold decoding at batch 1), else threshold 0.9
            if self.speculates(options, continuation):
                options["speculative"] = True  # the clean copy's next-token distribution, as the twin samples
                options.setdefault("temperature", AR_TEMPERATURE)
            elif "sampler" not in options and "threshold" not in options:
                options.update(BD3_SAMPLER)
            options.setdefault("block_length", self.diffusion_block)
            if options["block_length"]:
                options.setdefault("block_context", "prefix")
                options.setdefault("kv_cache", not self.config.model.backbone)  # HF backbones: no dlm cache
                options.setdefault("aligned_blocks", True)
        config = SamplerConfig.from_kwargs(**options)
        if not self.is_autoregressive and config.edit_threshold and not getattr(self.config.diffusion, "edit_prob", 0):
            warnings.warn("editing (edit_threshold > 0) needs a model trained with diffusion.edit_prob > 0; this "
                          "one was not, so its predictions at visible positions are untrained", stacklevel=3)
        return config

    def _prepare(self, prompt: str | list[str], length: int, num_samples: int, template: str | None,
                 options: dict) -> tuple[list[list[int | None]], SamplerConfig]:
        rows = self._canvas_rows(prompt, length, num_samples, template)
        options.setdefault("steps", sum(token is None for token in rows[0]))  # default: one step per token
        return rows, self._config(options, continuation=template is None)

    def _canvas_rows(self, prompt: str | list[str], length: int, num_samples: int,
                     template: str | None) -> list[list[int | None]]:
        if num_samples < 1 or length < 1:
            raise DlmError("--length and --num-samples must be at least 1")
        if template is not None:
            if self.is_autoregressive:
                raise DlmError("templates (infilling) need a diffusion model; this run is autoregressive")
            rows = [self.parse_template(template)]
        else:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            rows = [[*self.encode_prompt(p, length), *([None] * length)] for p in prompts]
        return [row for row in rows for _ in range(num_samples)]

    def decoder(self, prompt: str | list[str], length: int, num_samples: int = 1, template: str | None = None,
                seeds: list[int] | None = None, **options) -> Denoiser | ARDecoder | SelfSpeculativeDecoder:
        """The sampler for these prompts, not yet run (`steps()` runs it): for servers and watchers.
        `seeds`, one per row, replaces seed + row (requests of different callers in one batch)."""
        rows, config = self._prepare(prompt, length, num_samples, template, options)
        self.model.eval()
        if config.speculative:
            self._check_speculative(template)
        if self.is_autoregressive:
            prompts = [list(r[:len(r) - length]) for r in rows]
            return ARDecoder(self.model, prompts, length, config, self.special_ids, self.device, seeds)
        return self._canvas_decoder(build_canvas(rows, self.special_ids, self.device), config, seeds)

    def _canvas_decoder(self, canvas: Canvas, config: SamplerConfig,
                        seeds: list[int] | None) -> Denoiser | SelfSpeculativeDecoder:
        if config.speculative:
            block = config.block_length or self.diffusion_block
            return SelfSpeculativeDecoder(self.model, canvas, config, self.special_ids, block, seeds)
        return Denoiser(self.model, canvas, config, self.special_ids, seeds)

    def _check_speculative(self, template: str | None) -> None:
        if not self.drafts_itself:
            raise DlmError("speculative decoding needs a block model whose clean copy learnt next-token "
                           "prediction (train.objective=bd3 model.clean_causal=true diffusion.clean_ar_weight>0, "
                           "the CPU preset's recipe; dlm's own network, untimed); this run is not one")
        if template is not None:
            raise DlmError("speculative decoding continues prompts; fill templates without --speculative")

    @torch.no_grad()
    def sample(self, prompt: str | list[str] = "", length: int = 256, num_samples: int = 1,
               template: str | None = None, on_step: Callable[[DenoiseStep], None] | None = None,
               **options) -> GenerationResult:
        """Sample continuations of each prompt (or fill a template's [MASK]s); `options` are
        `SamplerConfig` fields (sampler, steps, temperature, top_k, top_p, block_length, ...).
        Row i uses seed + i. `on_step` sees the canvas after every step. Returns ids with everything
        the sampler knows (forward passes, ...)."""
        if self.diffusion_block and template is None and self._beyond_context(prompt, length):
            options["speculative"] = self.speculates(options)  # decided once: every window decodes alike
            return self._sample_sliding(prompt, length, num_samples, on_step, options)
        groups = self._block_groups(prompt, template, num_samples, options)
        if groups is not None:  # block diffusion, prompts whose lengths differ modulo the block size
            parts = [self.sample([prompt[i] for i in members], length, num_samples, on_step=on_step,
                                 seeds=seeds, **options) for members, seeds in groups]
            return merge_results(parts, [m for members, _ in groups for m in members], num_samples)
        decoder = self.decoder(prompt, length, num_samples, template, **options)
        with autocast(self.device, self.dtype):
            if on_step is None:  # nothing watches: no frame per step
                return decoder.run()
            for state in decoder.steps():
                on_step(state)
        return decoder.result()

    def _beyond_context(self, prompt: str | list[str], length: int) -> bool:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        longest = max(len(self.tokenizer.encode(p)) if p else 0 for p in prompts)
        return longest + length > self.model.cfg.block_size

    def _sample_sliding(self, prompt: str | list[str], length: int, num_samples: int,
                        on_step: Callable[[DenoiseStep], None] | None, options: dict) -> GenerationResult:
        """Block diffusion past the context: decode a window, then slide it by half a context (the
        last half, a whole number of blocks, becomes the next window's prompt, encoded again) until
        `length` tokens are written or every row has ended at [EOS]. Row i of round r draws from
        seed + i + r·rows. Steps are shared among rounds in proportion to the tokens each writes.
        Blocks as long as the context keep half of it all the same: the prompt then ends inside the block."""
        context = self.model.cfg.block_size
        block = options.get("block_length") or self.diffusion_block
        keep = context // 2 // block * block or context // 2
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if any(len(self.tokenizer.encode(p)) >= context if p else False for p in prompts):
            raise DlmError(f"a prompt fills the model's context of {context} tokens; shorten it")
        options = dict(options)
        seed, steps = options.pop("seed", 0), options.pop("steps", length)
        first = context - max(len(self.tokenizer.encode(p)) if p else 0 for p in prompts)
        result = self.sample(prompts, min(first, length), num_samples, on_step=on_step, seed=seed,
                             steps=max(1, round(steps * min(first, length) / length)), **options)
        rows = result.rows()
        written = (result.generated & result.valid).sum(1).tolist()  # tokens each row wrote
        generated_from = [len(r) - w for r, w in zip(rows, written, strict=True)]
        passes, step_count, done_round = result.forward_passes, result.steps, min(first, length)
        stops = bool(options.get("stop_at_eos"))
        ended = [stops and self._ended(r, w) for r, w in zip(rows, written, strict=True)]
        config = self._config({**options, "steps": 1}, continuation=True)
        rounds = 1
        while done_round < length and not all(ended):
            n = min(context - keep, length - done_round)
            live = [i for i, e in enumerate(ended) if not e]
            canvas = build_canvas([rows[i][-keep:] + [None] * n for i in live], self.special_ids, self.device)
            config.steps = max(1, round(steps * n / length))
            seeds = [seed + i + rounds * len(rows) for i in live]
            decoder = self._canvas_decoder(canvas, config, seeds)
            with autocast(self.device, self.dtype):
                for state in decoder.steps():
                    if on_step is not None:
                        on_step(state)
            part = decoder.result()
            for i, tail in zip(live, part.rows(), strict=True):
                new = tail[keep:]
                rows[i] = rows[i] + new
                ended[i] = stops and (self._ended(new, len(new)) or len(new) < n)
            passes, step_count, done_round, rounds = passes + part.forward_passes, step_count + part.steps, \
                done_round + n, rounds + 1
        width = max(len(r) for r in rows)
        pad = self.special_ids.pad
        tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        generated = torch.zeros_like(valid)
        for i, row in enumerate(rows):
            tokens[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            valid[i, width - len(row):] = True
            generated[i, width - len(row) + generated_from[i]:] = True
        return GenerationResult(tokens.to(self.device), valid.to(self.device), generated.to(self.device), passes,
                                step_count, pad)

    def _ended(self, row: list[int], written: int) -> bool:
        """Whether the last `written` ids of a row hold an [EOS] (a row stopped at it)."""
        return written > 0 and self.tokenizer.eos_id in row[len(row) - written:]

    def _block_groups(self, prompt: str | list[str], template: str | None, num_samples: int,
                      options: dict) -> list[tuple[list[int], list[int]]] | None:
        """Aligned blocks need one prompt length modulo the block size per batch: for a list of
        prompts that differ, (prompt indices, row seeds) of each group; None when one batch does."""
        block = options.get("block_length", self.diffusion_block)
        if not self.diffusion_block or not block or template is not None or isinstance(prompt, str) \
                or "seeds" in options or not options.get("aligned_blocks", True) or self.speculates(options):
            return None
        offsets = [len(self.tokenizer.encode(p) if p else []) % block for p in prompt]
        if len(set(offsets)) < 2:
            return None
        seed = options.pop("seed", 0)
        groups = []
        for offset in dict.fromkeys(offsets):
            members = [i for i, o in enumerate(offsets) if o == offset]
            seeds = [seed + i * num_samples + k for i in members for k in range(num_samples)]
            groups.append((members, seeds))
        return groups

    def stream(self, prompt: str | list[str] = "", length: int = 256, num_samples: int = 1,
               template: str | None = None, **options) -> Iterator[DenoiseStep]:
        """Like `sample`, yielding the canvas after every step (which positions were committed,
        remasked or edited), for animations and servers."""
        decoder = self.decoder(prompt, length, num_samples, template, **options)
        with torch.no_grad(), autocast(self.device, self.dtype):
            yield from decoder.steps()

    def generate_ids(self, prompt: str | list[str] = "", length: int = 256, **kwargs) -> torch.Tensor:
        """(B, T) ids: each prompt and its continuation (left-padded with [PAD] when prompts differ in
        length; [PAD] after an [EOS] that ended a row)."""
        return self.sample(prompt, length, **kwargs).tokens

    def generate(self, prompt: str | list[str] = "", **kwargs) -> list[str]:
        """Sample `num_samples` continuations of each prompt; each string includes its prompt."""
        return self.decode(self.sample(prompt, **kwargs))

    def infill(self, template: str, **kwargs) -> list[str]:
        """Fill the [MASK] / [MASK*N] gaps of `template`; the rest of it is kept verbatim."""
        return self.decode(self.sample(template=template, **kwargs))

    @torch.no_grad()
    def edit(self, text: str, rounds: int = 4, threshold: float = 0.1, **options) -> str:
        """Let an editing-trained model (diffusion.edit_prob > 0) fix `text`: up to `rounds` passes
        re-decide every token whose probability is below `threshold`."""
        if self.is_autoregressive:
            raise DlmError("editing needs a diffusion model; this run is autoregressive")
        ids = self.tokenizer.encode(text)
        if not ids:
            raise DlmError("nothing to edit: the text is empty")
        self._check_fits(len(ids), f"text ({len(ids)} tokens)", "edit a shorter piece")
        config = self._config({"steps": 1, "edit_threshold": threshold, "edit_rounds": rounds, **options})
        canvas = build_canvas([list(ids)], self.special_ids, self.device, editable=[[True] * len(ids)])
        self.model.eval()
        decoder = Denoiser(self.model, canvas, config, self.special_ids)
        with autocast(self.device, self.dtype):
            for _ in decoder.steps():
                pass
        return self.decode(decoder.result())[0]

    def decode(self, result: GenerationResult) -> list[str]:
        return [self.tokenizer.decode(row) for row in result.rows()]

    # --- chat -----------------------------------------------------------------------------------

    def chat_decoder(self, messages: list[dict], max_new_tokens: int | None = None,
                     **options) -> tuple[Denoiser | ARDecoder, int]:
        """The sampler for the next assistant turn, not yet run, and the end-of-turn id."""
        template = ChatTemplate(self.tokenizer)
        messages = check_conversation({"messages": messages}, "messages")
        block = self.model.cfg.block_size
        if max_new_tokens is not None and not 1 <= max_new_tokens < block:
            raise DlmError(f"max_new_tokens={max_new_tokens} must be between 1 and the context ({block}) "
                           "minus the prompt")
        # The oldest turns give way to the reply's room; by default the reply gets the rest of the
        # context (at least a quarter), the canvas the model was fine-tuned on.
        prompt = template.prompt(messages, max_len=block - (max_new_tokens or block // 4))
        length = max_new_tokens or block - len(prompt)
        special = SpecialIds(self.tokenizer.mask_id, self.tokenizer.pad_id, self.tokenizer.bos_id, template.end_id)
        options.setdefault("steps", length)
        options.setdefault("stop_at_eos", True)  # the reply ends at its end-of-turn token
        # Random order, as measured for chat (docs/chat.md): confidence order commits the end tokens
        # first, so block models too reply in random order unless told otherwise.
        options.setdefault("sampler", "random")
        # Replies decode with the free-text default (random order at 0.8): bench/chat.py measured
        # that confidence order, on a model fine-tuned with end-token fill, commits the end token
        # first and answers nothing (docs/chat.md).
        config = self._config(options)
        self.model.eval()
        if self.is_autoregressive:
            return ARDecoder(self.model, [prompt], length, config, special, self.device), template.end_id
        canvas = build_canvas([[*prompt, *([None] * length)]], special, self.device)
        return Denoiser(self.model, canvas, config, special), template.end_id

    def reply_text(self, tokens: torch.Tensor, generated: torch.Tensor, end_id: int) -> str:
        """The generated text of one row up to its first end-of-turn token ([PAD]/[MASK] left out)."""
        ids = [t for t, g in zip(tokens.tolist(), generated.tolist(), strict=True) if g]
        if end_id in ids:
            ids = ids[:ids.index(end_id)]
        skip = set(self.tokenizer.reserved_ids)
        return self.tokenizer.decode([i for i in ids if i not in skip])

    @torch.no_grad()
    def chat(self, messages: list[dict], max_new_tokens: int | None = None, **options) -> str:
        """The assistant's next turn after `messages` ([{"role": "system"|"user"|"assistant",
        "content": ...}, ...]) from a chat fine-tuned run. `options` are SamplerConfig fields; by
        default one step per token of room (`max_new_tokens`, default: the rest of the context) and
        a stop at the end-of-turn token, so the reply's length is the model's choice."""
        decoder, end_id = self.chat_decoder(messages, max_new_tokens, **options)
        with autocast(self.device, self.dtype):
            for _ in decoder.steps():
                pass
        result = decoder.result()
        return self.reply_text(result.tokens[0], result.generated[0], end_id)

    def chat_stream(self, messages: list[dict], max_new_tokens: int | None = None,
                    **options) -> Iterator[tuple[DenoiseStep, str]]:
        """Like `chat`, yielding (step, the reply so far with [MASK]s shown as '_') after every step."""
        decoder, end_id = self.chat_decoder(messages, max_new_tokens, **options)
        generated = decoder.result().generated[0]
        mask = self.tokenizer.mask_id
        with torch.no_grad(), autocast(self.device, self.dtype):
            for state in decoder.steps():
                row = state.tokens[0]
                if self.is_autoregressive:  # the decoder's canvas has a [BOS] column first
                    row = row[1:]
                ids = [t for t, g in zip(row.tolist(), generated.tolist(), strict=True) if g]
                if end_id in ids:
                    ids = ids[:ids.index(end_id)]
                text = "".join("_" if i == mask else self.tokenizer.decode([i]) for i in ids
                               if i == mask or i not in self.tokenizer.reserved_ids)
                yield state, text


def merge_results(parts: list[GenerationResult], order: list[int], num_samples: int) -> GenerationResult:
    """One result from batches sampled apart: rows back in prompt order (`order`, the prompt index of
    each part's prompts in turn), left-padded to one width."""
    width = max(p.tokens.shape[1] for p in parts)

    def left_pad(x: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

    tokens = torch.cat([left_pad(p.tokens, p.pad_id) for p in parts])
    valid = torch.cat([left_pad(p.valid, False) for p in parts])
    generated = torch.cat([left_pad(p.generated, False) for p in parts])
    rows = [i * num_samples + k for i in order for k in range(num_samples)]  # where each merged row belongs
    back = torch.empty(len(rows), dtype=torch.long)
    back[torch.tensor(rows)] = torch.arange(len(rows))
    return GenerationResult(tokens[back], valid[back], generated[back], sum(p.forward_passes for p in parts),
                            sum(p.steps for p in parts), parts[0].pad_id)


def is_hub_export(path: str | Path) -> bool:
    """A folder of Hub files (config.json + model.safetensors, no checkpoints), or a repo id like user/name."""
    path = Path(path)
    if path.is_dir():
        return ((path / "model.safetensors").is_file() and (path / "config.json").is_file()
                and not (path / "manifest.json").is_file() and not (path / "checkpoints").is_dir())
    return is_hub_repo_id(path)


def load(path: str | Path, device: str = "auto", dtype: str = "auto", weights: str = "auto") -> Pipeline:
    """Load a training run folder (its newest intact checkpoint), one checkpoint folder, an export of
    a run (dlm export --hub), or a Hugging Face Hub repository id holding one.

    weights: 'ema' (the averaged weights), 'raw', or 'auto' (EMA when the checkpoint has it).
    """
    if weights not in ("auto", "ema", "raw"):
        raise DlmError(f"weights={weights!r} is not one of auto, ema, raw")
    torch_device = pick_device(device)
    if is_hub_export(path):  # an export (dlm export --hub) or a Hub repository id
        from dlm.hub import load_export

        module, config, tokenizer = load_export(path, torch_device)
        model, ckpt, use_ema = module.model.to(torch_device), Path(path), False
    else:
        run, ckpt = locate_checkpoint(path)
        config = run.read_config()
        tokenizer = run.read_tokenizer()
        model = build_model(config.model).to(torch_device)
        has_ema = (ckpt / "ema.safetensors").is_file()
        if weights == "ema" and not has_ema:
            raise DlmError(f"checkpoint {ckpt} has no EMA weights (trained with ema_decay=0); use --weights raw")
        use_ema = has_ema and weights != "raw"
        load_weights(model, ckpt, "ema.safetensors" if use_ema else "model.safetensors")
    model.eval()
    # 'auto': bf16 on CUDA, with the logits computed in fp32 so sampling probabilities keep full
    # precision; fp32 on a CPU, faster there for the few rows of a sampler's pass (pick_inference_dtype).
    # dtype='bf16' runs the network in bf16 anywhere it can.
    torch_dtype = pick_inference_dtype(dtype, torch_device)
    model.fp32_logits = True
    return Pipeline(model, tokenizer, config, ckpt, torch_device, torch_dtype, "ema" if use_ema else "raw")
