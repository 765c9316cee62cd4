"""The README's 10-minute figures, kept in one place: docs/results.md holds every run as data (a JSON
comment) and as a table, and the README's table is drawn from the same data, so the two cannot differ.

    python bench/ten_minutes.py add --run runs/bf16-mdlm --eval bf16-mdlm.json --date 2026-12-04
    python bench/ten_minutes.py add --objective mdlm --dtype fp32 --size "3 × 192" --steps 864 --value 1.989 \
        --machine "AMD EPYC, AVX2 only, 2 vCPUs" --cpu-class "AVX2 only" --date 2026-12-03 --source "a user's run"
    python bench/ten_minutes.py render          # rewrite both tables from the data (what `add` does last)
    python bench/ten_minutes.py samples --diffusion runs/bf16-mdlm --ar runs/bf16-ar --date 2026-12-04

`add` reads steps, tokens and mean tokens/s from the run's log.jsonl, the size and objective from its
config.json, and the figure from a `dlm eval --json` file; a run measured elsewhere is added from flags.
The machine defaults to this one (bench/machine.py). A row with the same machine, objective, dtype,
date, tokenizer and recipe (a diffusion run's departures from its preset: tied embeddings, the clean copy's
input mask, weight decay) is replaced.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_class, describe_cpu  # noqa: E402

from dlm.io import atomic_write_text  # noqa: E402
from dlm.presets import get_preset  # noqa: E402
from dlm.runtime import cpu_has_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS, README = ROOT / "docs" / "results.md", ROOT / "README.md"
DATA_RE = re.compile(r"<!-- ten-minutes-data\n(.*?)\n-->", re.DOTALL)
RESULTS_MARK, README_MARK = "ten-minutes", "readme-ten-minutes"


def read_rows(page: Path = RESULTS) -> list[dict]:
    match = DATA_RE.search(page.read_text(encoding="utf-8"))
    return json.loads(match.group(1)) if match else []


def number(x: float | None, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def count(x: float | None, scale: float = 1.0, suffix: str = "") -> str:
    if x is None:
        return "–"
    return f"{x / scale:,.2f}{suffix}" if scale != 1 else f"{x:,.0f}"


def results_table(rows: list[dict]) -> str:
    head = ("| CPU class | machine (measured by) | date | trains in | size | model | steps in 600 s | tokens "
            "| mean tokens/s | val, nats/char | MC s.e. | s.e. over windows | note |\n"
            "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|\n")
    lines = []
    for r in rows:
        model = {"mdlm": "diffusion, NELBO (bound)", "ar": "AR twin, exact NLL",
                 "bd3": f"block diffusion, blocks of {r.get('block')}, NELBO (bound)"}[r["objective"]]
        lines.append(f"| {r['cpu_class']} | {r['machine']} ({r['source']}) | {r['date']} | {r['dtype']} | {r['size']} "
                     f"| {model} | {count(r['steps'])} | {count(r.get('tokens'), 1e6, 'M')} "
                     f"| {count(r.get('tokens_per_s'))} | **{number(r['value'])}** | {number(r.get('mc_se'))} "
                     f"| {number(r.get('window_se'))} | {note(r)} |")
    return head + "\n".join(lines) + "\n"


def note(row: dict) -> str:
    """The row's note, its tokenizer first when it is not the character one, then its recipe."""
    parts = [f"{row['tokenizer']} tokens"] if row.get("tokenizer") else []
    return ", ".join(parts + [row[k] for k in ("recipe", "note") if row.get(k)])


RECIPE = {("model", "tie_weights"): lambda tied: "tied embeddings" if tied else "untied embeddings",
          ("train", "ar_input_mask"): "clean-copy input mask {:g}".format,
          ("train", "weight_decay"): "weight decay {:g}".format,
          ("train", "batch_size"): "batch {}".format}


def recipe(config: dict) -> str:
    """A diffusion run's departures from its preset in the settings that told its runs apart (an AR run's
    regulariser is in its note)."""
    if not config.get("preset"):
        return ""
    preset = get_preset(config["preset"]).to_dict()
    return ", ".join(label(config[part][key]) for (part, key), label in RECIPE.items()
                     if key in config[part] and config[part][key] != preset[part][key])


