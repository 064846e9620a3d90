"""HCS started as a real process: its stderr is read as it is written, so a test waits for a
log line (the port a server really bound, with port 0 or `--metrics-port any`) instead of
guessing a free port or sleeping."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Started:
    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from hcs_cli.main import main; sys.exit(main())",
                *args,
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._lines.append("")  # end of stream
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first stderr line matching `pattern`; fails if the process ends first."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if found := compiled.search(line):
                        return found
                    if line == "":
                        raise AssertionError(f"ended before {pattern!r}:\n{self.stderr_locked()}")
                seen = len(self._lines)
                left = deadline - time.monotonic()
                assert left > 0, f"no {pattern!r} in {timeout} s:\n{self.stderr_locked()}"
                self._changed.wait(left)

    def stderr_locked(self) -> str:
        return "".join(self._lines)

    def port(self, what: str, timeout: float = 30.0) -> int:
        """The port the process logged for `what` (e.g. `hcs-extender-metrics`)."""
        return int(self.wait_for(rf"serving {re.escape(what)} .*?:(\d+)", timeout)[1])

    def stop(self, timeout: float = 15.0) -> tuple[int, str]:
        """SIGTERM, then the exit code and the whole stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(5)
        return code, self.stderr
