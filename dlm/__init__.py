"""dlm: masked (absorbing-state) discrete diffusion language models, and their autoregressive twins.

    import dlm
    pipe = dlm.load("runs/shakespeare-char-cpu-bd3")
    print(pipe.generate("ROMEO:", length=200, steps=200)[0])

Layers. A module imports only from its own layer or the layers below it (tests/test_layering.py
reads this table and checks every import in the package, function-level ones included):

    layer 0: errors io special_ids progress
    layer 1: tokenizers runtime model diffusion
    layer 2: config config_docs data objectives sampling
    layer 3: presets run_folder
    layer 4: train inference hub onnx_export sizing
    layer 5: eval viz experiments chat serve text_pipeline
    layer 6: cli __main__

Text flows one way: tokenizers → data → model ← diffusion & objectives → train → run folder →
inference (samplers) → evaluation → the command line. The model knows nothing of diffusion,
samplers take token ids (never text), evaluation receives a loaded `Pipeline` and reporting reads
files. `import dlm` loads no torch: `load`, `Pipeline` and `pipeline` are imported on first use.
"""

__version__ = "0.1.0"

from dlm.errors import DlmError  # noqa: E402

__all__ = ["__version__", "load", "Pipeline", "pipeline", "DlmError"]


def __getattr__(name: str):
    if name in ("load", "Pipeline"):
        from dlm import inference

        return getattr(inference, name)
    if name == "pipeline":
        from dlm.text_pipeline import pipeline

        return pipeline
    raise AttributeError(f"module 'dlm' has no attribute {name!r}")