def readme_table(rows: list[dict]) -> str:
    """One line per machine and day: the two twins side by side (rows marked `"readme": false`, runs another
    row supersedes, stay in results.md only)."""
    machines: dict[tuple, dict] = {}
    for r in (r for r in rows if r.get("readme", True)):
        key = (r["cpu_class"], r["machine"], r["date"], r["dtype"], r["source"], r.get("tokenizer", "char"),
               r.get("recipe", ""))
        machines.setdefault(key, {})[r["objective"]] = r
    blocks = sorted({r.get("block") for r in rows if r["objective"] == "bd3"})
    block = blocks[0] if len(blocks) == 1 else None  # one block size in the README's table
    objectives = ("mdlm", "bd3", "ar") if block else ("mdlm", "ar")
    head = ("| CPU class | measured on | size, precision | diffusion NELBO (steps) | "
            + (f"block diffusion, blocks of {block}, NELBO (steps) | " if block else "")
            + "AR twin NLL (steps) |\n|---|---|---|" + "---:|" * len(objectives) + "\n")
    lines = []
    for (cls, machine, date, dtype, source, tokenizer, how), pair in machines.items():
        cells = []
        for objective in objectives:
            r = pair.get(objective)
            cells.append("–" if r is None else f"{r['value']:.3f} ({r['steps']:,})")
        size = " / ".join(dict.fromkeys(r["size"] for r in pair.values()))
        tokens = ("" if tokenizer == "char" else f", {tokenizer} tokens") + (f", {how}" if how else "")
        lines.append(f"| {cls} | {machine} ({source}, {date}) | {size}, {dtype}{tokens} | {' | '.join(cells)} |")
    return head + "\n".join(lines) + "\n"


def write_block(page: Path, name: str, body: str) -> None:
    text = page.read_text(encoding="utf-8")
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{page} has no {begin} … {end} markers; add them where the table belongs")
    head, rest = text.split(begin, 1)
    atomic_write_text(page, f"{head}{begin}\n{body}{end}{rest.split(end, 1)[1]}")


def render(rows: list[dict]) -> None:
    data = "<!-- ten-minutes-data\n" + json.dumps(rows, indent=1, ensure_ascii=False) + "\n-->\n"
    write_block(RESULTS, RESULTS_MARK, data + results_table(rows))
    write_block(README, README_MARK, readme_table(rows))


def row_from_run(args: argparse.Namespace) -> dict:
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    m, t = config["model"], config["train"]
    last = max((e for e in log if "elapsed_s" in e), key=lambda e: e["step"])  # the final validation line
    tokens = last["step"] * t["batch_size"] * t["grad_accum"] * m["block_size"]
    result = json.loads(Path(args.eval).read_text(encoding="utf-8"))
    # The run trained here (the machine defaults to this one): dtype auto means bf16 where the CPU has it.
    dtype = args.dtype or (t["dtype"] if t["dtype"] != "auto" else "bf16" if cpu_has_bf16() else "fp32")
    note = args.note
    if t["objective"] == "ar" and not note:
        extras = [f"input mask {t['ar_input_mask']:g}"] if t.get("ar_input_mask") else []
        note = ", ".join(extras + [f"weight decay {t['weight_decay']:g}"])
    data = config["data"]  # a BPE run's figure is per character all the same (dlm eval's nats/char)
    tokenizer = "char" if data["tokenizer"] == "char" else f"{data['tokenizer'].upper()} {data['vocab_size']}"
    how = recipe(config) if t["objective"] != "ar" else ""
    # An eval of an earlier checkpoint than the last (--ckpt RUN/best) is a row of its own
    evaluated = str(result.get("checkpoint", "")).rsplit("step-", 1)
    earlier = int(evaluated[1]) if len(evaluated) == 2 and evaluated[1].isdigit() else last["step"]
    return {"cpu_class": args.cpu_class or cpu_class(), "machine": args.machine or describe_cpu(),
            "source": args.source, "date": args.date, "dtype": dtype, "size": f"{m['n_layer']} × {m['d_model']}",
            "objective": t["objective"], **({"block": config["diffusion"]["block_size"]}
                                            if t["objective"] == "bd3" else {}),
            **({"tokenizer": tokenizer} if tokenizer != "char" else {}), **({"recipe": how} if how else {}),
            "steps": last["step"], "tokens": tokens,
            "tokens_per_s": tokens / last["elapsed_s"], **per_char(result), "note": note,
            **({"evaluated_step": earlier} if earlier != last["step"] else {})}


