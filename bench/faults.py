"""Fault injection: does a training run survive what real machines do to it?

    python bench/faults.py                                  # 14 random kills in training + 8 in saves
    python bench/faults.py --train-kills 30 --save-kills 10 --markdown docs/reliability.md

Every scenario runs the real `dlm` command (tiny preset, a generated corpus, checkpoints every few
steps) in a scratch folder and checks the run folder afterwards:

* kill -9 at random moments of training, then `--resume`, over and over in one run folder;
* kill -9 at exact moments of a checkpoint save (tests/fault_injection.py), at random saves;
* each file of the newest checkpoint truncated, bit-flipped, or replaced by a pickle that would
  write a marker file if it were ever unpickled (also with the manifest forged to match);
* two trainers started on one run folder;
* a full disk (a small tmpfs when this process may mount one, else an injected ENOSPC);
* `--resume` on a fresh folder, on one whose checkpoints are all damaged, and on a mixed one.

For each: what happened, training steps lost, checkpoints lost (a checkpoint complete before the
fault that is not loadable after it), log lines lost (readable lines before the fault that are
gone after it), and silent restarts (a resume that did not continue from the newest intact
checkpoint, or did not say where it continued from). Prints a table, writes JSON, and with
--markdown a section of docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pickle
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe_cpu  # noqa: E402 (bench/ is on the path when run)
from markers import write_between_markers

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "tests" / "fault_injection.py"
SAVE_POINTS = ("weights-half", "trainer-state", "before-manifest", "after-rename", "mid-prune")
WORDS = ("the king and queen of a small town walked to the river where old ships sail slowly under bright "
         "stars while many hands make light work and good friends sing a song of morning rain").split()
TRAIN = ["--preset", "tiny", "--quiet", "ckpt_interval=3", "keep_last=2", "eval_interval=1000000",
         "log_interval=1", "compile=no"]


def make_corpus(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "." for _ in range(3000)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


class Lab:
    """A scratch folder, a corpus and the dlm command line."""

    def __init__(self, root: Path, seed: int):
        self.root, self.corpus = root, root / "corpus.txt"
        make_corpus(self.corpus, seed)
        self.env = {**os.environ, "DLM_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}

    def dlm(self, *args: str, harness: list[str] | None = None, **kwargs) -> subprocess.CompletedProcess:
        prefix = [sys.executable, str(HARNESS), *harness, "--"] if harness else [sys.executable, "-m", "dlm"]
        return subprocess.run([*prefix, *args], env=self.env, cwd=REPO, capture_output=True, text=True, **kwargs)

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "dlm", *args], env=self.env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def train_args(self, run: Path, *extra: str, max_steps: int = 1_000_000) -> list[str]:
        return ["train", "--data", str(self.corpus), "--out", str(run), *TRAIN, f"max_steps={max_steps}", *extra]


def checkpoints(run: Path) -> list[Path]:
    from dlm.run_folder import RunFolder

    return RunFolder(run).checkpoints()


def newest_intact(run: Path) -> int | None:
    from dlm.run_folder import RunFolder

    ckpt = RunFolder(run).latest_checkpoint(quiet=True)
    return None if ckpt is None else int(ckpt.name.removeprefix("step-"))


def all_verify(run: Path) -> bool:
    from dlm.run_folder import verify_checkpoint

    return all(verify_checkpoint(c) is None for c in checkpoints(run))


def log_lines(run: Path) -> tuple[list[str], int]:
    """(readable lines, torn lines) of RUN/log.jsonl."""
    path = run / "log.jsonl"
    if not path.is_file():
        return [], 0
    good, torn = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            json.loads(line)
            good.append(line)
        except json.JSONDecodeError:
            torn += 1
    return good, torn


def last_trained_step(run: Path) -> int:
    steps = [json.loads(line)["step"] for line in log_lines(run)[0] if '"loss"' in line]
    return max(steps, default=0)


def resumed_from(output: str) -> int | None:
    """The step a `--resume` said it continues from (None: it said it starts a new run)."""
    match = re.search(r"dlm: resuming .* from checkpoint step-(\d+)", output)
    return int(match.group(1)) if match else None


def row(scenario: str, trials: int, happened: str, steps_lost: list[int], ckpts_lost: int, log_lost: int,
        silent: int, ok: bool) -> dict:
    return {"scenario": scenario, "trials": trials, "what happened": happened,
            "steps lost (max)": max(steps_lost, default=0), "steps lost (mean)":
            round(sum(steps_lost) / len(steps_lost), 1) if steps_lost else 0.0,
            "checkpoints lost": ckpts_lost, "log lines lost": log_lost, "silent restarts": silent, "ok": ok}


def kill_cycle(lab: Lab, run: Path, killer, rng: random.Random) -> dict:
    """One fault, then a resume that must say it continues from the newest intact checkpoint."""
    before_ckpt, (before_lines, _) = newest_intact(run), log_lines(run)
    outcome = killer()
    after_ckpt, (after_lines, torn) = newest_intact(run), log_lines(run)
    trained = last_trained_step(run)
    lost_ckpt = int(before_ckpt is not None and (after_ckpt is None or after_ckpt < before_ckpt))
    lost_lines = sum(1 for a, b in zip(before_lines, after_lines, strict=False) if a != b)
    lost_lines += max(len(before_lines) - len(after_lines), 0)
    proc = lab.start(*lab.train_args(run, "--resume"))  # resume, and leave it running for the next fault
    first = proc.stdout.readline()
    silent = int(after_ckpt is not None and resumed_from(first) != after_ckpt)
    return {"proc": proc, "outcome": outcome, "steps_lost": trained - (after_ckpt or 0), "ckpt_lost": lost_ckpt,
            "log_lost": lost_lines, "torn": torn, "silent": silent, "verified": all_verify(run)}


def random_kills_in_training(lab: Lab, n: int, rng: random.Random) -> dict:
    run = lab.root / "kills-train"
    proc = lab.start(*lab.train_args(run))
    results = []
    for _ in range(n):
        time.sleep(rng.uniform(3.0, 7.0))  # ~2.5 s of start-up, then a few steps a second

        def kill(p=proc) -> str:
            p.send_signal(signal.SIGKILL)
            p.wait()
            return "killed"

        result = kill_cycle(lab, run, kill, rng)
        proc = result.pop("proc")
        results.append(result)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return summarise(f"kill -9 at a random moment of training ({n}×, then --resume)", results)


def random_kills_in_saves(lab: Lab, n: int, rng: random.Random) -> dict:
    """Each round resumes the folder (saying where from) and is killed inside one of its saves."""
    run = lab.root / "kills-save"
    results, points = [], []
    for _ in range(n):
        point, at_save = rng.choice(SAVE_POINTS), rng.randint(1, 3)
        if point == "mid-prune":  # pruning starts once keep_last (2) checkpoints exist
            at_save = max(at_save, 3 - len(checkpoints(run)))
        points.append(point)
        before_ckpt, (before_lines, _) = newest_intact(run), log_lines(run)
        resume = ["--resume"] if checkpoints(run) else []
        died = lab.dlm(*lab.train_args(run, *resume), harness=["--kill-at", point, "--at-save", str(at_save)],
                       timeout=300)
        assert died.returncode == -signal.SIGKILL, died.stderr
        after_ckpt, (after_lines, torn) = newest_intact(run), log_lines(run)
        lost_lines = max(len(before_lines) - len(after_lines), 0)
        lost_lines += sum(1 for a, b in zip(before_lines, after_lines, strict=False) if a != b)
        results.append({"steps_lost": last_trained_step(run) - (after_ckpt or 0),
                        "ckpt_lost": int(before_ckpt is not None and (after_ckpt or -1) < before_ckpt),
                        "log_lost": lost_lines, "torn": torn, "verified": all_verify(run),
                        "silent": int(before_ckpt is not None and resumed_from(died.stdout) != before_ckpt)})
    counts = ", ".join(f"{p} ×{points.count(p)}" for p in SAVE_POINTS if points.count(p))
    return summarise(f"kill -9 inside a checkpoint save ({n}×: {counts}; each round resumes the last)", results)


def summarise(name: str, results: list[dict]) -> dict:
    ok = all(r["verified"] for r in results) and not any(r["ckpt_lost"] or r["silent"] for r in results)
    torn = sum(r["torn"] for r in results)
    happened = (f"every step-* folder verified after each kill: {all(r['verified'] for r in results)}; "
                f"each resume continued from the newest intact checkpoint; torn last log lines: {torn}")
    return row(name, len(results), happened, [r["steps_lost"] for r in results],
               sum(r["ckpt_lost"] for r in results), sum(r["log_lost"] for r in results),
               sum(r["silent"] for r in results), ok)


class Payload:
    """Unpickling this writes a marker file: proof that a loader ran code from a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def damaged_files(lab: Lab, base: Path) -> list[dict]:
    """Each file of the newest checkpoint damaged three ways (plus a pickle with a forged manifest)."""
    import dlm
    from dlm.errors import DlmError
    from dlm.io import sha256_file

    rows = []
    for name in ("model.safetensors", "ema.safetensors", "trainer_state.pt", "manifest.json"):
        for damage in ("truncated", "bit-flipped", "pickle payload", "pickle payload, forged manifest"):
            if damage.endswith("forged manifest") and name == "manifest.json":
                continue
            run = lab.root / f"damage-{name}-{damage.replace(' ', '-').replace(',', '')}"
            shutil.copytree(base, run)
            older, newest = checkpoints(run)[-2:]
            target, marker = newest / name, lab.root / f"marker-{run.name}"
            if damage == "truncated":
                os.truncate(target, target.stat().st_size // 2)
            elif damage == "bit-flipped":
                data = bytearray(target.read_bytes())
                data[len(data) // 2] ^= 0x01
                target.write_bytes(bytes(data))
            else:
                target.write_bytes(pickle.dumps(Payload(marker)))
                if damage.endswith("forged manifest"):
                    manifest = json.loads((newest / "manifest.json").read_text())
                    manifest["files"][name] = {"bytes": target.stat().st_size, "sha256": sha256_file(target)}
                    (newest / "manifest.json").write_text(json.dumps(manifest))
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # its "skipping checkpoint" notice
                    loaded = dlm.load(run).checkpoint.name
            except DlmError as e:
                loaded = f"error: {str(e)[:60]}…"
            direct = lab.dlm("sample", "--ckpt", str(newest), "--length", "8", "--steps", "2")
            resumed = lab.dlm(*lab.train_args(run, "--resume", max_steps=int(older.name[5:]) + 4))
            # Never a traceback, never the payload; a damaged (or unloadable) newest checkpoint is
            # skipped, so the resume continues from the older one.
            clean = all("Traceback" not in p.stderr for p in (direct, resumed))
            ok = (not marker.exists() and clean and resumed.returncode == 0
                  and resumed_from(resumed.stdout) == int(older.name[5:]))
            rows.append({"file": name, "damage": damage, "dlm.load(run)": loaded,
                         "sample --ckpt that checkpoint": direct.stderr.strip().splitlines()[-1][:110]
                         if direct.returncode else "loaded",
                         "train --resume": f"continued from step {resumed_from(resumed.stdout)}"
                         if resumed.returncode == 0 else resumed.stderr.strip().splitlines()[-1][:90],
                         "payload ran": marker.exists(), "ok": ok})
    return rows


def concurrent_trainers(lab: Lab) -> dict:
    run = lab.root / "concurrent"
    first = lab.start(*lab.train_args(run))
    while newest_intact(run) is None:
        time.sleep(0.1)
    second = lab.dlm(*lab.train_args(run, "--resume"))
    refused = second.returncode == 2 and f"process {first.pid}" in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    step = newest_intact(run)
    again = lab.dlm(*lab.train_args(run, "--resume", max_steps=step + 3))
    ok = refused and again.returncode == 0 and resumed_from(again.stdout) == step and all_verify(run)
    message = second.stderr.strip().splitlines()[-1] if second.stderr.strip() else "(no message)"
    return row("a second trainer on the same run folder", 1,
               f"refused while the first lived ({message[:100]}…); after kill -9 of the first, accepted and "
               f"resumed from step {step}", [], 0, 0, 0, ok)


def full_disk(lab: Lab) -> dict:
    mount = lab.root / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    run = mount / "run"
    try:
        if mounted:
            how = "a 2.5 MB tmpfs (one tiny checkpoint is 1.4 MB)"
            result = lab.dlm(*lab.train_args(run, max_steps=30))
        else:
            how = "an injected ENOSPC at the second save (no permission to mount a tmpfs)"
            result = lab.dlm(*lab.train_args(run, max_steps=30), harness=["--kill-at", "enospc",
                                                                                 "--at-save", "2"])
        error = (result.stderr.strip().splitlines() or ["(none)"])[-1]
        intact = newest_intact(run)
        ok = (result.returncode == 2 and error.startswith("dlm: error: no space left") and intact == 3
              and all_verify(run) and not list((run / "checkpoints").glob(".tmp-*")))
        return row("a full disk during a save", 1, f"{how}: exit {result.returncode}, “{error[:150]}…”; "
                   f"step-{intact:08d} intact and loadable, no partial folder left", [], 0, 0, 0, ok)
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], capture_output=True)


