"""Hub-ready runs: a trained run as a Hugging Face model repository, and back.

    dlm export runs/mdlm --hub exports/mdlm        # config.json, model.safetensors, tokenizer files, README.md
    pipe = dlm.load("exports/mdlm")                # or a Hub repo id: "you/shakespeare-mdlm"

`DiffusionLM` is a torch module with huggingface_hub's PyTorchModelHubMixin, so `save_pretrained`,
`from_pretrained(path_or_repo_id)` and `push_to_hub` work as they do for any Hub model.
`from_pretrained` also reads a training run folder (its newest intact checkpoint) or one checkpoint
folder, with the EMA weights when the checkpoint has them, as `dlm.load` does. An export's
config.json is the run's config (model, data, diffusion, train sections) and model.safetensors the
weights (the EMA average when the run kept one). The tokenizer is written twice: `tokenizer.json`
in Hugging Face's format with `tokenizer_config.json` and `special_tokens_map.json` (character
tokenizers become a WordLevel tokenizer over single characters, so `PreTrainedTokenizerFast`
reads it), and `dlm_tokenizer.json`, which dlm loads exactly. README.md is a model card: data,
objective, geometry, the metrics of a `dlm eval --json` file (named as their source) and the
commands to sample.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from dlm.config import RunConfig
from dlm.errors import DlmError
from dlm.io import atomic_write_json, atomic_write_text
from dlm.model.hf_backbone import build_model
from dlm.run_folder import MANIFEST, clone_state, is_hub_repo_id, load_weights, locate_checkpoint, names_best_of_run
from dlm.tokenizers import Tokenizer, load_tokenizer

WEIGHTS = "model.safetensors"
DLM_TOKENIZER = "dlm_tokenizer.json"


def _mixin():
    try:
        from huggingface_hub import PyTorchModelHubMixin
    except ImportError:
        raise DlmError("Hub export needs huggingface_hub, which is not installed; pip install 'dlm[hf]'") from None
    return PyTorchModelHubMixin


class DiffusionLM(nn.Module, _mixin(), library_name="dlm", license="mit",
                  tags=["dlm", "diffusion-language-model", "masked-diffusion"]):
    """A dlm network (either twin) with the Hub mixin; `config` is the run's config as a dict."""

    def __init__(self, config: dict):
        super().__init__()
        self.run_config = RunConfig.from_dict(config)
        self.model = build_model(self.run_config.model)
        self.tokenizer: Tokenizer | None = None
        self.card: str | None = None
        self.weights = "raw"  # what a run's checkpoint gave: 'ema' or 'raw' (an export holds one set)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        save_directory = Path(save_directory)
        save_file(clone_state(self.model.state_dict()), str(save_directory / WEIGHTS))
        if self.tokenizer is not None:
            write_tokenizer_files(self.tokenizer, save_directory)
        if self.card is not None:
            atomic_write_text(save_directory / "README.md", self.card)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, weights: str = "auto",
                        **kwargs) -> DiffusionLM:
        """An export folder or Hub repo id (the mixin's way), or a training run folder / one checkpoint
        folder read directly. `weights` is for runs: 'auto' (EMA when kept), 'ema' or 'raw'."""
        path = Path(pretrained_model_name_or_path)
        is_run = path.is_dir() and ((path / "checkpoints").is_dir() or (path / MANIFEST).is_file())
        if is_run or names_best_of_run(path):
            return cls._from_run(path, weights)
        is_export = path.is_dir() and (path / WEIGHTS).is_file() and (path / "config.json").is_file()
        if path.exists() and not is_export:
            raise DlmError(f"{path} is neither a training run (config.json, checkpoints/) nor an export "
                           f"(config.json, {WEIGHTS}); pass a run's --out folder, or export one with "
                           "dlm export RUN --hub OUT")
        if not is_export and not is_hub_repo_id(path):
            raise DlmError(f"{path} not found; pass a run folder, an export (dlm export RUN --hub OUT) or a Hub "
                           "repository id (user/name)")
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        offline = not hub_host_resolves()
        if offline:  # the local Hugging Face cache only, at once
            kwargs["local_files_only"] = True
        try:
            with quiet_hub_logs():
                return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:  # offline, no such repo, no access
            if offline:
                raise DlmError(f"{path} is no folder here and not in the local Hugging Face cache, and the Hub "
                               "cannot be reached (no network); check the path, or connect and retry") from None
            raise DlmError(f"{path} is no folder here and could not be fetched from the Hub ({type(e).__name__}); "
                           "check the path, or the network and the repository id") from None

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, map_location: str = "cpu", strict: bool = True,
                         **model_kwargs):
        folder = Path(model_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                            force_download=force_download, local_files_only=local_files_only))
        module = cls(**model_kwargs)
        state = load_file(str(folder / WEIGHTS), device=map_location)
        missing, unexpected = module.model.load_state_dict(state, strict=False)
        if [k for k in missing if not k.startswith("rope_")] or unexpected:
            raise DlmError(f"{folder / WEIGHTS} does not match its config.json (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]})")
        if (folder / DLM_TOKENIZER).is_file():
            module.tokenizer = load_tokenizer(folder / DLM_TOKENIZER)
        return module

    @classmethod
    def _from_run(cls, path: Path, weights: str = "auto") -> DiffusionLM:
        """A training run folder (its newest intact checkpoint) or one checkpoint folder, with the EMA
        weights when the checkpoint has them and weights is 'auto' or 'ema' (what `dlm.load` loads)."""
        if weights not in ("auto", "ema", "raw"):
            raise DlmError(f"weights={weights!r} is not one of auto, ema, raw")
        run, ckpt = locate_checkpoint(path)
        module = cls(config=run.read_config().to_dict())
        has_ema = (ckpt / "ema.safetensors").is_file()
        if weights == "ema" and not has_ema:
            raise DlmError(f"checkpoint {ckpt} has no EMA weights (trained with ema_decay=0); pass weights='raw'")
        module.weights = "ema" if has_ema and weights != "raw" else "raw"
        load_weights(module.model, ckpt, "ema.safetensors" if module.weights == "ema" else WEIGHTS)
        module.tokenizer = run.read_tokenizer()
        return module


