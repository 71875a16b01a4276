"""A daemon SIGKILLed between the ledger write and the result never acts twice after a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from .kube_double import KubeDouble, deployment, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]


async def child(ledger: Path, kubeconfig: Path, hang: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.act.child_executor", "--ledger", str(ledger), "--kubeconfig", str(kubeconfig),
        "--hang", hang, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run_to_end(ledger: Path, kubeconfig: Path) -> list[dict[str, object]]:
    proc = await child(ledger, kubeconfig, "no")
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def kill_while_hanging(ledger: Path, kubeconfig: Path, hang: str) -> None:
    proc = await child(ledger, kubeconfig, hang)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.strip() == b"HANGING", line
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize(("hang", "patches"), [("before", 0), ("after", 1)])
async def test_sigkill_between_ledger_write_and_result_never_acts_twice(
        tmp_path: Path, hang: str, patches: int) -> None:
    double = await KubeDouble().start()
    try:
        double.add_deployment(deployment("checkout", replicas=2))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", double.port)
        ledger = tmp_path / "ledger.jsonl"
        await kill_while_hanging(ledger, kubeconfig, hang)
        states = [json.loads(x)["state"] for x in ledger.read_text().splitlines()]
        assert states == ["planned", "executing"]  # durable before the actuator ran
        assert len(double.calls("PATCH")) == patches

        outs = await run_to_end(ledger, kubeconfig)  # restart: same incident, same decision
        (doubt,) = [o for o in outs if o["record"] == "Action"]
        assert doubt["outcome"] == "failed" and str(doubt["reason"]).startswith("in doubt")
        assert [o["labels"]["alertname"] for o in outs if o["record"] == "Alert"] == ["AiopsRemediationFailed"]
        assert len(double.calls("PATCH")) == patches  # nothing executed again
        assert double.deployments[("default", "checkout")]["spec"]["replicas"] == 2 + patches
        assert await run_to_end(ledger, kubeconfig) == []  # and a third start has nothing left to do
    finally:
        await double.stop()


async def test_clean_run_acts_exactly_once(tmp_path: Path) -> None:
    double = await KubeDouble().start()
    try:
        double.add_deployment(deployment("checkout", replicas=2))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", double.port)
        ledger = tmp_path / "ledger.jsonl"
        (done,) = await run_to_end(ledger, kubeconfig)
        assert done["outcome"] == "done"
        assert await run_to_end(ledger, kubeconfig) == []
        assert double.calls("PATCH") == [("PATCH", "/apis/apps/v1/namespaces/default/deployments/checkout/scale")]
        assert double.deployments[("default", "checkout")]["spec"]["replicas"] == 3
    finally:
        await double.stop()
