"""`dlm.pipeline("text-diffusion", model=...)`: generation the way Hugging Face pipelines do it.

    generator = dlm.pipeline("text-diffusion", model="runs/shakespeare-char-cpu-bd3")
    generator("ROMEO:", max_new_tokens=128, steps=64, num_return_sequences=2)
    # → [{"generated_text": "ROMEO: …"}, {"generated_text": "ROMEO: …"}]

The model is a run folder, a checkpoint, an export (dlm export --hub), a Hub repo id or a loaded
`Pipeline`; every SamplerConfig field (steps, sampler, temperature, top_p, block_length, …) is a
keyword, given once to `pipeline(...)` as a default or per call.
"""

from __future__ import annotations

from pathlib import Path

from dlm.errors import DlmError
from dlm.inference import Pipeline, load

TASKS = ("text-diffusion", "text-generation")


class TextDiffusionPipeline:
    task = "text-diffusion"

    def __init__(self, pipe: Pipeline, **defaults):
        self.pipe, self.defaults = pipe, defaults

    def __call__(self, inputs: str | list[str], max_new_tokens: int = 64, num_return_sequences: int = 1,
                 return_full_text: bool = True, **options) -> list[dict] | list[list[dict]]:
        """[{"generated_text": ...}] per input (a list of such lists for a list of inputs)."""
        prompts = [inputs] if isinstance(inputs, str) else list(inputs)
        result = self.pipe.sample(prompts, length=max_new_tokens, num_samples=num_return_sequences,
                                  **{**self.defaults, **options})
        texts = self.pipe.decode(result)
        out = []
        for i, prompt in enumerate(prompts):
            rows = texts[i * num_return_sequences:(i + 1) * num_return_sequences]
            out.append([{"generated_text": text if return_full_text else text[len(prompt):]} for text in rows])
        return out[0] if isinstance(inputs, str) else out


def pipeline(task: str = "text-diffusion", model: str | Path | Pipeline | None = None, device: str = "auto",
             dtype: str = "auto", **defaults) -> TextDiffusionPipeline:
    if task not in TASKS:
        raise DlmError(f"dlm.pipeline knows the tasks {', '.join(TASKS)}, not {task!r}")
    if model is None:
        raise DlmError("dlm.pipeline needs model=…: a run folder, an export, a Hub repo id or a loaded Pipeline")
    pipe = model if isinstance(model, Pipeline) else load(model, device=device, dtype=dtype)
    return TextDiffusionPipeline(pipe, **defaults)
