"""Imported by the server the demo forks its processes from (:mod:`streamlearn.kafka.launch`): what the
node, sync and produce commands import once they run (kafka-python's clients and codecs, river's
detectors with scipy, the learners), and the compiled code every node loads at start (the run
kernel, the prediction writer, ADWIN), done there once instead of in every child."""

import crc32c  # noqa: F401  (kafka-python's compiled CRC-32C, when importable)
import kafka.admin  # noqa: F401
import lz4.frame  # noqa: F401
import river.drift  # noqa: F401  (with scipy.stats: half a second alone)
import river.linear_model  # noqa: F401
import zstandard  # noqa: F401
from kafka import KafkaConsumer, KafkaProducer  # noqa: F401

import streamlearn.evaluation  # noqa: F401
import streamlearn.learners  # noqa: F401
import streamlearn.model_file  # noqa: F401
from streamlearn.evaluation import adwin
from streamlearn.kafka import proba_text
from streamlearn.node import run_kernel

run_kernel.warm_up()
proba_text.warm_up()
adwin.warm_up()