def hub_host_resolves() -> bool:
    """False when the Hub's host name does not resolve, as on a machine without a network: huggingface_hub
    would then retry each file five times over about 23 s before reading its cache. True when unsure: under
    HF_HUB_OFFLINE (huggingface_hub answers at once itself) or a proxy (which resolves names for us)."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    proxies = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    if constants.HF_HUB_OFFLINE or any(os.environ.get(name) for name in proxies):
        return True
    host = urlparse(constants.ENDPOINT).hostname
    if not host:
        return True
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def quiet_hub_logs():
    """huggingface_hub's own warnings off while it fetches: offline, it logs each retry ("Retrying in 1s")
    before giving up, and dlm's one-line error says what failed."""
    from huggingface_hub.utils import logging as hub_logging

    logger = hub_logging.get_logger("huggingface_hub")
    level = logger.level
    logger.setLevel(hub_logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def hf_tokenizer_json(tokenizer: Tokenizer) -> dict:
    """The tokenizer in Hugging Face `tokenizers` format."""
    if tokenizer.kind == "char":
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as RustTokenizer

        vocab = {token: i for i, token in enumerate(tokenizer.itos)}
        rust = RustTokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
        rust.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
        rust.decoder = decoders.Fuse()
        rust.add_special_tokens(list(tokenizer.itos[len(tokenizer.chars):]))
        return json.loads(rust.to_str())
    if tokenizer.kind == "bpe":
        return json.loads(tokenizer.hf.to_str())
    return json.loads(tokenizer.rust.to_str())


def write_tokenizer_files(tokenizer: Tokenizer, folder: Path) -> None:
    atomic_write_json(folder / "tokenizer.json", hf_tokenizer_json(tokenizer))
    names = {"mask_token": "[MASK]", "pad_token": "[PAD]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
    if tokenizer.kind == "hf":
        names = {role: tokenizer.roles[f"[{role.split('_')[0].upper()}]"] for role in names}
    special = {**names, "additional_special_tokens": tokenizer.added_tokens}
    atomic_write_json(folder / "special_tokens_map.json", special)
    atomic_write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **special,
                                                         "clean_up_tokenization_spaces": False})
    tokenizer.save(folder / DLM_TOKENIZER)


