"""dlm models in EleutherAI's lm-evaluation-harness (`pip install 'dlm[lmeval]'`).

`DlmLM` is an lm-eval model class for any dlm run or Hub export — MDLM, block diffusion, the AR twin,
adapted pretrained models — registered as `dlm`, so all three entry points work:

    lm_eval.simple_evaluate(model=DlmLM("runs/mdlm", mc_samples=64), tasks=[...])
    python -m dlm.eval.lm_harness run --model dlm --model_args pretrained=runs/mdlm,mc_samples=64 --tasks ...
    dlm eval --ckpt runs/mdlm --tasks NAMES [--include-path DIR] [--limit N] [--num-fewshot K] [--json FILE]

The second is lm-eval's own command line (`lm_eval ...`) with `dlm` registered: lm-eval finds model
classes only in modules it imported, so `python -m dlm.eval.lm_harness` imports this one first.

What each request type means here:

* `loglikelihood(context, continuation)`: log p(continuation | context). For the AR twin it is
  exact. For a diffusion run it is the negative of the Monte-Carlo NELBO of the continuation with
  the context visible and never masked — a lower bound on the log-likelihood — averaged over
  `mc_samples` noise draws (stratified noise levels, the seed fixed per request, so a request's
  score does not depend on its batch or order); its standard error is kept per request
  (`DlmLM.standard_errors`) and summarised in the results. `is_greedy` is exact for AR runs and for
  one-token continuations of diffusion runs (the token is the argmax with only it masked); a
  diffusion run has no single greedy decoding of a longer continuation, so it is False there.
* `loglikelihood_rolling(text)`: the document cut into consecutive windows of the model's context,
  each scored as `dlm eval` scores its windows (the exact NLL after [BOS] for AR runs, the NELBO
  otherwise): on the same text the two give the same figure.
* `generate_until(context, gen_kwargs)`: dlm's sampler (every sampler option is a model argument,
  e.g. `steps=64,sampler=confidence,temperature=0`), at most `max_gen_toks` tokens (default
  `max_gen_toks`), cut at the first stop sequence or [EOS]. A context longer than the model's
  window keeps its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import subprocess
import time
import warnings
import zlib
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from dlm.errors import DlmError
from dlm.objectives.cross_entropy import token_cross_entropy

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the extra is not installed
    raise DlmError("lm-evaluation-harness is not installed; pip install 'dlm[lmeval]'") from None

def _sampler_fields() -> tuple[str, ...]:
    from dlm.sampling.config import SamplerConfig

    return tuple(f.name for f in dataclasses.fields(SamplerConfig) if f.name != "seed")


def _number(value):
    """A model_args value as lm-eval passes it (a string from the command line) → int/float/bool."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


