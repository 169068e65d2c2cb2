#!/usr/bin/env python3
"""Federated offsite-tuning on one machine, over loopback: one Flower SuperLink, one SuperNode per
data owner (each with its own private data split), the offsite ServerApp/ClientApp pair of this
folder, and every process stopped by its id at the end (also on failure or Ctrl-C).

    python federated/local.py --package EMU.offsite --client A.jsonl --client B.jsonl \
        --rounds 2 --tune-args "--max-steps 50 --batch-size 4" --output fed.safetensors \
        --workdir runs/fed

A client is `TRAIN[,VAL]`. On real machines, run `flower-superlink` at the model owner and
`flower-supernode --node-config 'package="…" data="…" workdir="…"'` at each data owner, then
`flwr run federated/ CONNECTION --run-config '…'` (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited ({proc.returncode}): {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{log.stem} did not listen on port {port} within {seconds} s")


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--package", required=True, help="emulator package (both sides' copy)")
    ap.add_argument("--client", action="append", required=True, help="TRAIN[,VAL] per data owner")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tune-args", default="--max-steps 50")
    ap.add_argument("--peft-args", default="")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--output", required=True, help="the final adapter")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--offsite", default=shutil.which("offsite") or "offsite")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for the whole run")
    a = ap.parse_args()

    work = Path(a.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    offsite = str(Path(a.offsite).resolve()) if os.sep in a.offsite else a.offsite
    package, output = str(Path(a.package).resolve()), str(Path(a.output).resolve())
    home = work / "flwr-home"
    home.mkdir(exist_ok=True)
    link = free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "offsite-local"\n\n[superlink.offsite-local]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    # Flower starts its own helpers (flower-superexec, flwr-serverapp …) by name.
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, FLWR_HOME=str(home), PYTHONUNBUFFERED="1", PATH=path)
    procs: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, cmd: list[str]) -> tuple[subprocess.Popen, Path]:
        log = work / f"{name}.log"
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        procs.append((name, proc))
        print(f"started {name} (pid {proc.pid}), log {log}", flush=True)
        return proc, log

    try:
        proc, log = start("superlink", [str(BIN / "flower-superlink"), "--insecure",
                                        "--host", "127.0.0.1", "--port", str(link),
                                        "--disable-runtime-dependency-installation"])
        wait_for_port(link, proc, log)
        for i, spec in enumerate(a.client):
            train, _, val = spec.partition(",")
            client = work / f"client{i}"
            node = {"package": package, "data": str(Path(train).resolve()),
                    "workdir": str(client), "offsite": offsite}
            if val:
                node["val"] = str(Path(val).resolve())
            config = " ".join(f"{k}={toml_str(v)}" for k, v in node.items())
            start(f"supernode{i}", [str(BIN / "flower-supernode"), "--insecure",
                                    "--superlink", f"127.0.0.1:{link}",
                                    "--port", str(free_port()), "--node-config", config])
        run_config = {"offsite": offsite, "package": package, "rounds": a.rounds,
                      "min-clients": len(a.client), "seed": a.seed, "peft-args": a.peft_args,
                      "tune-args": a.tune_args, "workdir": str(work / "server"),
                      "output": output, "round-timeout": a.timeout}
        overrides = " ".join(
            f"{k}={toml_str(v) if isinstance(v, str) else v}" for k, v in run_config.items())
        summary = work / "server" / "federated-summary.json"
        if summary.exists():
            summary.unlink()
        started = time.time()
        run = subprocess.run([str(BIN / "flwr"), "run", str(HERE), "offsite-local",
                              "--run-config", overrides, "--stream"], env=env,
                             timeout=a.timeout, check=False)
        if run.returncode != 0 or not summary.exists():
            print(f"the federated run failed (flwr run exit {run.returncode}); logs in {work}",
                  file=sys.stderr)
            return 1
        rounds = json.loads(summary.read_text())["rounds"]
        for r in rounds:
            print(f"round {r['round']}: {len(r['clients'])} clients, {r['examples']} examples, "
                  f"{r['bytes_to_clients'] / 1e6:.1f} MB out, "
                  f"{r['bytes_from_clients'] / 1e6:.1f} MB back, {r['seconds']:.1f} s")
        print(f"wrote {output} in {time.time() - started:.1f} s; summary {summary}")
        return 0
    finally:
        for name, proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in reversed(procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            print(f"stopped {name} (pid {proc.pid})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
