"""A stand-in for nvidia-container-runtime on a machine without GPUs: the ``nvidia`` handler of the test node.

containerd's runc shim calls it as it would call runc. On ``create`` it reads the container's OCI spec and acts
on ``NVIDIA_VISIBLE_DEVICES`` as the NVIDIA container toolkit's hook does in its legacy mode: unset, empty or
``void`` exposes nothing; ``none`` the driver but no GPU; ``all`` every GPU; otherwise a comma-separated list of
UUIDs or indexes, and an unknown one fails the container. For each GPU it would expose it bind-mounts a file
``/dev/nvidia<index>`` holding the GPU's UUID (where the toolkit would give the device node), then hands the
call to runc. So a test reads what a container would see from the container itself.

    fake_nvidia_runtime.py --gpus GPUS.json --devices DIR -- <runc arguments>
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def visible(value: str | None, gpus: list[dict]) -> list[dict]:
    """The GPUs a container with this ``NVIDIA_VISIBLE_DEVICES`` is given (ValueError for an unknown one)."""
    if value is None or value.strip() in ("", "void", "none"):
        return []
    if value.strip() == "all":
        return list(gpus)
    by_name = {g["uuid"]: g for g in gpus} | {str(g["index"]): g for g in gpus}
    chosen = []
    for name in value.split(","):
        gpu = by_name.get(name.strip())
        if gpu is None:
            raise ValueError(f"unknown device: {name.strip()!r}")
        chosen.append(gpu)
    return chosen


def _bundle(runc_args: list[str]) -> Path:
    for flag in ("--bundle", "-b"):
        if flag in runc_args:
            return Path(runc_args[runc_args.index(flag) + 1])
        for arg in runc_args:
            if arg.startswith(flag + "="):
                return Path(arg.split("=", 1)[1])
    return Path.cwd()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=Path, required=True)
    parser.add_argument("--devices", type=Path, required=True)
    parser.add_argument("runc", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    runc_args = args.runc[1:] if args.runc[:1] == ["--"] else args.runc
    spec_path = _bundle(runc_args) / "config.json"
    spec = json.loads(spec_path.read_text())
    env = dict(entry.split("=", 1) for entry in spec.get("process", {}).get("env", []) if "=" in entry)
    try:
        gpus = visible(env.get("NVIDIA_VISIBLE_DEVICES"), json.loads(args.gpus.read_text()))
    except ValueError as exc:
        print(f"nvidia-container-runtime (stand-in): {exc}", file=sys.stderr)
        return 1
    for gpu in gpus:  # the node wrote each GPU's file once, before any container (never rewritten: no race)
        spec.setdefault("mounts", []).append({"destination": f"/dev/nvidia{gpu['index']}", "type": "bind",
                                              "source": str(args.devices / gpu["uuid"]), "options": ["rbind", "ro"]})
    spec_path.write_text(json.dumps(spec))
    os.execvp("runc", ["runc", *runc_args])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