def resume_edge_cases(lab: Lab, base: Path) -> list[dict]:
    rows = []
    fresh = lab.dlm(*lab.train_args(lab.root / "fresh", "--resume", max_steps=4))
    rows.append(row("--resume on a fresh folder", 1, fresh.stdout.splitlines()[0] if fresh.stdout else fresh.stderr,
                    [], 0, 0, 0, fresh.returncode == 0 and "starting a new run from step 0" in fresh.stdout))
    damaged = lab.root / "all-damaged"
    shutil.copytree(base, damaged)
    for ckpt in checkpoints(damaged):
        data = bytearray((ckpt / "trainer_state.pt").read_bytes())
        data[100] ^= 0xFF
        (ckpt / "trainer_state.pt").write_bytes(bytes(data))
    names = [c.name for c in checkpoints(damaged)]
    stopped = lab.dlm(*lab.train_args(damaged, "--resume"))
    kept = [c.name for c in checkpoints(damaged)] == names
    rows.append(row("--resume, every checkpoint's trainer state damaged", 1,
                    f"exit {stopped.returncode}: {stopped.stderr.strip().splitlines()[-1][:140]}…; nothing deleted: "
                    f"{kept}", [], 0 if kept else len(names), 0, 0, stopped.returncode == 2 and kept))
    last = int(names[-1][5:])
    weights = lab.dlm(*lab.train_args(damaged, "--resume", "--fresh-optimizer", max_steps=last + 3))
    rows.append(row("the same with --fresh-optimizer", 1, weights.stdout.splitlines()[0][:160] if weights.stdout
                    else weights.stderr[-200:], [], 0, 0, 0,
                    weights.returncode == 0 and all(n in [c.name for c in checkpoints(damaged)] for n in names)))
    mixed = lab.root / "mixed"
    shutil.copytree(base, mixed)
    older, newest = checkpoints(mixed)[-2:]
    os.truncate(newest / "model.safetensors", 100)
    resumed = lab.dlm(*lab.train_args(mixed, "--resume", max_steps=int(newest.name[5:]) + 6))
    ok = (resumed.returncode == 0 and resumed_from(resumed.stdout) == int(older.name[5:])
          and (newest.is_dir() or any(newest.parent.glob(f"damaged-{newest.name}-*")))
          and "skipping checkpoint" in resumed.stderr)
    said = resumed.stdout.splitlines()[0][:150] if resumed.stdout else resumed.stderr[-150:]
    rows.append(row("--resume, newest checkpoint damaged, older intact", 1,
                    f"{said}; the damaged one is reported, and kept (set aside as damaged-… when its step is saved "
                    "again)", [int(newest.name[5:]) - int(older.name[5:])], 0, 0, 0, ok))
    return rows


