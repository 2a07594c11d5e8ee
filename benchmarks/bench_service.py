"""Service throughput and latency under 1, 8 and 32 concurrent clients, on loopback.

    .venv/bin/python benchmarks/bench_service.py [--model BUNDLE] [--backend onnx|int8]
        [--clients 1 8 32] [--requests 400] [--seconds 20]

Starts ``python -m carclf.serve`` in a subprocess, then each client sends real photos
(stanford-cars-dev test_upload, multipart like the web page) one after another on a keep-alive
connection. Each level stops after ``--requests`` requests or ``--seconds``, whichever comes
first. Before the server starts, the raw ONNX Runtime throughput of the same model at batch 32
is measured, so the table can say how much of it the service delivers.

The load generator is a minimal asyncio HTTP/1.1 client (prebuilt request bytes, one socket per
client): on a 2-core box it shares the CPU with the server, and a general-purpose client would
spend a sizeable share of the cores on itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import torch

from carclf.inference.onnx_backend import INT8_FILE, ONNX_FILE, OnnxBackend, default_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_inference import ROOT, TRAINED, images_per_second, preprocess  # noqa: E402
from test_serve_helpers import ServerProcess  # noqa: E402

DATA = ROOT.parent / "shared/data/stanford-cars-dev"


def bench_bundle(model: Path | None, work: Path, data: Path) -> Path:
    """A Lite0 224 px bundle with model.onnx and model.int8.onnx (weights do not change speed)."""
    import shutil

    from carclf.data.classmaps import SFDL_CLASSES
    from carclf.data.layouts import read_dataset
    from carclf.export.onnx import export_onnx
    from carclf.export.quantize import quantize_int8
    from carclf.models.bundle import BundleMeta, load_bundle, save_bundle
    from carclf.models.factory import build_net

    bundle = work / "bundle"
    source = model or (TRAINED if (TRAINED / "meta.json").is_file() else None)
    if source is not None:
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(source, bundle)
    elif not (bundle / "meta.json").is_file():
        meta = BundleMeta(
            backbone="tf_efficientnet_lite0",
            class_names=[en for en, _ in SFDL_CLASSES],
            class_names_local=[ru for _, ru in SFDL_CLASSES],
            image_size=224,
            mean=[0.5] * 3,
            std=[0.5] * 3,
        )
        save_bundle(build_net("tf_efficientnet_lite0", 10, weights="offline"), meta, bundle)
    net, meta = load_bundle(bundle)
    if not (bundle / ONNX_FILE).is_file() or source is not None:
        export_onnx(net, meta, bundle / ONNX_FILE)
    if not (bundle / INT8_FILE).is_file() or source is not None:
        train = read_dataset(data).train.sample(n=64, random_state=0)
        quantize_int8(
            bundle / ONNX_FILE, bundle / INT8_FILE, "static", preprocess(train["path"], meta)
        )
    return bundle


def multipart_request(host: str, photo: bytes, name: str) -> bytes:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    await reader.readexactly(length)
    return status


async def run_level(url: str, requests: list[bytes], clients: int, total: int, seconds: float):
    """Latencies (s) of successful requests, error count, wall time."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int):
        nonlocal errors, sent
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while sent < total and time.perf_counter() < deadline:
                req = requests[(sent + i) % len(requests)]
                sent += 1
                start = time.perf_counter()
                writer.write(req)
                await writer.drain()
                status = await _response(reader)
                if status == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, errors, time.perf_counter() - start


def batch_stats(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"carclf_batch_size_sum (\S+)", text).group(1))
    count = float(re.search(r"carclf_batch_size_count (\S+)", text).group(1))
    return total, count


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="trained bundle (default: see bench_inference)")
    p.add_argument("--backend", choices=("onnx", "int8"), default="onnx")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=400, help="per level, at most")
    p.add_argument("--seconds", type=float, default=20.0, help="per level, at most")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--work", type=Path, default=ROOT / "outputs/serve-bench/service")
    p.add_argument("--server-args", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)

    bundle = bench_bundle(args.model, args.work, args.data)
    onnx_file = bundle / (INT8_FILE if args.backend == "int8" else ONNX_FILE)
    photos = sorted((args.data / "test_upload").glob("*.jpg"))[:64]
    from carclf.models.bundle import read_meta

    meta = read_meta(bundle)
    backend, x = OnnxBackend(onnx_file), preprocess(photos[:32], meta)
    raw = {n: images_per_second(backend, x[:n], 4.0) for n in (1, 4, 32)}
    del backend

    server = ServerProcess(
        bundle, "--backend", args.backend, "--log-level", "warning", *args.server_args, threads=None
    )
    try:
        host = server.url.removeprefix("http://")
        requests = [multipart_request(host, f.read_bytes(), f.name) for f in photos]
        asyncio.run(run_level(server.url, requests, 4, 16, 10))  # warm-up
        rows, loads = [], [os.getloadavg()[0]]
        for clients in args.clients:
            before = batch_stats(server.url)
            lat, errors, wall = asyncio.run(
                run_level(server.url, requests, clients, args.requests, args.seconds)
            )
            after = batch_stats(server.url)
            loads.append(os.getloadavg()[0])
            batches = after[1] - before[1]
            mean_batch = (after[0] - before[0]) / batches if batches else 0.0
            q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [0] * 99
            rps = len(lat) / wall
            rows.append(
                f"| {clients} | {len(lat) + errors} | {rps:.1f} | {q[49] * 1000:.0f} "
                f"| {q[98] * 1000:.0f} | {errors} | {mean_batch:.1f} | {rps / raw[32]:.0%} "
                f"| {rps / max(raw.values()):.0%} |"
            )
    finally:
        server.stop()

    print(f"\nmodel: {bundle} ({args.backend}, {meta.image_size} px), photos: {args.data.name}")
    print(
        "raw ONNX Runtime, same model, img/s: "
        + ", ".join(f"batch {n}: {v:.1f}" for n, v in raw.items())
        + f" (threads={default_threads()})"
    )
    print(f"torch {torch.__version__}, server: python -m carclf.serve (1 process)")
    print(f"1-min load average during the runs: {min(loads):.1f}-{max(loads):.1f}\n")
    print(
        "| clients | requests | req/s | p50 ms | p99 ms | errors | mean model batch "
        "| of raw ORT b32 | of raw ORT best batch |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
