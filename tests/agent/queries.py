"""`nvidia-smi --query-gpu` outputs for tests that need GPUs of chosen identities."""

from pathlib import Path

HEADER = "index, uuid, name, memory.total [MiB], memory.used [MiB], pci.bus_id"


def query_csv(path: Path, uuids: list[str], name: str = "NVIDIA A100-SXM4-80GB") -> Path:
    """The CSV (with its header, as the agent runs it) of 80 GB GPUs with these UUIDs."""
    rows = [
        f"{i}, {uuid}, {name}, 81920, 0, 00000000:{16 + i:02X}:00.0" for i, uuid in enumerate(uuids)
    ]
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path
