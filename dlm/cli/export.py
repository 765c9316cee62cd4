"""`dlm export`."""

from __future__ import annotations

import argparse

from dlm.errors import DlmError


def cmd_export(args: argparse.Namespace) -> int:
    if not (args.hub or args.onnx):
        raise DlmError("say what to export: --hub OUT (a Hugging Face model folder) and/or --onnx OUT")
    if args.hub:
        from dlm.hub import export_run

        out = export_run(args.run, args.hub, args.eval, args.weights)
        print(f"dlm: Hugging Face files of {args.run} written to {out} (config.json, model.safetensors, tokenizer, "
              "README.md model card)")
        if args.push:
            from dlm.hub import DiffusionLM

            DiffusionLM.from_pretrained(str(out)).push_to_hub(args.push, private=args.private)
            print(f"dlm: pushed to https://huggingface.co/{args.push}")
    if args.onnx:
        from dlm.onnx_export import export_onnx

        report = export_onnx(args.run, args.onnx, weights=args.weights, web=args.web, ort_dir=args.ort_dir)
        print(f"dlm: ONNX model written to {report['path']}; onnxruntime vs PyTorch logits: max |Δ| "
              f"{report['max_abs_diff']:.2e} over batch × length {report['checked']}; one forward of "
              f"{report['timed_shape']}: onnxruntime {report['onnxruntime_ms']:.1f} ms, "
              f"PyTorch {report['torch_ms']:.1f} ms"
              + (f"; the page: python -m http.server -d {args.onnx}, then open http://localhost:8000/" if args.web
                 else ""))
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="a run as Hugging Face files (--hub) or ONNX (--onnx)",
                       description="Export a run's newest checkpoint: --hub writes a folder that is a Hugging Face "
                       "model repository (dlm.load and DiffusionLM.from_pretrained read it; --push uploads it); "
                       "--onnx writes the network as ONNX with dynamic batch and length, checked against PyTorch "
                       "with onnxruntime (--web adds a page that samples in the browser).")
    p.add_argument("run", help="the run folder (or one checkpoint folder)")
    p.add_argument("--hub", metavar="OUT", help="write the Hugging Face files here")
    p.add_argument("--eval", metavar="FILE.json", help="with --hub: the dlm eval --json result for the model card "
                   "(default: RUN/eval.json when present)")
    p.add_argument("--push", metavar="REPO_ID", help="with --hub: also upload to the Hugging Face Hub (needs a login)")
    p.add_argument("--private", action="store_true", help="with --push: a private repository")
    p.add_argument("--onnx", metavar="OUT", help="write model.onnx (and the tokenizer) here")
    p.add_argument("--web", action="store_true", help="with --onnx: also a static page that samples in the browser "
                   "(onnxruntime-web), for MDLM and block-diffusion runs with character or BPE tokens")
    p.add_argument("--ort-dir", metavar="DIST", help="with --web: onnxruntime-web's dist folder, copied beside the "
                   "page (default: the page loads it from the jsDelivr CDN)")
    p.add_argument("--weights", default="auto", choices=("auto", "ema", "raw"),
                   help="EMA-averaged or raw weights (auto: EMA when the checkpoint has them)")
    p.set_defaults(func=cmd_export)
