"""``fracgpu-agent``: read this machine's GPUs through NVML.

    fracgpu-agent inventory --print                  # the real GPUs (needs the NVIDIA driver), no API server
    fracgpu-agent inventory --print --fake t4x4-two-sockets   # a fixture machine, for demos and tests
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.settings import CoreSettings
from .inventory import read_inventory


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fracgpu-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inventory = sub.add_parser("inventory", help="read the GPUs once")
    inventory.add_argument("--print", action="store_true", dest="print_", required=True,
                           help="print the inventory as JSON (the annotation, node totals, what failed)")
    inventory.add_argument("--fake", metavar="FIXTURE", help="answer from extender/agent/fixtures/FIXTURE.json")
    inventory.add_argument("--units-per-gpu", type=int, default=CoreSettings().units_per_gpu)
    return parser


def open_nvml(fake: str | None):
    """The NVML to read: pynvml, initialised, or a fixture machine. Raises ``RuntimeError`` with the reason."""
    if fake:
        from .fake import FakeNvml

        try:
            nvml = FakeNvml.fixture(fake)
        except FileNotFoundError as exc:
            raise RuntimeError(f"no fixture {fake!r}: {exc.filename}") from None
    else:
        import pynvml as nvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        raise RuntimeError(f"NVML did not start: {exc} (is the NVIDIA driver installed and the device "
                           "visible to this process?)") from None
    return nvml


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        nvml = open_nvml(args.fake)
    except RuntimeError as exc:
        print(f"fracgpu-agent: {exc}", file=sys.stderr)
        return 1
    try:
        report = read_inventory(nvml)
    finally:
        nvml.nvmlShutdown()
    print(json.dumps({
        "driver": report.driver,
        "gpus": report.gpus,
        "links": report.links,
        "problems": report.problems,
        "nodeStatus": {f"fracgpu.io/{k}": v for k, v in report.totals(args.units_per_gpu).items()},
        "annotation": json.loads(report.annotation(args.units_per_gpu)),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