def markdown(report: dict) -> str:
    lines = [f"Command: `{report['command']}` on {report['date']} ({report['machine']}).", "",
             "| scenario | trials | what happened | steps lost (max / mean) | checkpoints lost | log lines lost | "
             "silent restarts | ok |", "|---|---|---|---|---|---|---|---|"]
    for r in report["scenarios"]:
        lines.append(f"| {r['scenario']} | {r['trials']} | {r['what happened']} | {r['steps lost (max)']} / "
                     f"{r['steps lost (mean)']} | {r['checkpoints lost']} | {r['log lines lost']} | "
                     f"{r['silent restarts']} | {'yes' if r['ok'] else '**no**'} |")
    lines += ["", "Damaged checkpoint files (the newest of two checkpoints; `dlm.load` of the run folder, "
              "`dlm sample` pointed at the damaged checkpoint itself, and `dlm train --resume`):", "",
              "| file | damage | dlm.load(run) | sample --ckpt that checkpoint | train --resume | payload ran | ok |",
              "|---|---|---|---|---|---|---|"]
    for r in report["damage"]:
        lines.append(f"| {r['file']} | {r['damage']} | {r['dlm.load(run)']} | {r['sample --ckpt that checkpoint']} "
                     f"| {r['train --resume']} | {r['payload ran']} | {'yes' if r['ok'] else '**no**'} |")
    totals = report["totals"]
    lines += ["", f"Totals: {totals['kills']} kills, {totals['checkpoints_lost']} checkpoints lost, "
              f"{totals['silent_restarts']} silent restarts, {totals['log_lines_lost']} log lines lost, "
              f"{totals['payloads_ran']} payloads ran; every check passed: {totals['all_ok']}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-kills", type=int, default=14)
    parser.add_argument("--save-kills", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="bench/results/faults.json")
    parser.add_argument("--markdown", help="write the tables into this file between the faults.py markers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="dlm-faults-"))
    lab = Lab(root, args.seed)
    started = time.time()
    base = root / "base"  # a finished run with several checkpoints, copied for the damage scenarios
    done = lab.dlm(*lab.train_args(base, max_steps=9), "keep_last=3")
    assert done.returncode == 0, done.stderr
    scenarios = [random_kills_in_training(lab, args.train_kills, rng), random_kills_in_saves(lab, args.save_kills, rng),
                 concurrent_trainers(lab), full_disk(lab), *resume_edge_cases(lab, base)]
    damage = damaged_files(lab, base)
    kills = args.train_kills + args.save_kills
    report = {"command": "python bench/faults.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{describe_cpu()}, Python "
                         f"{platform.python_version()}", "seconds": round(time.time() - started),
              "scenarios": scenarios, "damage": damage,
              "totals": {"kills": kills, "checkpoints_lost": sum(r["checkpoints lost"] for r in scenarios),
                         "silent_restarts": sum(r["silent restarts"] for r in scenarios),
                         "log_lines_lost": sum(r["log lines lost"] for r in scenarios),
                         "payloads_ran": sum(r["payload ran"] for r in damage),
                         "all_ok": all(r["ok"] for r in scenarios) and all(r["ok"] for r in damage)}}
    text = markdown(report)
    print(text)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2))
    if args.markdown:
        write_between_markers(args.markdown, "bench/faults.py", text)
    if args.keep:
        print(f"scratch folder: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if report["totals"]["all_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
