"""Sharded-item benchmarks: servers in processes of their own (the control plane is not in
the data path, so no Ray here), clients in this one, one run.

- compute where the data lives: a sharded ``sum(axis=0)`` over 2 servers against one server
  doing all of it;
- one-shard items through the cluster client against the plain client (put and get);
- parallel fetch over links: each server in a network namespace of its own behind a veth
  pair rate-limited with ``tc`` (the links, not this machine's two cores, are the limit),
  one item sharded over N = 1, 2, 4 of them, aggregate get throughput against N links.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
from flight_bench import location_of, median_time, medians_interleaved, ours, process

import arrowbridge
from arrowbridge.cluster import ClusterClient

MIB = 1 << 20
LINK = "1gbit"
LINK_BYTES_PER_S = 1e9 / 8


@contextlib.contextmanager
def servers(n: int) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        locations = []
        for _ in range(n):
            _, line = stack.enter_context(process(ours("--port", "0")))
            locations.append(location_of(line))
        yield locations


def compute(size: int, repeats: int) -> dict:
    """``sum(axis=0)`` of a float64 (n, 1024) item: one server, and sharded over two."""
    x = np.random.default_rng(0).standard_normal((size // 8192, 1024))
    with servers(2) as (a, b):
        with arrowbridge.connect(a) as one:
            one.put("x", x)
            single = median_time(lambda: one.call("sum", one.stored("x"), axis=0), repeats)
            one.delete("x")
        with ClusterClient([a, b]) as two:
            two.put("x", x)
            sharded = median_time(lambda: two.call("sum", two.stored("x"), axis=0), repeats)
    return {"size": size, "single": single, "sharded": sharded}


SUM_HALF = """
import sys, time, numpy as np, arrowbridge
x = np.random.default_rng(0).standard_normal((int(sys.argv[1]) // 8192, 1024))
arrowbridge.call("sum", x, axis=0)
print("ready", flush=True)
sys.stdin.readline()
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    arrowbridge.call("sum", x, axis=0)
    times.append(time.perf_counter() - t)
print(sorted(times)[len(times) // 2], flush=True)
"""


def bandwidth_ceiling(size: int, repeats: int) -> float:
    """The time two processes take to sum half of ``size`` each, at the same time: what two
    servers on this machine could do at best, their memory bandwidth shared."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SUM_HALF, str(size // 2), str(repeats)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        p.stdout.readline()  # data made and warm
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    return max(float(p.communicate()[0].strip()) for p in procs)


def matmul(size: int, repeats: int) -> dict:
    """A compute-bound row-wise kernel, ``x @ w``: one server, and sharded over two."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((size // 8192, 1024))
    w = rng.standard_normal((1024, 64))
    with servers(2) as (a, b):
        with arrowbridge.connect(a) as one:
            one.put("x", x)
            single = median_time(lambda: one.call("matmul", one.stored("x"), w), repeats)
            one.delete("x")
        with ClusterClient([a, b]) as two:
            two.put("x", x)
            sharded = median_time(lambda: two.call("matmul", two.stored("x"), w), repeats)
    return {"size": size, "single": single, "sharded": sharded}


def one_shard(size: int, repeats: int) -> dict:
    """Put and get of a one-shard item through the cluster client, and through the plain
    client, over TCP (no shared memory: the transport of servers on other hosts), in turns
    (measured one after the other, the first ran 0.55-0.74x the second in two reports, and
    the reverse in a probe: the machine's drift, not the clients)."""
    x = np.random.default_rng(1).standard_normal((size // 8192, 1024))
    with (
        servers(1) as (a,),
        arrowbridge.connect(a, shm=False) as plain,
        ClusterClient([a], shm=False) as cluster,
    ):
        puts = medians_interleaved(
            {"plain": lambda: plain.put("plain", x), "cluster": lambda: cluster.put("sharded", x)},
            repeats,
            warmups=2,
        )
        gets = medians_interleaved(
            {"plain": lambda: plain.get("plain"), "cluster": lambda: cluster.get("sharded")},
            repeats,
        )
    return {
        "size": size,
        "plain": (puts["plain"], gets["plain"]),
        "cluster": (puts["cluster"], gets["cluster"]),
    }


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@contextlib.contextmanager
def namespaces(n: int) -> Iterator[list[str]]:
    """``n`` network namespaces, each linked to this one by a veth pair whose both ends are
    rate-limited to LINK; yields the address of each namespace's end."""
    made = []
    try:
        for i in range(n):
            ns, host, inner = f"abbench{i}", f"abh{i}", f"abn{i}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", inner)
            sh("ip", "link", "set", inner, "netns", ns)
            sh("ip", "addr", "add", f"10.77.{i}.1/24", "dev", host)
            sh("ip", "link", "set", host, "up")
            inside = ("ip", "netns", "exec", ns)
            sh(*inside, "ip", "addr", "add", f"10.77.{i}.2/24", "dev", inner)
            sh(*inside, "ip", "link", "set", inner, "up")
            sh(*inside, "ip", "link", "set", "lo", "up")
            tbf = ("root", "tbf", "rate", LINK, "burst", "1mb", "latency", "100ms")
            sh("tc", "qdisc", "add", "dev", host, *tbf)
            sh(*inside, "tc", "qdisc", "add", "dev", inner, *tbf)
        yield [f"10.77.{i}.2" for i in range(n)]
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def iperf3_link(address: str) -> float | None:
    """iperf3 from this namespace to a server in namespace 0, in bytes/s (one link)."""
    if shutil.which("iperf3") is None:
        return None
    server = subprocess.Popen(
        ["ip", "netns", "exec", "abbench0", "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            ["iperf3", "-c", address, "-t", "3", "-R", "-J"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8
    finally:
        server.wait(timeout=10)


def links(counts: list[int], size: int, repeats: int) -> dict:
    """Aggregate get throughput of one item sharded over N servers, one per namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None:
        return {"skipped": "needs root, ip and tc (iproute2) to make network namespaces"}
    x = np.random.default_rng(2).standard_normal((size // 8192, 1024))
    result: dict = {"size": size, "link": LINK, "by_n": {}}
    try:
        with namespaces(max(counts)) as addresses:
            result["iperf3"] = iperf3_link(addresses[0])
            for n in counts:
                with contextlib.ExitStack() as stack:
                    locations = []
                    for i in range(n):
                        command = [
                            "ip", "netns", "exec", f"abbench{i}",
                            *ours("--host", addresses[i], "--port", "7070"),
                        ]  # fmt: skip
                        _, line = stack.enter_context(process(command))
                        locations.append(location_of(line))
                    with ClusterClient(locations, shm=False) as client:
                        client.put("x", x)
                        t = median_time(lambda client=client: client.get("x"), repeats)
                    result["by_n"][n] = size / t
    except subprocess.CalledProcessError as e:
        return {"skipped": f"network namespaces unavailable: {e.stderr.decode().strip()}"}
    return result


def run(quick: bool) -> dict:
    size = 64 * MIB if quick else 1024 * MIB
    repeats = 3 if quick else 5
    print("cluster: compute ...", file=sys.stderr)
    r = {"compute": compute(size, repeats)}
    r["compute"]["ceiling"] = bandwidth_ceiling(size, repeats)
    r["matmul"] = matmul(16 * MIB if quick else 256 * MIB, repeats)
    print("cluster: one shard ...", file=sys.stderr)
    r["one_shard"] = one_shard(32 * MIB if quick else 256 * MIB, repeats)
    if quick:
        r["links"] = {"skipped": "not in quick mode (minutes of rate-limited transfers)"}
    else:
        print("cluster: links ...", file=sys.stderr)
        r["links"] = links([1, 2, 4], 128 * MIB, 3)
    return r


def report(r: dict, fmt_size, fmt_time) -> tuple[list[str], list[str]]:
    c = r["compute"]
    ratio = c["sharded"] / c["single"]
    o = r["one_shard"]
    put_ratio = o["cluster"][0] / o["plain"][0]
    get_ratio = o["cluster"][1] / o["plain"][1]
    ceiling = c["ceiling"] / c["single"]
    m = r["matmul"]
    m_ratio = m["sharded"] / m["single"]
    headline = [
        f"- Sharded `sum(axis=0)` of {fmt_size(c['size'])} float64 over 2 servers: "
        f"{fmt_time(c['sharded'])}, {ratio:.2f}× the time of one server doing all of it "
        f"({fmt_time(c['single'])}); this machine's shared memory bandwidth allows "
        f"{ceiling:.2f}× at best (two processes summing half each at once). "
        f"Compute-bound `matmul` of {fmt_size(m['size'])}: {m_ratio:.2f}×.",
        f"- One-shard item through the cluster client, {fmt_size(o['size'])} over TCP: put "
        f"{put_ratio:.2f}×, get {get_ratio:.2f}× the plain client's.",
    ]
    rows = [
        "| case | time | ratio |",
        "| --- | ---: | ---: |",
        f"| sum(axis=0), {fmt_size(c['size'])}, one server | {fmt_time(c['single'])} | 1.00× |",
        f"| sum(axis=0), {fmt_size(c['size'])}, sharded over 2 servers | "
        f"{fmt_time(c['sharded'])} | {ratio:.2f}× |",
        f"| sum(axis=0): two processes summing half each at once, no Flight (the memory "
        f"bandwidth ceiling) | {fmt_time(c['ceiling'])} | {ceiling:.2f}× |",
        f"| matmul (x @ w, w 1024×64), {fmt_size(m['size'])}, one server | "
        f"{fmt_time(m['single'])} | 1.00× |",
        f"| matmul, {fmt_size(m['size'])}, sharded over 2 servers | {fmt_time(m['sharded'])} "
        f"| {m_ratio:.2f}× |",
        f"| put {fmt_size(o['size'])}, plain client (TCP) | {fmt_time(o['plain'][0])} | 1.00× |",
        f"| put {fmt_size(o['size'])}, cluster client, one shard | {fmt_time(o['cluster'][0])} "
        f"| {put_ratio:.2f}× |",
        f"| get {fmt_size(o['size'])}, plain client (TCP) | {fmt_time(o['plain'][1])} | 1.00× |",
        f"| get {fmt_size(o['size'])}, cluster client, one shard | {fmt_time(o['cluster'][1])} "
        f"| {get_ratio:.2f}× |",
        "",
    ]
    links_r = r["links"]
    if "skipped" in links_r:
        rows.append(f"Parallel fetch over rate-limited links: not measured ({links_r['skipped']}).")
    else:
        iperf = links_r.get("iperf3")
        rows += [
            f"Parallel fetch: each server in a network namespace of its own behind a veth pair "
            f"limited to {links_r['link']} each way (`tc tbf`); one {fmt_size(links_r['size'])} "
            "item sharded over N of them, fetched by one client. iperf3 over one link: "
            + (f"{iperf * 8 / 1e9:.2f} Gbit/s." if iperf else "iperf3 missing."),
            "",
            "| N servers | aggregate get | × N links |",
            "| ---: | ---: | ---: |",
        ]
        for n, rate in links_r["by_n"].items():
            rows.append(
                f"| {n} | {rate * 8 / 1e9:.2f} Gbit/s | {rate / (n * LINK_BYTES_PER_S):.2f}× |"
            )
            headline_rate = rate
        n_max = max(links_r["by_n"])
        headline.append(
            f"- Parallel fetch over {n_max} rate-limited {links_r['link']} links: "
            f"{headline_rate * 8 / 1e9:.2f} Gbit/s, "
            f"{headline_rate / (n_max * LINK_BYTES_PER_S):.2f}× {n_max} links."
        )
    return headline, rows
