"""Shared pieces of the reliability tests (faults, checkpoints): services as real CLI processes,
node services as threads, a near-separable stream and its publisher, a local S3 server for a
durable broker. No tests here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
from kafka import KafkaProducer

from streamlearn.kafka.codecs import encode_sample_batch
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.status import StatusReader
from streamlearn.kafka.topics import samples_topic

from separable import make_data

FEATURES = ["a", "b", "c"]
CLASSES = [0, 1]


def batches(X, y, first_seq: int = 0, chunk: int = 20) -> list:
    """Binary batch records of ``chunk`` samples, sequence numbers from ``first_seq``."""
    return [encode_sample_batch(X[i:i + chunk], y[i:i + chunk], first_seq=first_seq + i, names=FEATURES)
            for i in range(0, len(y), chunk)]


def publish(bootstrap, settings, prefix, streams: dict, seconds: float | None = None) -> None:
    """Publish ``{node: [records]}``; with ``seconds``, each node's records spread over that time.

    Returns once the broker acknowledged every record (``acks=all``); raises if it refused one.
    """
    producer = KafkaProducer(**settings.producer_kwargs(bootstrap))
    try:
        schedule = sorted((i / len(recs), node, i) for node, recs in streams.items() for i in range(len(recs)))
        t0 = time.monotonic()
        sent = []
        for when, node, i in schedule:
            if seconds:
                time.sleep(max(0.0, t0 + when * seconds - time.monotonic()))
            sent.append(producer.send(samples_topic(prefix, node), streams[node][i], partition=0))
        producer.flush()
        for future in sent:
            future.get(timeout=30)
    finally:
        producer.close()


class S3Server:
    """A local S3-compatible server (moto's ``moto.server``, objects kept in its memory) with one bucket.

    Tansu's durable storage is an object store (``s3://<bucket>/``); this one outlives the broker
    process, so a broker restarted with the same storage finds its topics again. ``env`` is what
    ``EmbeddedBroker(env=...)`` needs to reach it.
    """

    def __init__(self, log_path, bucket: str = "tansu"):
        from streamlearn.kafka.broker import free_port

        self.bucket, self.port, self.log_path = bucket, free_port(), str(log_path)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.env = {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "streamlearn",
                    "AWS_SECRET_ACCESS_KEY": "streamlearn", "AWS_DEFAULT_REGION": "us-east-1"}
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="streamlearn", aws_secret_access_key="streamlearn")
        deadline = time.monotonic() + 30
        while True:  # the bucket is made as soon as the server answers
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception as exc:  # noqa: BLE001 - connection refused while it starts
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    with open(self.log_path, "rb") as fh:
                        tail = fh.read()[-2000:].decode("utf-8", "replace")
                    raise RuntimeError(f"the S3 server on {self.endpoint} did not start ({exc}):\n{tail}") from exc
                time.sleep(0.1)
        self.client = client

    @property
    def storage(self) -> str:
        return f"s3://{self.bucket}/"

    def objects(self) -> int:
        """How many objects the bucket holds (Tansu's records, offsets and metadata)."""
        return sum(page.get("KeyCount", 0) for page in
                   self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Proc:
    """A ``streamlearn`` CLI command as a process of its own (its stderr in ``log_path``)."""

    def __init__(self, args: list, bootstrap: str, prefix: str, log_path):
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_TOPIC_PREFIX=prefix,
                   OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.log_path = str(log_path)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "streamlearn.cli", *map(str, args)], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no leave, no commit, no checkpoint, no flush."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=20)
        self._log.close()

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.alive:
                self.proc.kill()
                self.proc.wait()
            self._log.close()

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")[-3000:]


def node_args(node: int, *extra, protocol: str = "dynamic:delta=1.0,b=1") -> list:
    return ["node", "--id", node, "--features", ",".join(FEATURES), "--classes", ",".join(map(str, CLASSES)),
            "--lr", 0.5, "--protocol", protocol, "--batch-size", 10, *extra]


class Threads:
    """Node services as threads (cheaper than processes where nobody gets killed)."""

    def __init__(self, bootstrap, settings, prefix):
        self.bootstrap, self.settings, self.prefix = bootstrap, settings, prefix
        self.running: list = []

    def node(self, node: int, **kw) -> NodeService:
        kw = {"learner_params": {"lr": 0.5, "scale": True}, "status_interval": 0.2, "commit_interval": 0.3,
              "protocol": "dynamic:delta=1.0,b=1", **kw}
        svc = NodeService(NodeConfig(node=node, features=FEATURES, classes=CLASSES, device="cpu",
                                     bootstrap=self.bootstrap, prefix=self.prefix, settings=self.settings, **kw))
        t = threading.Thread(target=svc.run, daemon=True)
        t.start()
        self.running.append((svc, t))
        return svc

    def stop(self, svc=None) -> None:
        for s, t in list(self.running):
            if svc is None or s is svc:
                s.stop()
                t.join(timeout=20)
                assert not t.is_alive()
                self.running.remove((s, t))


def wait(reader: StatusReader, condition, timeout: float = 40.0, what: str = "condition", procs=()) -> None:
    """Wait for ``condition(reader)``; on failure say what the statuses and the process logs show."""
    if reader.wait_for(condition, timeout):
        return
    nodes = {n: {k: s.get(k) for k in ("samples", "joined", "epoch", "state", "relearned")}
             for n, s in reader.nodes.items()}
    sync = reader.sync and {k: reader.sync.get(k) for k in ("epoch", "nodes_alive", "full_syncs", "pending")}
    logs = "\n".join(f"--- {p.log_path}\n{p.log()}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}: nodes={nodes} sync={sync}\n{logs}")
