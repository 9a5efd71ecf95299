"""The JSON log lines as they leave the process: one object a line, each in one write, keys
sorted, UTC time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lines(calls: str) -> list[str]:
    """stderr of a fresh process that configured logging and ran ``calls`` (``log`` bound)."""
    script = ("from purgeproxy import logs\n"
              "logs.configure('info')\n"
              "log = logs.get_logger('purgeproxy.test')\n" + calls)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return run.stderr.splitlines()


def test_a_line_carries_its_time_in_utc_to_the_microsecond() -> None:
    before = time.time()
    [line] = _lines("log.info('one', n=1)\n")
    after = time.time()
    stamp = json.loads(line)["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 0.001 <= when <= after


def test_keys_are_sorted_and_what_json_cannot_take_is_still_logged() -> None:
    """orjson renders the lines; an integer past 64 bits, a set or a non-string key (which it
    refuses or would) still give a whole line, as the standard library's renderer gave."""
    lines = _lines("log.info('big', size=2 ** 70)\n"
                   "log.info('odd', kinds={'a'}, by_status={200: 3})\n"
                   "log.warning('plain', zeta=1, alpha='é')\n")
    big, odd, plain = (json.loads(line) for line in lines)
    assert big["size"] == 2 ** 70
    assert odd["by_status"] == {"200": 3} and odd["kinds"] == "{'a'}"  # structlog's repr fallback
    assert list(plain) == sorted(plain) and plain["alpha"] == "é" and plain["level"] == "warning"


def test_each_log_line_is_written_whole_in_one_write() -> None:
    """The workers of ``serve --workers`` share one stderr: a line written in two pieces (the
    message, then its newline, as ``print`` writes it) can run into another worker's line, which
    a JSON log pipeline then cannot read (seen in CI: two ``starting`` lines on one)."""
    script = ("import json, sys\n"
              "writes = []\n"
              "class Recorder:\n"
              "    def write(self, text): writes.append(text); return len(text)\n"
              "    def flush(self): pass\n"
              "    def isatty(self): return False\n"
              "sys.stderr = Recorder()\n"
              "from purgeproxy import logs\n"
              "logs.configure('info')\n"
              "logs.get_logger('purgeproxy').info('one', n=1)\n"
              "logs.get_logger('purgeproxy').warning('two')\n"
              "print(json.dumps(writes))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    writes = json.loads(run.stdout)
    assert len(writes) == 2 and all(text.endswith("\n") and text.count("\n") == 1 for text in writes), writes
    assert [json.loads(text)["event"] for text in writes] == ["one", "two"]