def replace_row(rows: list[dict], row: dict) -> list[dict]:
    """rows with `row` added, in place of the one of the same machine, objective, dtype, date, source,
    tokenizer, recipe and evaluated checkpoint (a character run and a BPE run of the same day are two rows,
    and so are two recipes, or a run's last checkpoint and its best)."""
    key = ("machine", "objective", "dtype", "date", "source", "tokenizer", "recipe", "evaluated_step")
    return [r for r in rows if any(r.get(k) != row.get(k) for k in key)] + [row]


def per_char(result: dict) -> dict:
    """The eval's figure and standard errors in nats/char (per token for results written before dlm eval
    reported characters: every run then was character-level)."""
    if "nats_per_char" not in result:
        return {"value": result["nats_per_token"], "mc_se": result["mc_standard_error"],
                "window_se": result["window_standard_error"]}
    return {"value": result["nats_per_char"], "mc_se": result.get("mc_standard_error_per_char"),
            "window_se": result.get("window_standard_error_per_char")}


def sample_lines(run: str, lines: int, seed: int) -> tuple[str, list[str]]:
    """The command and the first `lines` lines of one 256-character sample of `run`, as dlm sample prints it."""
    import subprocess

    cmd = ["dlm", "sample", "--ckpt", run, "--length", "256", "--seed", str(seed)]
    text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return " ".join(cmd), [line.rstrip() for line in text.strip("\n").splitlines()][:lines]


def samples(args: argparse.Namespace) -> None:
    """The README's few lines of generated text, straight from `dlm sample` on the runs in the table."""
    out = []
    for label, run in (("block-diffusion model (the default)" if args.block else "diffusion model", args.diffusion),
                       ("AR twin", args.ar)):
        cmd, lines = sample_lines(run, args.lines, args.seed)
        out.append(f"The {label} (`{cmd.replace(run, 'RUN')}`, unedited, first {len(lines)} lines):\n\n"
                   "```text\n" + "\n".join(lines) + "\n```\n")
    body = (f"Generated by the {args.date} runs on {args.machine or describe_cpu()} (their figures are in the "
            "table below):\n\n" + "\n".join(out))
    write_block(README, "readme-samples", body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add (or replace) one run's row, then render")
    add.add_argument("--run", help="the run folder (log.jsonl, config.json)")
    add.add_argument("--eval", help="its dlm eval --json file")
    add.add_argument("--date", required=True)
    add.add_argument("--machine", help="default: this machine (bench/machine.py)")
    add.add_argument("--cpu-class", help="default: this machine's class")
    add.add_argument("--source", default="dlm's developers", help="who measured it")
    add.add_argument("--note", default="")
    add.add_argument("--not-in-readme", action="store_true",
                     help="list the row in results.md only (a run that another of the README's rows supersedes)")
    for flag in ("--objective", "--dtype", "--size"):
        add.add_argument(flag, help="for a run measured elsewhere (no --run)")
    add.add_argument("--steps", type=int)
    add.add_argument("--value", type=float, help="val nats/char, for a run measured elsewhere")
    add.add_argument("--tokens", type=float)
    add.add_argument("--tokens-per-s", type=float)
    add.add_argument("--mc-se", type=float)
    add.add_argument("--window-se", type=float)
    sub.add_parser("render", help="rewrite the results.md and README tables from the data")
    smp = sub.add_parser("samples", help="write the README's sample lines from dlm sample on two runs")
    smp.add_argument("--diffusion", required=True)
    smp.add_argument("--ar", required=True)
    smp.add_argument("--block", action="store_true", help="--diffusion is a block-diffusion run")
    smp.add_argument("--date", required=True)
    smp.add_argument("--machine")
    smp.add_argument("--lines", type=int, default=6)
    smp.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "samples":
        return samples(args)
    rows = read_rows()
    if args.command == "add":
        if args.run:
            if not args.eval:
                parser.error("--run needs --eval (the dlm eval --json file of that run)")
            row = row_from_run(args)
        else:
            if None in (args.objective, args.dtype, args.size, args.steps, args.value, args.machine, args.cpu_class):
                parser.error("without --run give --objective --dtype --size --steps --value --machine --cpu-class")
            row = {"cpu_class": args.cpu_class, "machine": args.machine, "source": args.source, "date": args.date,
                   "dtype": args.dtype, "size": args.size, "objective": args.objective, "steps": args.steps,
                   "value": args.value, "tokens": args.tokens, "tokens_per_s": args.tokens_per_s,
                   "mc_se": args.mc_se, "window_se": args.window_se, "note": args.note}
        if args.not_in_readme:
            row["readme"] = False
        rows = replace_row(rows, row)
    render(rows)
    print(readme_table(rows))


if __name__ == "__main__":
    main()
