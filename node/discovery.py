"""Device discovery: which tool to run for a vendor, running it, and parsing what it printed.

Parsers are pure (text in, devices out; one module per vendor) and tested on outputs recorded on
real machines (tests/agent/fixtures/real/SOURCES.md). A tool that is missing, fails, or prints
something that does not give every figure a ComputeNode needs raises DiscoveryError naming the
tool and what is missing; the agent publishes that as DiscoveryFailed, never as a Ready node
with wrong figures.

The vendor comes from `--vendor`. Without it, the agent runs each vendor's tool and takes the
first that succeeds: a file that merely exists (an empty hostPath mount of `npu-smi` on an
NVIDIA node) proves nothing. For NVIDIA, NVML (`nvidia-ml-py`) is read when libnvidia-ml loads,
with nvidia-smi as the fallback.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from hcs.vendors import VENDOR_NAMES, VendorName
from node import nvml
from node.ascend import parse_npu_smi, parse_npu_topo
from node.cambricon import parse_cnmon
from node.devices import DiscoveryError, RawDevice, Topology
from node.hygon import parse_hy_smi
from node.nvidia import QUERY, parse_nvidia_smi, parse_nvidia_topo

__all__ = [
    "COMMANDS",
    "TOOLS",
    "DiscoveryError",
    "RawDevice",
    "ToolRunner",
    "Topology",
    "detect_vendor",
    "discover",
    "parse_cnmon",
    "parse_hy_smi",
    "parse_npu_smi",
    "parse_npu_topo",
    "parse_nvidia_smi",
    "parse_nvidia_topo",
]

log = logging.getLogger("hcs.agent")

TOOLS: Final = ("nvidia-smi", "nvidia-smi-topo", "npu-smi", "npu-smi-topo", "hy-smi", "cnmon")
COMMANDS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    # With its header (no `noheader`): columns are found by name.
    "nvidia-smi": (("nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,nounits"),),
    "nvidia-smi-topo": (("nvidia-smi", "topo", "-m"),),
    "npu-smi": (("npu-smi", "info"),),
    "npu-smi-topo": (("npu-smi", "info", "-t", "topo"),),
    # hy-smi, like rocm-smi, prints every `--show…` asked for in one JSON; older builds that
    # refuse a flag get the memory-only call.
    "hy-smi": (
        (
            "hy-smi",
            "--showproductname",
            "--showbus",
            "--showtemp",
            "--showuniqueid",
            "--showmeminfo",
            "vram",
            "--json",
        ),
        ("hy-smi", "--showmeminfo", "vram", "--json"),
    ),
    "cnmon": (("cnmon",),),
}
VENDOR_TOOLS: Final[dict[VendorName, tuple[str, str | None]]] = {
    "nvidia": ("nvidia-smi", "nvidia-smi-topo"),
    "huawei": ("npu-smi", "npu-smi-topo"),
    "hygon": ("hy-smi", None),
    "cambricon": ("cnmon", None),
}
PARSERS: Final[dict[str, Callable[[str], list[RawDevice]]]] = {
    "nvidia-smi": parse_nvidia_smi,
    "npu-smi": parse_npu_smi,
    "hy-smi": parse_hy_smi,
    "cnmon": parse_cnmon,
}
TOPOLOGY_PARSERS: Final[dict[str, Callable[[str], Topology]]] = {
    "nvidia-smi-topo": parse_nvidia_topo,
    "npu-smi-topo": parse_npu_topo,
}
# Where the tools live when the driver's bin folder is mounted but not on PATH.
SEARCH_PATHS: Final = {
    "nvidia-smi": ("/usr/local/nvidia/bin/nvidia-smi", "/run/nvidia/driver/usr/bin/nvidia-smi"),
    "npu-smi": ("/usr/local/bin/npu-smi", "/usr/local/sbin/npu-smi"),
    "hy-smi": ("/opt/hyhal/bin/hy-smi",),
    "cnmon": ("/usr/bin/cnmon", "/usr/local/neuware/bin/cnmon"),
}
assert set(VENDOR_TOOLS) == set(VENDOR_NAMES)


class ToolRunner:
    """Tool outputs for one discovery: from saved files (`--tool-output TOOL=FILE`) or by
    running the tool, each at most once."""

    def __init__(self, saved: Mapping[str, Path] | None = None, timeout: float = 30.0) -> None:
        self.saved = dict(saved or {})
        self.timeout = timeout
        self._outputs: dict[str, str] = {}

    def output(self, tool: str) -> str:
        if tool not in self._outputs:
            self._outputs[tool] = self._read(tool)
        return self._outputs[tool]

    def _read(self, tool: str) -> str:
        if tool in self.saved:
            try:
                return self.saved[tool].read_text(encoding="utf-8", errors="replace")
            except OSError as exc:
                raise DiscoveryError(f"{tool}: cannot read {self.saved[tool]}: {exc}") from None
        last: DiscoveryError | None = None
        for command in COMMANDS[tool]:
            try:
                return self._run(command)
            except DiscoveryError as exc:
                last = exc
        assert last is not None
        raise last

    def _run(self, command: tuple[str, ...]) -> str:
        binary = shutil.which(command[0]) or next(
            (p for p in SEARCH_PATHS.get(command[0], ()) if Path(p).is_file()), None
        )
        shown = " ".join(command)
        if binary is None:
            raise DiscoveryError(f"{command[0]} not found (is the driver installed and mounted?)")
        try:
            done = subprocess.run(
                [binary, *command[1:]],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DiscoveryError(f"{shown}: no answer within {self.timeout:g} s") from None
        except OSError as exc:
            raise DiscoveryError(f"{shown}: cannot run {binary}: {exc.strerror}") from None
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise DiscoveryError(
                f"{shown} exited {done.returncode}: {message[0] if message else 'no output'}"
            )
        return done.stdout

    def available(self, tool: str) -> bool:
        """The tool ran and printed something (or its output was given)."""
        try:
            return bool(self.output(tool).strip())
        except DiscoveryError:
            return False


def detect_vendor(runner: ToolRunner) -> VendorName | None:
    """The vendor whose tool output was given, else whose tool actually runs."""
    for vendor, (tool, _) in VENDOR_TOOLS.items():
        if tool in runner.saved:
            return vendor
    if runner.saved:
        return None  # only topology files were given: nothing says which devices
    for vendor, (tool, _) in VENDOR_TOOLS.items():
        if runner.available(tool):
            return vendor
    return None


def discover(
    vendor: VendorName, runner: ToolRunner, *, use_nvml: bool = True
) -> tuple[list[RawDevice], Topology]:
    """Devices and topology of this node. Raises DiscoveryError. A topology tool that fails
    only loses the topology (devices still count) and says so in the topology's notes."""
    tool, topo_tool = VENDOR_TOOLS[vendor]
    if vendor == "nvidia" and use_nvml and tool not in runner.saved:
        found = nvml.discover()
        if found is not None:
            return found
    devices = PARSERS[tool](runner.output(tool))
    topology = Topology()
    if topo_tool is not None and (topo_tool in runner.saved or tool not in runner.saved):
        try:
            topology = TOPOLOGY_PARSERS[topo_tool](runner.output(topo_tool))
        except DiscoveryError as exc:
            log.warning("topology unknown: %s", exc.message)
            topology = Topology(notes=(f"topology unknown: {exc.message}",))
    return devices, topology
