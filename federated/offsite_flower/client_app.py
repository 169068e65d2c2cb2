"""The data owner's side: each round, tune the received adapter on private data with the
`offsite` binary and return the tuned adapter's tensors and the number of training examples.

Node config (`flower-supernode --node-config '…'`): `package` (the emulator package received from
the model owner), `data` (private training data), optionally `val` (validation data), `workdir`
(where the round's adapters stay, on this machine) and `offsite` (the binary; default `offsite`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .common import read_arrays, run_offsite, write_arrays

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round: received arrays → adapter file → `offsite tune --init-adapter` → arrays."""
    node = context.node_config
    config = msg.content["config"]
    server_round = int(config["server-round"])
    binary = str(node.get("offsite", "offsite"))
    package = str(node["package"])
    work = Path(str(node["workdir"]))
    work.mkdir(parents=True, exist_ok=True)
    peft = shlex.split(str(config["peft-args"]))

    # The coordinator's adapter, checked against this package by `offsite adapter`.
    received = work / f"round{server_round}-received.safetensors"
    write_arrays(msg.content["arrays"], received)
    start = work / f"round{server_round}-start"
    run_offsite(binary, ["adapter", package, "--arrays", str(received), "-o", str(start), *peft])

    tuned = work / f"round{server_round}-tuned"
    summary = work / f"round{server_round}-summary.json"
    args = ["tune", package, "--data", str(node["data"]), "--init-adapter", str(start)]
    if node.get("val"):
        args += ["--val", str(node["val"])]
    args += ["--seed", str(int(config["seed"]) + server_round), "--summary", str(summary)]
    args += ["-o", str(tuned), *peft, *shlex.split(str(config["tune-args"]))]
    run_offsite(binary, args)

    s = json.loads(summary.read_text())
    metrics = {"num-examples": int(s["examples"]), "tokens": int(s["tokens"] or 0)}
    for key in ("final_train_loss", "best_val_loss", "seconds"):
        if s.get(key) is not None:
            metrics[key.replace("_", "-")] = float(s[key])
    content = RecordDict({"arrays": read_arrays(tuned), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
