"""Run `dlm` with a fault injected at an exact moment of a checkpoint save (a harness, not a test).

    python tests/fault_injection.py --kill-at POINT [--at-save N] -- train --preset tiny ...

The process kills itself with SIGKILL (as `kill -9` or the kernel's OOM killer would) at POINT of
the N-th checkpoint save (default 1), so tests and bench/faults.py can hit every window of the
write deterministically instead of sleeping and hoping:

    weights-half     model.safetensors half written (a torn file in the temporary folder)
    trainer-state    the weights written, trainer_state.pt not yet
    before-manifest  every file written and synced, the manifest not yet
    after-rename     the checkpoint renamed into place, older ones not yet pruned
    mid-prune        an old checkpoint renamed out of the namespace, not yet deleted
    enospc           not a kill: the disk is full when model.safetensors is written (OSError ENOSPC)

The rest runs exactly as `python -m dlm ...` would.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

POINTS = ("weights-half", "trainer-state", "before-manifest", "after-rename", "mid-prune", "enospc")


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, at_save: int) -> None:
    import torch

    from dlm import run_folder

    saves = {"n": 0}
    real_save_file, real_torch_save, real_write_json = run_folder.save_file, torch.save, run_folder.atomic_write_json
    real_fsync_dir, real_remove = run_folder._fsync_dir, run_folder._remove

    def armed() -> bool:
        return saves["n"] == at_save

    def save_file(state, filename, *args, **kwargs):
        if filename.endswith("model.safetensors"):
            saves["n"] += 1
            if armed() and point == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", filename)
        real_save_file(state, filename, *args, **kwargs)
        if armed() and point == "weights-half" and filename.endswith("model.safetensors"):
            os.truncate(filename, os.path.getsize(filename) // 2)
            die()

    def torch_save(obj, path, *args, **kwargs):
        if armed() and point == "trainer-state" and str(path).endswith(run_folder.TRAINER_STATE):
            die()
        return real_torch_save(obj, path, *args, **kwargs)

    def write_json(path, obj):
        if armed() and point == "before-manifest" and path.name == run_folder.MANIFEST:
            die()
        return real_write_json(path, obj)

    def fsync_dir(path):
        real_fsync_dir(path)
        if armed() and point == "after-rename":
            die()

    def remove(ckpt):
        if armed() and point == "mid-prune":
            os.replace(ckpt, ckpt.with_name(f".tmp-delete-{ckpt.name}-{os.getpid()}"))
            die()
        real_remove(ckpt)

    run_folder.save_file, torch.save = save_file, torch_save
    run_folder.atomic_write_json, run_folder._fsync_dir, run_folder._remove = write_json, fsync_dir, remove


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill-at", choices=POINTS, required=True)
    parser.add_argument("--at-save", type=int, default=1, help="which checkpoint save to interrupt (1 = the first)")
    parser.add_argument("dlm_args", nargs=argparse.REMAINDER, help="-- then the dlm command line")
    args = parser.parse_args()
    install(args.kill_at, args.at_save)
    from dlm.cli import main as dlm_main

    return dlm_main(args.dlm_args[1:] if args.dlm_args[:1] == ["--"] else args.dlm_args)


if __name__ == "__main__":
    raise SystemExit(main())
