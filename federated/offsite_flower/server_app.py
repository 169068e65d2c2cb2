"""The coordinator's side (the model owner, as in FedBiOT): start every data owner from the
package's adapter, run FedAvg weighted by each one's number of training examples, write each
round's average as an adapter file (`offsite adapter --arrays`) and the last one as the run's
output, which `offsite plug` accepts. A summary (`federated-summary.json` in the work folder)
records per round the clients, examples, losses, bytes sent each way and seconds.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from .common import read_arrays, record_bytes, run_offsite, write_arrays

app = ServerApp()


class OffsiteFedAvg(FedAvg):
    """FedAvg that refuses incomplete rounds and writes each round's adapter."""

    def __init__(self, binary: str, package: str, peft: list[str], work: Path, clients: int):
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
            weighted_by_key="num-examples",
        )
        self.binary, self.package, self.peft, self.work = binary, package, peft, work
        self.clients = clients
        self.rounds: list[dict] = []
        self.sent_bytes = 0
        self.started = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sent_bytes = record_bytes(arrays) * len(messages)
        self.started = time.time()
        return messages

    def aggregate_train(self, server_round: int, replies):
        replies = list(replies)
        good = [m for m in replies if m.has_content()]
        if len(good) < self.clients:
            errors = [str(m.error) for m in replies if m.has_error()]
            raise RuntimeError(
                f"round {server_round}: {len(good)} of {self.clients} data owners replied "
                f"({'; '.join(errors) or 'no error reported'}); no partial average is written"
            )
        arrays, metrics = super().aggregate_train(server_round, good)
        clients = [dict(m.content["metrics"]) for m in good]
        path = self.work / f"round{server_round}-adapter"
        examples = sum(int(c["num-examples"]) for c in clients)
        write_adapter(self, arrays, path, f"FedAvg round {server_round} of {len(good)} data "
                      f"owners ({examples} training examples), Flower")
        self.rounds.append({
            "round": server_round,
            "clients": clients,
            "examples": examples,
            "adapter": str(path),
            "bytes_to_clients": self.sent_bytes,
            "bytes_from_clients": sum(record_bytes(m.content["arrays"]) for m in good),
            "seconds": time.time() - self.started,
            "weighted_metrics": dict(metrics) if metrics is not None else {},
        })
        return arrays, metrics


def write_adapter(strategy: OffsiteFedAvg, arrays: ArrayRecord, path: Path, origin: str) -> None:
    """Writes `arrays` as an adapter file of the package (checked by `offsite adapter`)."""
    plain = path.with_name(path.name + ".arrays.safetensors")
    write_arrays(arrays, plain)
    run_offsite(strategy.binary, ["adapter", strategy.package, "--arrays", str(plain),
                                  "--origin", origin, "-o", str(path), *strategy.peft])
    plain.unlink()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Runs the federated rounds and writes the final adapter."""
    cfg = context.run_config
    for key in ("package", "workdir", "output"):
        if not os.path.isabs(str(cfg[key])):
            raise ValueError(f"run config `{key}` must be an absolute path, not {cfg[key]!r}")
    binary, package = str(cfg["offsite"]), str(cfg["package"])
    work = Path(str(cfg["workdir"]))
    work.mkdir(parents=True, exist_ok=True)
    peft = shlex.split(str(cfg["peft-args"]))
    clients, rounds, seed = int(cfg["min-clients"]), int(cfg["rounds"]), int(cfg["seed"])

    initial = work / "round0-adapter"
    run_offsite(binary, ["adapter", package, "--seed", str(seed), "-o", str(initial), *peft])
    strategy = OffsiteFedAvg(binary, package, peft, work, clients)
    train_config = ConfigRecord({
        "peft-args": str(cfg["peft-args"]),
        "tune-args": str(cfg["tune-args"]),
        "seed": seed,
    })
    started = time.time()
    result = strategy.start(
        grid=grid,
        initial_arrays=read_arrays(initial),
        num_rounds=rounds,
        timeout=float(cfg["round-timeout"]),
        train_config=train_config,
    )
    if len(strategy.rounds) != rounds:
        raise RuntimeError(f"{len(strategy.rounds)} of {rounds} rounds completed")
    output = Path(str(cfg["output"]))
    write_adapter(strategy, result.arrays, output,
                  f"FedAvg over {rounds} rounds of {clients} data owners, Flower")
    summary = {
        "package": package,
        "output": str(output),
        "rounds": strategy.rounds,
        "peft_args": str(cfg["peft-args"]),
        "tune_args": str(cfg["tune-args"]),
        "seconds": time.time() - started,
    }
    tmp = work / "federated-summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, work / "federated-summary.json")
