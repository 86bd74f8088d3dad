"""What the cluster watch costs on the real clusters' path: every node's Docker engine reached over SSH.

    scripts/build_sim_image.sh pytest-sglang-pd-sim:latest
    python benchmarks/watch_cost.py [--image pytest-sglang-pd-sim:latest] [--seconds 20] [--repeat 3]

Brings the shipped docker-ssh.json deployment up (1P1D, the router beside prefill) on two loopback "nodes" of a
throwaway sshd (127.0.0.2, 127.0.0.3), then alternates windows of ``--seconds`` with the cluster idle and with a
``ClusterWatch`` on it (no benchmark running: what is measured is the watch alone). Per window: the CPU the suite's
process used (its SSH client threads included), the CPU the nodes' side of SSH used (the sshd, its sessions and the
commands they ran: the machine is shared, so not its total), and the watch's polls (one exit-status command per node per ``watch.POLL_S``); then the
latency of one such poll. The table gives the medians over ``--repeat`` windows of each kind.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_sglang_pd import plan, watch  # noqa: E402
from pytest_sglang_pd.cluster import LiveCluster  # noqa: E402
from selftests.configs import sim_config  # noqa: E402
from selftests.conftest import throwaway_sshd  # noqa: E402


def node_cpu_s(sshd_pid: int) -> float:
    """CPU seconds the nodes' side of SSH used: the sshd, its per-connection processes and the commands they ran
    and reaped (utime, stime, cutime, cstime of each; the machine itself is shared, so not its total)."""
    pids = [sshd_pid, *(int(p) for p in Path(f"/proc/{sshd_pid}/task/{sshd_pid}/children").read_text().split())]
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(v) for v in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def window(cluster: LiveCluster, sshd_pid: int, seconds: float, watched: bool) -> tuple[float, float, int]:
    """(suite CPU s/s, nodes' SSH-side CPU s/s, polls) over one window, the watch on or off."""
    polls = [0]
    exit_codes = cluster.runtime.exit_codes

    def counted(procs):
        polls[0] += 1
        return exit_codes(procs)

    cluster.runtime.exit_codes = counted
    own, node, t0 = own_cpu_s(), node_cpu_s(sshd_pid), time.monotonic()
    try:
        if watched:
            with watch.ClusterWatch(cluster, "watch-cost", stall_s=3600):
                time.sleep(seconds)
        else:
            time.sleep(seconds)
    finally:
        cluster.runtime.exit_codes = exit_codes
    took = time.monotonic() - t0
    return (own_cpu_s() - own) / took, (node_cpu_s(sshd_pid) - node) / took, polls[0]


def poll_latency(cluster: LiveCluster, n: int = 20) -> list[float]:
    """Seconds one exit-status poll of every watched process takes (one command per node, at once)."""
    procs = [rp for rp in cluster.procs.values() if rp.spec.role in ("prefill", "decode", "router")]
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        cluster.runtime.exit_codes(procs)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="pytest-sglang-pd-sim:latest")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, throwaway_sshd(Path(tmp)) as sshd:
        path = sim_config(Path(tmp), base="docker-ssh.json", prefill=(sshd.nodes[0],), decode=(sshd.nodes[1],),
                          router=sshd.nodes[0], tests=("gsm8k",), container_image=args.image,
                          container_name="sglang-pd-watch-cost",
                          ssh={"user": sshd.user, "key_file": sshd.key_file, "port": str(sshd.port)})
        cfg = plan.load_config(path)
        with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="watch-cost"), Path(tmp) / "run") as cluster:
            cluster.bring_up()
            runs: dict[bool, list[tuple[float, float, int]]] = {False: [], True: []}
            for i in range(args.repeat):
                for watched in (False, True):
                    runs[watched].append(window(cluster, sshd.pid, args.seconds, watched))
                    own, node, polls = runs[watched][-1]
                    print(f"  {'watched' if watched else 'idle   '} {i + 1}: suite {own:.3f} CPU s/s, nodes' SSH side "
                          f"{node:.3f} CPU s/s, {polls} polls", file=sys.stderr)
            latency = poll_latency(cluster)
    nodes = len({rp.spec.node for rp in cluster.procs.values()})
    med = {w: [statistics.median(r[k] for r in runs[w]) for k in range(3)] for w in runs}
    print(f"docker-ssh 1P1D on {nodes} nodes, windows of {args.seconds:g} s, medians of {args.repeat}\n")
    print("| | suite process CPU s/s | nodes' SSH side CPU s/s | exit-status polls/s |")
    print("|---|---|---|---|")
    for watched, label in ((False, "idle cluster"), (True, "with the watch")):
        own, node, polls = med[watched]
        print(f"| {label} | {own:.3f} | {node:.3f} | {polls / args.seconds:.2f} |")
    print(f"| the watch's cost | {med[True][0] - med[False][0]:+.3f} | {med[True][1] - med[False][1]:+.3f} | |")
    print(f"\none exit-status poll of every process (one command per node at once): median "
          f"{statistics.median(latency) * 1000:.0f} ms, max {max(latency) * 1000:.0f} ms over {len(latency)}")


if __name__ == "__main__":
    main()