@register_model("dlm")
class DlmLM(LM):
    """lm-eval's model interface over a dlm run (see the module docstring)."""

    def __init__(self, pretrained: str, mc_samples: int = 32, seed: int = 0, batch_size: int | str = 32,
                 device: str = "auto", dtype: str = "auto", weights: str = "auto", max_gen_toks: int = 64,
                 progress: bool = True, max_batch_size: int | None = None, **sampler_options) -> None:
        """`batch_size`: rows per forward pass (a diffusion request's noise draws go together);
        `max_batch_size` is lm-eval's command-line setting, not used."""
        super().__init__()
        from dlm.inference import load

        unknown = sorted(set(sampler_options) - set(_sampler_fields()))
        if unknown:
            raise DlmError(f"unknown model argument(s) {', '.join(unknown)}; dlm takes pretrained, mc_samples, seed, "
                           f"batch_size, device, dtype, weights, max_gen_toks and the sampler's "
                           f"{', '.join(_sampler_fields())}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line says cuda:0 unless told otherwise; it too falls back to the CPU
            warnings.warn(f"device {device} asked for, but there is no CUDA device; running on the CPU", stacklevel=2)
            device = "auto"
        self.pipe = load(str(pretrained), device="cuda" if str(device).startswith("cuda") else device, dtype=dtype,
                         weights=weights)
        self.mc_samples, self.seed = int(mc_samples), int(seed)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 32
        self.max_gen_toks, self.progress = int(max_gen_toks), bool(_number(progress))
        self.sampler_options = {k: _number(v) for k, v in sampler_options.items()}
        if self.mc_samples < 2 and not self.pipe.is_autoregressive:
            raise DlmError(f"mc_samples={self.mc_samples}: a diffusion run's estimate needs at least 2 samples "
                           "(for its standard error)")
        self.standard_errors: list[float] = []
        """One per loglikelihood request of a diffusion run, in request order (0 for AR runs)."""
        self.seconds = 0.0

    # --- what lm-eval reads back into its results ----------------------------------------------

    @property
    def settings(self) -> dict:
        """dlm's side of a result: enough to reproduce it from the results file alone."""
        pipe = self.pipe
        return {"run": str(pipe.checkpoint), "objective": pipe.objective, "weights": pipe.weights,
                "dtype": str(pipe.dtype).removeprefix("torch."), "device": str(pipe.device),
                "mc_samples": None if pipe.is_autoregressive else self.mc_samples, "seed": self.seed,
                "loglikelihood": "exact" if pipe.is_autoregressive else "Monte-Carlo NELBO bound (lower bound on "
                "log p), stratified noise levels, linear schedule",
                "sampler": dataclasses.asdict(pipe._config(dict(self.sampler_options))),
                "max_gen_toks": self.max_gen_toks}

    def standard_error_summary(self) -> dict | None:
        if self.pipe.is_autoregressive or not self.standard_errors:
            return None
        se = np.asarray(self.standard_errors)
        return {"requests": len(se), "mean": float(se.mean()), "max": float(se.max()),
                "median": float(np.median(se))}

    # --- tokens ----------------------------------------------------------------------------------

    @property
    def window(self) -> int:
        return self.pipe.model.cfg.block_size

    def _encode(self, text: str, where: str) -> list[int]:
        try:
            return self.pipe.tokenizer.encode(text)
        except (KeyError, ValueError, DlmError) as error:
            raise DlmError(f"the task's {where} holds text this model's tokenizer cannot encode ({error}); "
                           "choose tasks in the model's alphabet, or a model with a byte-level tokenizer") from None

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's convention (its TemplateLM): the context's trailing whitespace joins the
        continuation, and the continuation's ids are those of context + continuation past the
        context's own count, so a byte-level BPE reads " word" as it did in training rather than
        "word" after a lone space (with a character tokenizer only the split moves: the space is
        scored with the continuation)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self._encode(context, "context")
        whole = self._encode(context + continuation, "continuation")
        return whole[:len(ctx)], whole[len(ctx):]

    def _seed_for(self, *parts: str) -> int:
        return (self.seed * 1_000_003 + zlib.crc32("\x00".join(parts).encode("utf-8"))) % 2**63

    # --- loglikelihood ---------------------------------------------------------------------------

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in self._bar(requests, "loglikelihood"):
            context, continuation = request.args
            ctx, cont = self._encode_pair(context, continuation)
            if not cont:
                out.append((0.0, True))
                self.standard_errors.append(0.0)
                continue
            ids = (ctx + cont)[-self.window:]
            n_cont = min(len(cont), len(ids))
            logp, se, greedy = self._score(ids, n_cont, self._seed_for(context, continuation))
            self.standard_errors.append(se)
            out.append((logp, greedy))
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in self._bar(requests, "loglikelihood_rolling"):
            (text,) = request.args
            ids = self._encode(text, "document")
            total = 0.0
            for start in range(0, len(ids), self.window):  # dlm eval's windows: consecutive, no overlap
                piece = ids[start:start + self.window]
                logp, se, _ = self._score(piece, len(piece), self._seed_for(text, str(start)))
                total += logp
                self.standard_errors.append(se)
            out.append(total)
        return out

    @torch.no_grad()
    def _score(self, ids: list[int], n_scored: int, seed: int) -> tuple[float, float, bool]:
        """(log p of the last `n_scored` tokens given the rest, its Monte-Carlo s.e., is_greedy)."""
        from dlm.runtime import autocast

        pipe, special = self.pipe, self.pipe.tokenizer.special
        x = torch.tensor([ids], device=pipe.device)
        L = x.shape[1]
        scored = torch.zeros_like(x, dtype=torch.bool)
        scored[:, L - n_scored:] = True
        pipe.model.eval()
        with autocast(pipe.device, pipe.dtype):
            if pipe.is_autoregressive:
                inputs = torch.cat((torch.full_like(x[:, :1], special.bos), x[:, :-1]), dim=1)
                logits = pipe.model(inputs).float()
                nll = token_cross_entropy(logits, x)[scored]
                greedy = bool((logits.argmax(-1)[scored] == x[scored]).all())
                return -float(nll.sum()), 0.0, greedy
            sums = self._nelbo_samples(x, ~scored, seed)
            greedy = False
            if n_scored == 1:  # the lone continuation token masked, the rest visible
                z = x.masked_fill(scored, special.mask)
                logits = pipe.model(z).float()
                logits[..., special.mask] = float("-inf")
                greedy = bool(logits[scored].argmax(-1).item() == x[scored].item())
        return -float(sums.mean()), float(sums.std(ddof=1) / math.sqrt(len(sums))), greedy

    def _nelbo_samples(self, x: torch.Tensor, given: torch.Tensor, seed: int) -> np.ndarray:
        """`mc_samples` one-sample NELBOs (nats, summed over the scored tokens) of x's tokens not
        `given`, the given ones visible and never masked."""
        from dlm.diffusion.schedules import Linear
        from dlm.eval.likelihood import _stratified_t
        from dlm.objectives import bd3_loss, mdlm_loss

        pipe, special = self.pipe, self.pipe.tokenizer.special
        generator = torch.Generator().manual_seed(seed)
        L, block = x.shape[1], pipe.diffusion_block
        n_blocks = -(-L // block) if block else 1
        t_all = _stratified_t(self.mc_samples * n_blocks, generator).view(self.mc_samples, n_blocks)
        sums = []
        for i in range(0, self.mc_samples, self.batch_size):
            t = t_all[i:i + self.batch_size].to(pipe.device)
            xb, gb = x.expand(t.shape[0], -1), given.expand(t.shape[0], -1)
            if block:
                pad = n_blocks * block - L  # bd3 needs whole blocks: pad on the right, given and unscored
                if pad:
                    xb = F.pad(xb, (0, pad), value=special.pad)
                    gb = F.pad(gb, (0, pad), value=True)
                out = bd3_loss(pipe.model, xb, Linear(), special.mask, block, generator=generator, t=t,
                               prompt_mask=gb)
                sums.append(out.per_sequence.double().cpu().numpy() * xb.shape[1])
            else:
                out = mdlm_loss(pipe.model, xb, Linear(), special.mask, generator=generator, t=t[:, 0],
                                prompt_mask=gb)
                sums.append(out.per_sequence.double().cpu().numpy() * L)
        return np.concatenate(sums)

    # --- generation ------------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        out = []
        tok = self.pipe.tokenizer
        for request in self._bar(requests, "generate_until"):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            length = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            length = max(1, min(length, self.window - 1))
            options = dict(self.sampler_options)
            if "temperature" in gen_kwargs and "temperature" not in options:
                options["temperature"] = float(gen_kwargs["temperature"])
            if gen_kwargs.get("do_sample") is False and "temperature" not in options:
                options["temperature"] = 0.0
            ids = self._encode(context, "context")[-(self.window - length):] if context else []
            prompt = tok.decode(ids)
            result = self.pipe.sample(prompt, length=length, seed=self._seed_for(context), **options)
            row, generated = result.tokens[0].tolist(), result.generated[0].tolist()
            new = [i for i, g in zip(row, generated, strict=True) if g]
            if tok.eos_id in new:
                new = new[:new.index(tok.eos_id)]
            text = tok.decode([i for i in new if i not in tok.special_ids])
            cuts = [text.index(stop) for stop in until if stop and stop in text]
            out.append(text[:min(cuts)] if cuts else text)
        return out

    def _bar(self, requests, what: str) -> Iterable:
        if not self.progress:
            return requests
        from dlm.progress import Progress

        bar = Progress(total=len(requests), desc=what, unit="req", leave=False)

        def items():
            for request in requests:
                yield request
                bar.update(1)
            bar.close()
        return items()


@contextlib.contextmanager
def quiet_git_hash():
    """lm-eval records the git commit of the working directory by running git, which prints "fatal:
    not a git repository" on the terminal anywhere else: ask git the same question quietly."""
    import lm_eval.evaluator as evaluator

    def commit() -> str | None:
        try:
            return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).decode().strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    original, evaluator.get_git_commit_hash = evaluator.get_git_commit_hash, commit
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def evaluate_tasks(model: DlmLM, tasks: list[str], include_path: str | None = None, limit: float | None = None,
                   num_fewshot: int | None = None) -> dict:
    """lm-eval's `simple_evaluate` on `tasks` (names from lm-eval's registry or `include_path`'s
    YAML files), its results with dlm's settings and standard errors added under "dlm"."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise DlmError(f"unknown lm-eval task(s) {', '.join(unknown)}; name tasks from lm-eval's registry, or pass "
                       "--include-path DIR with their YAML files")
    started = time.perf_counter()
    seed = model.seed
    with quiet_git_hash():
        results = simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot, log_samples=False, random_seed=seed,
                                  numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
                                  bootstrap_iters=1000)
    if results is None:  # a non-zero rank under torch.distributed
        return {}
    results["dlm"] = {**model.settings, "loglikelihood_standard_errors": model.standard_error_summary(),
                      "tasks": tasks, "include_path": include_path, "limit": limit, "num_fewshot": num_fewshot,
                      "seconds": time.perf_counter() - started}
    return results


def json_ready(results: dict) -> dict:
    """The results as plain JSON values (lm-eval's own conversion of what is not)."""
    import json

    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(results, default=handle_non_serializable))


def results_table(results: dict) -> str:
    from lm_eval.utils import make_table

    return make_table(results)


if __name__ == "__main__":  # lm-eval's command line, with the `dlm` model registered
    from lm_eval.__main__ import cli_evaluate

    with quiet_git_hash():
        cli_evaluate()
