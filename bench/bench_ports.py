"""Exposed-port benchmark: HTTP through the API's port proxy against the same server reached
directly inside the sandbox's network namespace (the raw primitive), in the same run.

Latency: small GETs on one kept-alive connection — through the path route with an API key, with
a signed token, on a public port via the host route, and directly (a client thread that joined
the sandbox's netns); `GET /healthz` shows what any API request costs on the same machine.
Throughput: a large download and upload with curl through the proxy and with
`nsenter -t PID1 -n curl` inside the netns. Run as root: `.venv/bin/python -m
bench.bench_ports [-n 500] [--mb 256]`.
"""

from __future__ import annotations

import argparse
import ctypes
import http.client
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
from tests.integration.sandbox_app import APP_PATH, APP_SOURCE

from bench._common import print_table, save, summary
from bench.bench_api import free_port, start_serve
from hutch.runtime.templates import SHARED_TEST_TEMPLATE_DIR, TemplateStore

CLONE_NEWNET = 0x40000000


def timed_gets(get: object, n: int) -> list[float]:
    """n sequential calls of `get()` (after 20 warm-up calls), each timed."""
    assert callable(get)
    for _ in range(20):
        get()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        get()
        out.append(time.perf_counter() - t)
    return out


def in_netns(pid: int, fn: object) -> object:
    """Run `fn()` in a fresh thread that joined the network namespace of `pid`."""
    assert callable(fn)
    box: dict[str, object] = {}

    def work() -> None:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        box["r"] = fn()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    return box["r"]


def direct_latency(pid: int, n: int) -> list[float]:
    """The raw primitive: http.client on 127.0.0.1:8000 from inside the sandbox's netns."""

    def run() -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", 8000)

        def get() -> None:
            conn.request("GET", "/")
            conn.getresponse().read()

        try:
            return timed_gets(get, n)
        finally:
            conn.close()

    r = in_netns(pid, run)
    assert isinstance(r, list)
    return r


def curl_mb_s(args: list[str], nbytes: int) -> float:
    """MB/s of one curl transfer (its own timing, so process start-up is not counted)."""
    out = subprocess.run(
        [
            *args,
            "-sS",
            "--max-time",
            "300",
            "-o",
            "/dev/null",
            "-w",
            "%{time_total} %{size_download} %{size_upload}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    secs, down, up = float(out[0]), int(out[1]), int(out[2])
    assert max(down, up) == nbytes, (out, nbytes)
    return round(nbytes / secs / 1e6, 1)


def main(n: int, mb: int) -> None:
    """Run every measurement and print/save the results."""
    TemplateStore(SHARED_TEST_TEMPLATE_DIR).ensure("base")
    data = Path(tempfile.mkdtemp(prefix="hutch-bench-ports-"))
    port = free_port()
    proc = start_serve(data, port)
    base = f"http://127.0.0.1:{port}"
    key = (data / "admin-key").read_text().strip()
    auth = {"Authorization": f"Bearer {key}"}
    blob = data.parent / f"{data.name}.blob"
    try:
        with httpx.Client(base_url=base, headers=auth, timeout=120) as api:
            sid = api.post("/v1/sandboxes", json={"timeout_s": 1800}).json()["sandbox_id"]
            api.put(f"/v1/sandboxes/{sid}/files", params={"path": APP_PATH}, content=APP_SOURCE)
            api.post(
                f"/v1/sandboxes/{sid}/exec",
                json={"cmd": ["python3", APP_PATH, "8000"], "background": True, "timeout_s": None},
            )
            path = f"/v1/sandboxes/{sid}/ports/8000"
            deadline = time.monotonic() + 30
            while api.get(path + "/").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the app in the sandbox did not answer")
                time.sleep(0.05)
            init = json.loads(next(data.rglob(f"{sid}/init.json")).read_text())
            pid = int(init["pid"])
            token = api.post(path + "/token").json()["token"]

            rows: list[dict[str, object]] = []
            direct = summary("direct in netns (http.client, keep-alive)", direct_latency(pid, n))
            rows.append(direct)
            bp50 = float(direct["p50_ms"])  # type: ignore[arg-type]
            with httpx.Client(base_url=base, headers=auth, timeout=60) as c:
                # What any API request costs here (no database, no runner): the floor.
                xs = timed_gets(lambda: c.get("/healthz").raise_for_status(), n)
                rows.append(summary("API floor: GET /healthz", xs, bp50))
                xs = timed_gets(lambda: c.get(path + "/").raise_for_status(), n)
                rows.append(summary("proxy, path route, API key", xs, bp50))
            with httpx.Client(base_url=base, timeout=60) as c:
                c.get(path + "/", params={"hutch_token": token}).raise_for_status()  # cookie
                xs = timed_gets(lambda: c.get(path + "/").raise_for_status(), n)
                rows.append(summary("proxy, path route, signed token", xs, bp50))
            api.put(path, json={"public": True})
            host = {"Host": f"8000-{sid.replace('_', '-')}.localhost:{port}"}
            with httpx.Client(base_url=base, headers=host, timeout=60) as c:
                xs = timed_gets(lambda: c.get("/").raise_for_status(), n)
                rows.append(summary("proxy, host route, public", xs, bp50))
            print_table("HTTP GET latency (sequential, one connection)", rows)

            nbytes = mb << 20
            blob.write_bytes(os.urandom(nbytes))
            via = ["curl", "-H", f"Authorization: Bearer {key}"]
            inside = ["nsenter", "-t", str(pid), "-n", "curl"]
            down_q = f"/bytes?n={nbytes}"
            up = ["-X", "POST", "--data-binary", f"@{blob}", "-H", "Expect:"]
            tput = [
                {
                    "transfer": f"download {mb} MiB",
                    "direct_MB_s": curl_mb_s([*inside, f"http://127.0.0.1:8000{down_q}"], nbytes),
                    "proxy_MB_s": curl_mb_s([*via, f"{base}{path}{down_q}"], nbytes),
                },
                {
                    "transfer": f"upload {mb} MiB (echoed)",
                    "direct_MB_s": curl_mb_s([*inside, *up, "http://127.0.0.1:8000/echo"], nbytes),
                    "proxy_MB_s": curl_mb_s([*via, *up, f"{base}{path}/echo"], nbytes),
                },
            ]
            for r in tput:
                r["proxy_share"] = round(float(r["proxy_MB_s"]) / float(r["direct_MB_s"]), 3)  # type: ignore[arg-type]
            print_table("Throughput (curl)", tput)
            api.delete(f"/v1/sandboxes/{sid}")
        print(f"results: {save('ports', {'latency': rows, 'throughput': tput})}")
    finally:
        blob.unlink(missing_ok=True)
        proc.terminate()
        proc.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(data)], check=False)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--mb", type=int, default=256)
    a = ap.parse_args()
    main(a.n, a.mb)