def model_card(cfg: RunConfig, tokenizer: Tokenizer, params: int, eval_result: dict | None, eval_source: str | None,
               name: str) -> str:
    if cfg.model.causal:
        objective = "autoregressive twin (causal, exact next-token NLL)"
    elif cfg.train.objective == "bd3":
        objective = (f"block diffusion (BD3-LM NELBO, blocks of {cfg.diffusion.block_size} tokens, "
                     f"{cfg.diffusion.schedule} schedule)")
    else:
        objective = (f"masked diffusion (MDLM NELBO, {cfg.diffusion.schedule} schedule, "
                     f"{cfg.diffusion.weighting} weighting)")
    unit = "character" if tokenizer.kind == "char" else "token"
    network = cfg.model.backbone or f"{cfg.model.n_layer} layers × {cfg.model.n_head} heads × {cfg.model.d_model}"
    lines = ["---", "library_name: dlm", "license: mit", "pipeline_tag: text-generation",
             "tags: [dlm, diffusion-language-model, masked-diffusion]", "---", "", f"# {name}", "",
             f"A {'diffusion' if not cfg.model.causal else 'causal'} language model trained with dlm "
             "(masked diffusion language models and their autoregressive twins).", "",
             "| | |", "|---|---|", f"| objective | {objective} |",
             f"| network | {network}, context {cfg.model.block_size}, {params / 1e6:.2f}M parameters |",
             f"| tokenizer | {tokenizer.kind}, {tokenizer.vocab_size} ids |",
             f"| data | `{cfg.data.source}` (validation: the last {cfg.data.val_fraction:.0%}) |",
             f"| preset | `{cfg.preset or '—'}` |", ""]
    if eval_result:
        kind = "exact NLL" if eval_result.get("kind") == "exact_nll" else "NELBO (an upper bound on the NLL)"
        error = ("summed exactly over mask patterns" if eval_result.get("estimator") == "exact_mask_patterns"
                 else f"Monte-Carlo s.e. {eval_result.get('mc_standard_error', 0):.4f}")
        lines += ["## Metrics", "", f"From `{eval_source}` (`dlm eval --json`), on the {eval_result.get('split')} "
                  f"split, {eval_result.get('windows')} windows × {eval_result.get('window_length')} {unit}s:", "",
                  f"* {kind}: **{eval_result['nats_per_token']:.4f} nats/{unit}** "
                  f"({eval_result['bits_per_token']:.4f} bits/{unit}; {error})"]
        if "left_to_right" in eval_result:
            lines.append(f"* left-to-right NLL: {eval_result['left_to_right']['nats_per_token']:.4f} nats/{unit}")
        gen = eval_result.get("generation")
        if gen:
            judged = f", gen-PPL {gen['gen_ppl']:.2f} {gen.get('gen_ppl_unit', '')}" if "gen_ppl" in gen else ""
            lines.append(f"* {gen['samples']} samples of {gen['length']} {unit}s ({gen['sampler']}, {gen['steps']} "
                         f"steps): unigram entropy {gen['unigram_entropy']:.3f} nats, self-BLEU "
                         f"{gen['self_bleu']:.3f}{judged}")
        lines.append("")
    else:
        lines += ["## Metrics", "", "Not measured for this export (pass `--eval FILE.json` from `dlm eval --json`).",
                  ""]
    lines += ["## Use", "", "```bash", "pip install dlm", f"dlm sample --ckpt {name} --length 256 --steps 256",
              "```", "", "```python", "import dlm", f'pipe = dlm.load("{name}")',
              'print(pipe.generate("ROMEO:", length=128, steps=128)[0])', "```", ""]
    return "\n".join(lines)


def export_run(run_path: str | Path, out: str | Path, eval_json: str | Path | None = None,
               weights: str = "auto") -> Path:
    """Write the Hub files of a run's newest checkpoint (EMA weights unless `weights='raw'`)."""
    run, ckpt = locate_checkpoint(run_path)
    cfg, tokenizer = run.read_config(), run.read_tokenizer()
    module = DiffusionLM(config=cfg.to_dict())
    use_ema = weights != "raw" and (ckpt / "ema.safetensors").is_file()
    load_weights(module.model, ckpt, "ema.safetensors" if use_ema else WEIGHTS)
    module.tokenizer = tokenizer
    result, source = None, None
    candidates = [Path(eval_json)] if eval_json else [run.path / "eval.json"]
    for path in candidates:
        if path.is_file():
            data = json.loads(path.read_text())
            result, source = (data[-1] if isinstance(data, list) else data), str(path)
    if eval_json and result is None:
        raise DlmError(f"--eval {eval_json} not found; pass a file written by dlm eval --json")
    params = sum(p.numel() for p in module.model.parameters())
    out = Path(out)
    module.card = model_card(cfg, tokenizer, params, result, source, out.name)
    module.save_pretrained(out)
    return out


def load_export(path_or_repo: str | Path, device: torch.device) -> tuple[DiffusionLM, RunConfig, Tokenizer]:
    module = DiffusionLM.from_pretrained(str(path_or_repo), map_location=str(device))
    if module.tokenizer is None:
        raise DlmError(f"{path_or_repo} has no {DLM_TOKENIZER}; export the run again with dlm export RUN --hub OUT")
    return module, module.run_config, module.tokenizer
