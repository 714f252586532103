"""The ``streamlearn`` command line: settings enter here and are validated here."""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys

from streamlearn.errors import BadRecordError, StreamlearnError
from streamlearn.logs import add_log_args, export_log_env, setup_logging
from streamlearn.metrics_cli import add_metrics_args, start_metrics

__all__ = ["main"]


# ---- shared argument groups ----------------------------------------------------------------------


def _add_source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stream")
    g.add_argument("--source", default="sea", help="source name (see `streamlearn streams`) or csv:PATH")
    g.add_argument("--label", help="label column of a csv source")
    g.add_argument("--features", help="comma-separated feature columns of a csv source (default: all others)")
    g.add_argument("--classes", help="comma-separated labels of a csv source; any other label is a bad record")
    g.add_argument("--categorical", action="append", default=[], metavar="COL=a|b|c",
                   help="categories of a text column of a csv source, one-hot encoded (repeatable; default: the "
                        "values of the first 1000 rows)")
    g.add_argument("--param", dest="source_param", action="append", default=[], metavar="KEY=VALUE",
                   help="source parameter, e.g. variant=2 for sea, change_speed=0.01 for rbf (repeatable; "
                        "see `streamlearn streams`)")
    g.add_argument("--drift", action="append", default=[], metavar="SPEC",
                   help="drift to inject, e.g. sudden@5000, gradual@5000:width=1000 (repeatable)")
    g.add_argument("--on-bad-record", choices=("raise", "skip"), default="raise",
                   help="what to do with a bad record (a csv row, a NaN value): stop with an error naming it, "
                        "or skip and count it")
    g.add_argument("--missing", choices=("impute", "skip", "error"), default="impute",
                   help=_MISSING_HELP)
    g.add_argument("--seed", type=int, default=0, help="seed of the stream, learner and protocol")


_LEARNER_HELP = ("learner name (see `streamlearn streams`), or your own model as package.module:factory "
                 "(imported from PYTHONPATH or the current folder): a torch factory factory(n_features, n_classes) "
                 "-> nn.Module mapping a float32 (B, n_features) batch to (B, n_classes) logits (it may also take "
                 "features and classes; seeded with --seed, so every node starts alike; averaged like mlp), or a river "
                 "classifier class or no-argument factory (learns locally, cannot be averaged: --protocol nosync)")

_SPLIT_HELP = ("split ONE stream across nodes: round-robin | key:COLUMN (one node per distinct value of COLUMN, "
               "numbered in order of first appearance; --nodes must match their number) | key:COLUMN:hash "
               "(integers mod m, other values by a stable hash) | key:COLUMN:value | key:COLUMN:V=N,V=N,...")

_MISSING_HELP = ("missing feature values (an empty csv field; null/NaN in a JSON reading): impute = the mean of "
                 "that feature's values seen so far at that node (no indicator column; a row missing a feature "
                 "never seen yet is skipped), skip = drop the row; both counted and shown (summary, node status, "
                 "demo). A csv row with an empty label is left out and counted. error = a bad record "
                 "(--on-bad-record) (default: impute)")

_LR_DECAY_HELP = ("step size that decays over TAU steps, lr / sqrt(1 + (t - t_reset) / TAU), and restarts where "
                  "--detector sees the error rise (simulate, node, demo; evaluate only decays) (torch learners; "
                  "default: a constant step size)")


def _add_learner_args(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("learner")
    g.add_argument("--learner", default=default, help=_LEARNER_HELP)
    g.add_argument("--lr", type=float, help="learning rate (torch learners, river-logreg)")
    g.add_argument("--lr-decay", type=float, metavar="TAU", help=_LR_DECAY_HELP)
    g.add_argument("--hidden", help="hidden layer sizes of mlp/cnn, comma-separated, e.g. 32,32")
    g.add_argument("--optimizer", choices=("sgd", "adam"), help="optimizer of torch learners")
    g.add_argument("--weight-decay", type=float, help="L2 penalty of torch learners' optimizer (default 0)")
    g.add_argument("--scale", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise features online (torch learners; default on)")
    _add_task_args(g)


_REGRESSION_LOSSES = ("squared", "huber")


def _add_task_args(g) -> None:
    """--task and --loss: a float label (regression) or classes."""
    g.add_argument("--task", choices=("classification", "regression"),
                   help="regression: the label is a number (a csv column), learnt with --loss huber or squared "
                        "(target standardised online) and scored by MAE and RMSE (default: classification, or "
                        "regression when --loss is squared or huber)")
    g.add_argument("--loss", choices=("cross_entropy", "hinge") + _REGRESSION_LOSSES,
                   help="loss of torch learners (default: cross_entropy; huber for --task regression: its step is "
                        "bounded, while squared's grows with the error and needs a smaller --lr, about 0.01, on "
                        "many features)")


def _add_pipeline_task_arg(p) -> None:
    p.add_argument("--task", choices=("classification", "regression"), default="classification",
                   help="regression: a csv file's --label is a number, learnt by torch learners with the Huber loss "
                        "(target standardised online) and shown as MAE (default: classification)")


def _task(args) -> str:
    """``"regression"`` or ``"classification"`` from --task and --loss, which must agree."""
    task, loss = getattr(args, "task", None), getattr(args, "loss", None)
    implied = None if loss is None else ("regression" if loss in _REGRESSION_LOSSES else "classification")
    if task is not None and implied is not None and task != implied:
        raise StreamlearnError(f"--loss {loss} is a {implied} loss, but --task is {task}")
    return task or implied or "classification"


# csv source parameters that have a flag of their own
_CSV_FLAGS = {"label": "--label", "features": "--features", "classes": "--classes",
              "on_bad_record": "--on-bad-record", "categorical": "--categorical", "missing": "--missing"}


def _source_params(args) -> dict:
    from streamlearn.streams import SOURCES

    params = {}
    kind = args.source.partition(":")[0].strip().lower()
    is_csv = kind == "csv"
    known = SOURCES.get("csv:PATH" if is_csv else kind, {}).get("params")
    for item in args.source_param:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise StreamlearnError(f"--param: expected KEY=VALUE, got {item!r}")
        if is_csv and key in _CSV_FLAGS:
            raise StreamlearnError(f"--param {key}: use {_CSV_FLAGS[key]}")
        if known is not None and key not in known:  # an unknown source is reported by make_source
            valid = [k for k in known if not (is_csv and k in _CSV_FLAGS)]
            raise StreamlearnError(f"--param {key}: source {args.source!r} has no parameter {key!r}; "
                                   f"valid: {', '.join(valid) or 'none'}")
        if key in params:
            raise StreamlearnError(f"--param {key}: given twice")
        params[key] = value  # make_source converts text to the parameter's type
    if is_csv:
        if not args.label:
            raise StreamlearnError("--label: a csv source needs the label column (--label COLUMN)")
        params["label"] = args.label
        params["on_bad_record"] = args.on_bad_record
        if _task(args) == "regression":
            if args.classes:
                raise StreamlearnError("--classes: a regression label is a number, it has no classes")
            params["task"] = "regression"  # float labels
        if getattr(args, "missing", "error") != "error":
            params["missing"] = "nan"  # empty fields come as NaN: imputed or skipped per node (_missing_policy)
        if args.features:
            params["features"] = [f.strip() for f in args.features.split(",") if f.strip()]
        if args.classes:
            params["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
        if args.categorical:
            params["categorical"] = list(args.categorical)
    elif args.label or args.features or args.classes or args.categorical:
        raise StreamlearnError(f"--label/--features/--classes/--categorical: only for csv sources, not {args.source!r}")
    return params


def _missing_policy(args) -> str | None:
    """--missing as node_streams' ``missing``: "impute" or "skip", None for error (a bad record)."""
    return None if getattr(args, "missing", "error") == "error" else args.missing


def _learner(args, torch_only: bool = False, stream=None):
    from streamlearn.learners import make_learner
    from streamlearn.learners.registry import learner_family

    family = learner_family(args.learner)  # imports a package.module:factory, or says why it cannot
    params = {}
    if stream is not None and family in ("torch", "river-linear"):
        # The layout of an averageable model is fixed by the stream's features and labels.
        params["features"] = list(stream.feature_names)
        if stream.classes is not None:
            params["classes"] = list(stream.classes)
    torch_names = ("logreg", "mlp", "cnn")
    if family == "torch":  # a custom torch module factory too: seeded, so every node builds the same w0
        params["seed"] = args.seed
        params["scale"] = _TORCH_CLI_DEFAULTS["scale"] if args.scale is None else args.scale
        if args.optimizer:
            params["optimizer"] = args.optimizer
        if args.weight_decay is not None:
            params["weight_decay"] = args.weight_decay
        if args.lr_decay is not None:
            params["lr_decay"] = args.lr_decay
    elif torch_only:
        from streamlearn.learners.custom import check_protocol, is_custom

        if not is_custom(args.learner):
            raise StreamlearnError(f"--learner: the simulator trains torch learners {torch_names} or your own "
                                   f"package.module:factory, got {args.learner!r}")
        # your own river classifier: simulated node by node, nosync only (it cannot be averaged)
        for spec in (getattr(args, "compare", None) or [_protocol_spec(args)]):
            check_protocol(args.learner, spec)
    elif args.optimizer or args.scale is not None or args.weight_decay is not None or args.lr_decay is not None:
        raise StreamlearnError(f"--optimizer/--scale/--weight-decay/--lr-decay: only for torch learners {torch_names}")
    if _task(args) == "regression":
        if args.learner not in torch_names:
            raise StreamlearnError(f"--task regression: learners {torch_names} (a float label), got {args.learner!r}")
        if stream is not None and stream.classes is not None:
            raise StreamlearnError(f"--task regression: needs a numeric label, and source {args.source!r} has "
                                   f"classes {stream.classes!r}; use a csv source: csv:PATH --label COLUMN")
        params.pop("classes", None)
        params["loss"] = args.loss or "huber"  # bounded steps: squared at lr 0.05 diverged on Beijing air
    elif getattr(args, "loss", None):
        if args.learner not in torch_names:
            raise StreamlearnError(f"--loss: only for torch learners {torch_names}")
        params["loss"] = args.loss
    if args.lr is not None:
        params["lr"] = args.lr
    if args.hidden:
        try:
            params["hidden"] = tuple(int(h) for h in args.hidden.split(","))
        except ValueError:
            raise StreamlearnError(f"--hidden: comma-separated integers, got {args.hidden!r}") from None
    if family != "torch" and "seed" not in params and hasattr(args, "seed"):
        from streamlearn.learners.custom import is_custom

        if not is_custom(args.learner):  # river models that draw random numbers (ARF) take --seed: repeatable runs
            params["seed"] = args.seed
    return make_learner(args.learner, **params)


def _write_json(path: str, payload: dict) -> None:
    from streamlearn.evaluation.run import jsonable

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(jsonable(payload), fh, indent=2, allow_nan=False, default=str)
    print(f"wrote {path}")


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(v, digits=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


# ---- commands ------------------------------------------------------------------------------------


# What the CLI gives a torch learner unless told otherwise (the Python default of scale is False).
_TORCH_CLI_DEFAULTS = {"scale": True}
# Parameters a torch architecture does not use, left out of `streamlearn streams`.
_TORCH_UNUSED = {"logreg": ("hidden", "kernel_size"), "mlp": ("kernel_size",)}


def _cli_learner_params(name: str) -> dict:
    """The parameters of learner ``name`` as the CLI uses them (its defaults; none the learner ignores)."""
    from streamlearn.learners.registry import learner_params

    params = learner_params(name)
    if name in ("logreg", "mlp", "cnn"):
        params = {k: v for k, v in params.items() if k not in _TORCH_UNUSED.get(name, ())}
        params.update(_TORCH_CLI_DEFAULTS)
        params["seed"] = 0  # --seed
    return params


def cmd_streams(args) -> int:
    from streamlearn.learners import LEARNERS
    from streamlearn.streams import DRIFT_KINDS, SOURCES

    def show(title, entries):
        print(title)
        for name, info in entries.items():
            if isinstance(info, dict):
                desc = info.get("description", "")
                params = info.get("params", {})
            else:
                desc, params = str(info), {}
            print(f"  {name:<24} {desc}")
            for k, v in params.items():
                print(f"  {'':<26}{k} = {v}")
        print()

    show("Sources (--source NAME [--param KEY=VALUE ...], or csv:PATH --label COLUMN):", SOURCES)
    show("Drift kinds (--drift KIND@POSITION[:param=value,...]):", DRIFT_KINDS)
    show("Learners (--learner NAME; --lr, --lr-decay, --hidden, --optimizer, --scale, --seed set those parameters):",
         {name: {"description": desc, "params": _cli_learner_params(name)} for name, desc in LEARNERS.items()})
    return 0


def cmd_evaluate(args) -> int:
    from streamlearn.evaluation import evaluate, plot_history
    from streamlearn.streams import inject, make_source

    from streamlearn.streams.nodes import WithMissing

    source = make_source(args.source, seed=args.seed, **_source_params(args))
    policy = _missing_policy(args)
    base = WithMissing(source, policy) if policy and getattr(source, "missing", None) == "nan" else source
    stream = inject(base, args.drift, node=0, seed=args.seed) if args.drift else base
    if args.n is None and getattr(stream, "n_samples", None) is None:
        args.n = 20_000
    learner = _learner(args, stream=stream)
    res = evaluate(stream, learner, n=args.n, batch_size=args.batch_size, window=args.window,
                   detector=None if args.detector == "none" else args.detector, one_sided=not args.two_sided,
                   progress=not args.no_progress, max_delay=args.max_delay, on_bad_record=args.on_bad_record,
                   loss_guard=not args.no_loss_guard)
    res.n_bad += getattr(source, "skipped", 0)  # records the csv source left out are skipped bad records too
    s = res.score
    if res.task == "regression":  # scores in the label's units; the detector watched the absolute error
        end = (lambda k: float(res.history[k][-1]) if len(res.history["position"]) else None)
        scores = [["MAE", _fmt(res.mae)], ["RMSE", _fmt(res.rmse)],
                  [f"rolling MAE (end, last {args.window})", _fmt(end("rolling_mae"))],
                  [f"rolling RMSE (end, last {args.window})", _fmt(end("rolling_rmse"))]]
    else:
        scores = [["accuracy", _fmt(res.accuracy)], ["log loss", _fmt(res.loss)],
                  ["rolling accuracy (end)",
                   _fmt(float(res.history["rolling_accuracy"][-1]) if len(res.history["position"]) else None)]]
    rows = [
        ["samples", res.n], ["skipped bad records", res.n_bad], *scores,
        ["drifts injected", len(res.events)], ["drifts detected (the error rose)", len(res.detections)],
    ]
    if s is not None and res.events:
        rows += [["true drifts found", f"{s.detected}/{len(s.events)}"], ["missed", s.missed],
                 ["false alarms", s.false_alarms],
                 ["false alarms per 10,000 samples", _fmt(s.false_alarm_rate, 2)],
                 ["mean detection delay", _fmt(s.mean_delay, 1)]]
    if res.detections or res.n_ignored:
        rows += [["firings ignored (the error did not rise)", res.n_ignored]]
    if res.settings.get("loss_guard"):  # an averageable classifier: the loss guard watched it
        last = res.divergences[-1] if res.divergences else None
        rows += [["loss explosions (guard: model restored)", len(res.divergences)]]
        if last is not None:
            rows += [["learning rate after the guard", _fmt(last["lr"], 4) if last["lr"] is not None else "-"],
                     ["learning stopped (guard)", f"at sample {last['position']}" if res.learning_stopped else "no"]]
    if base is not source:
        from streamlearn.sim.run import missing_counts

        counts = missing_counts([base])
        rows += [["missing values imputed" if policy == "impute" else "rows with a missing value skipped",
                  counts["imputed"] if policy == "impute" else counts["skipped"]],
                 ["records without a label left out", counts["unlabelled"]]]
        if policy == "impute" and counts["skipped"]:
            rows += [["rows skipped (a feature not seen yet)", counts["skipped"]]]
    if getattr(source, "categories", None):
        rows += [["one-hot text columns", ", ".join(source.categories)],
                 ["values outside the categories", sum(source.unseen_categories.values())]]
    print(_table(rows, ["evaluate", f"{args.source} / {args.learner}"]))
    if args.plot and res.task == "regression":
        print("--plot: draws rolling accuracy, not yet a regression's error; see --json's history "
              "(rolling_mae, rolling_rmse)", file=sys.stderr)
    elif args.plot:
        plot_history(res, res.events, res.detections, args.plot, title=f"{args.source} / {args.learner}")
        print(f"wrote {args.plot}")
    if args.json:
        _write_json(args.json, {"source": args.source, "drift": args.drift, "learner": args.learner, **res.to_dict()})
    return 0


def _protocol_spec(args) -> str:
    params = [f"{k}={getattr(args, k)}" for k in ("delta", "b", "C", "tau", "strength") if getattr(args, k) is not None]
    return args.protocol + (":" + ",".join(params) if params else "")


def _nodes(args, default: int) -> int | None:
    """--nodes, or None where a split by key:COLUMN counts its keys (one node per distinct value), else ``default``."""
    if args.nodes is not None:
        return args.nodes
    if args.split:
        from streamlearn.streams import parse_split

        if parse_split(args.split).get("how") == "first":
            return None
    return default


def cmd_simulate(args) -> int:
    from streamlearn.sim import run_comparison, simulate_once
    from streamlearn.sync.robust import check_clip

    common = dict(source=args.source, nodes=_nodes(args, 16), drifts=args.drift, schedule=args.schedule,
                  split=args.split, n=args.n, batch_size=args.batch_size, seed=args.seed,
                  source_params=_source_params(args), learner=_learner(args, torch_only=True),
                  progress=not args.no_progress, missing=_missing_policy(args))
    if args.guard is not None:  # guarded averaging (streamlearn.sync.guard)
        common["guard"] = (args.guard, args.guard_margin)
    common["clip"] = check_clip(args.clip)
    common["loss_guard"] = not args.no_loss_guard
    if args.compare:
        report = run_comparison(args.compare, out=args.out, window=args.window, detector=args.detector,
                                one_sided=not args.two_sided, **common)
        print(report["table"])
        if args.json:
            _write_json(args.json, report["payload"])  # the same payload as --out's comparison.json
        return 0
    summary = simulate_once(_protocol_spec(args), window=args.window, detector=args.detector,
                            one_sided=not args.two_sided, **common)
    print(summary["table"])
    if args.json:
        _write_json(args.json, summary["result"])
    return 0


def _setup_logging(verbose: bool = False) -> None:
    """Process set-up of a node or sync service. Logging itself is set up once, in :func:`main` (--verbose
    is --log-level DEBUG there)."""
    import torch

    # Small models, one process per node: more threads only fight over the cores.
    torch.set_num_threads(1)


def _options(args, names) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _run_service(args, service_cls, cfg, make_metrics) -> dict:
    """Run a node or sync service to its end, with its metrics endpoint when asked."""
    metrics, server = start_metrics(args, make_metrics)
    try:
        return service_cls(cfg, metrics=metrics).run(max_seconds=args.max_seconds)
    finally:
        if server is not None:
            server.stop()


def cmd_node(args) -> int:
    from streamlearn.kafka.node import NodeService, node_config_from_options
    from streamlearn.metrics import NodeMetrics

    _setup_logging(args.verbose)
    if _task(args) == "regression":  # a float label: one output, Huber loss unless --loss squared
        if args.classes:
            raise StreamlearnError("--classes: a regression node learns float targets, it takes no classes")
        args.loss = args.loss or "huber"
    if args.scale is None and args.learner in ("logreg", "mlp", "cnn"):
        args.scale = _TORCH_CLI_DEFAULTS["scale"]  # the same preprocessing as simulate and evaluate
    cfg = node_config_from_options(_options(args, (
        "id", "source", "features", "classes", "learner", "lr", "lr_decay", "hidden", "optimizer", "scale", "protocol",
        "batch_size",
        "seed", "window", "detector", "sync_timeout", "id_timeout", "max_pending", "label_ttl", "checkpoint_dir",
        "checkpoint_every", "guard", "guard_margin", "bootstrap", "prefix", "predictions", "missing", "loss",
        "sync_key_file")))
    # With --id auto the id is known only once the sync service assigned it: metrics are made then.
    final = _run_service(args, NodeService, cfg, lambda reg: functools.partial(NodeMetrics, reg))
    print(f"node {final.get('node', cfg.node)}: learned {final.get('samples', 0)} samples, accuracy {_fmt(final.get('accuracy'))}, "
          f"models sent {final.get('models_sent', 0)}, received {final.get('models_received', 0)}")
    return 0


def cmd_sync(args) -> int:
    from streamlearn.kafka.sync_service import SyncService, sync_config_from_options
    from streamlearn.metrics import SyncMetrics

    _setup_logging(args.verbose)
    names = ("protocol", "delta", "b", "C", "tau", "strength", "max_nodes", "timeout", "seed", "device", "max_norm",
             "state_dir", "id_lease", "id_grace", "bootstrap", "prefix", "max_params", "clip", "max_reports_per_second",
             "report_burst", "sync_key_file")
    if args.shard is not None and args.shard.strip().lower() == "group":
        return _sync_group(args, _options(args, names))
    cfg = sync_config_from_options(_options(args, names + ("shard",)))
    make = SyncMetrics
    if cfg.shard is not None:  # one shard's service: its samples labelled shard="K", as under --shard group
        from streamlearn.metrics import ShardRegistries

        def make(reg):
            return SyncMetrics(ShardRegistries(reg).registry(cfg.shard))
    final = _run_service(args, SyncService, cfg, make)
    print(f"sync: {final.get('full_syncs', 0)} full and {final.get('partial_syncs', 0)} partial syncs, "
          f"{final.get('models', 0)} models transferred")
    return 0


def _sync_group(args, options: dict) -> int:
    """``sync --shard group``: this member runs the shards Kafka's consumer group assigns it."""
    from streamlearn.kafka.sync_group import ShardGroup
    from streamlearn.kafka.sync_service import sync_config_from_options

    from streamlearn.metrics import ShardRegistries

    first = sync_config_from_options({**options, "shard": 0})  # the settings checked here, at the edge
    # one endpoint for the shards this member runs, their samples labelled shard="K"
    shard_metrics, server = start_metrics(args, ShardRegistries)
    group = ShardGroup(lambda k: sync_config_from_options({**options, "shard": k}), first.shards,
                       metrics=shard_metrics)
    try:
        group.run(max_seconds=args.max_seconds)
    finally:
        if server is not None:
            server.stop()
    print(f"sync group: stopped; {group.rebalances} assignments")
    return 0


def cmd_produce(args) -> int:
    from streamlearn.kafka.producer import Producer, ProducerConfig

    from streamlearn.metrics import ProducerMetrics

    cfg = ProducerConfig(source=args.source, nodes=_nodes(args, 4), rate=args.rate, drifts=tuple(args.drift),
                         schedule=args.schedule, split=args.split, n=args.n, format=args.format, batch=args.batch,
                         seed=args.seed, source_params=_source_params(args), progress=not args.no_progress,
                         bootstrap=args.bootstrap, prefix=args.prefix,
                         missing=None if _missing_policy(args) is None else "keep")  # the nodes impute or skip
    producer = Producer(cfg)  # with key:COLUMN it knows the number of nodes only once it has read the file
    metrics, server = start_metrics(args, lambda reg: ProducerMetrics(reg, nodes=producer.config.nodes))
    producer.metrics = metrics
    try:
        stats = producer.run(max_seconds=args.max_seconds)
    finally:
        if server is not None:
            server.stop()
    print(stats.summary())
    return 0


def cmd_drift(args) -> int:
    from streamlearn.kafka.control import inject_drift, parse_params

    res = inject_drift(args.bootstrap, args.prefix, args.node, args.kind, parse_params(args.param), wait=args.wait)
    print(f"sent {res.command.args['kind']} to node {args.node} (command {res.command.id}) "
          f"on {res.bootstrap}, topic {res.prefix}.control")
    if args.wait == 0:
        return 0
    if not res.events:
        print(f"warning: no producer applied command {res.command.id} within {args.wait:g} s: is a producer "
              f"running on {res.bootstrap} with --prefix {res.prefix} (the demo prints its own), with live drift "
              f"on and node {args.node}? A producer that rejects a command says why in its log.", file=sys.stderr)
        return 1
    applied = ", ".join(f"node {e.node} from sample {e.seq}" for e in sorted(res.events, key=lambda e: e.node or 0))
    print(f"applied by the producer: {applied}")
    return 0


def cmd_demo(args) -> int:
    from streamlearn.kafka.demo import DemoConfig, run_demo

    params = _source_params(args)  # a csv file's label, features, classes, categories (validated here)
    params.pop("missing", None)  # the demo's --missing: the producer keeps them missing, the nodes impute or skip
    run_demo(DemoConfig(nodes=_nodes(args, 4), source=args.source, drifts=args.drift or None,
                        schedule=args.schedule, rate=args.rate, learner=args.learner, protocol=args.protocol,
                        batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
                        duration=args.duration or None, out=args.out,
                        seed=args.seed, view_port=None if args.view_port < 0 else args.view_port,
                        view_host=args.view_host, guard=args.guard, guard_margin=args.guard_margin,
                        split=args.split, source_params=params, missing=args.missing, schema=args.schema,
                        task=_task(args), fork=args.fork))
    return 0


# ---- parser --------------------------------------------------------------------------------------


def _register_connect(sub) -> None:
    """Add ``streamlearn connect`` (:func:`streamlearn.connectors.cli.add_connect_parser`) to the subcommands.

    The one place :mod:`streamlearn` imports :mod:`streamlearn.connectors` (tests/test_imports.py checks it):
    the connectors sit above streamlearn and import it, so the import is lazy, made only when the
    parser is built.
    """
    from streamlearn.connectors.cli import add_connect_parser

    add_connect_parser(sub)


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or its text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default in (None, False, [], argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamlearn")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamlearn",
                     description="Learn online from drifting data streams on many nodes, synced by model averaging. "
                                 "Each command's --help lists its options.")
    parser.add_argument("--version", action="version", version=f"streamlearn {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _register_connect(sub)

    p = sub.add_parser("streams", help="list sources, drift kinds and learners with their parameters")
    p.set_defaults(func=cmd_streams)

    p = sub.add_parser("evaluate", help="prequential evaluation of one node with drift detection")
    _add_source_args(p)
    _add_learner_args(p, default="mlp")
    p.add_argument("--n", type=int, help="samples to evaluate (default: the whole file, or 20000 for generators)")
    p.add_argument("--batch-size", type=int, default=1, help="samples predicted before they are learned")
    p.add_argument("--window", type=int, default=1000, help="rolling accuracy window")
    p.add_argument("--detector", default="adwin", help="drift detector on the error stream (adwin, page_hinkley, kswin, ..., none)")
    p.add_argument("--max-delay", type=int, default=2000, help="largest delay at which a detection counts for a drift")
    p.add_argument("--two-sided", action="store_true",
                   help="report every firing of the detector, also where the error fell (default: only rises)")
    p.add_argument("--no-loss-guard", action="store_true",
                   help="no loss guard (default: an averageable learner whose loss explodes gets its last good model "
                        "back and half its learning rate, and stops learning after 4 such events; each is reported)")
    p.add_argument("--plot", help="PNG of rolling accuracy with injected and detected drifts")
    p.add_argument("--json", help="write the figures as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("simulate", help="m nodes in one process, synced by a protocol (vectorised)")
    _add_source_args(p)
    _add_learner_args(p, default="mlp")
    g = p.add_argument_group("nodes and protocol")
    g.add_argument("--nodes", type=int, help="number of nodes m (default 16; with --split key:COLUMN one per "
                                               "distinct value of COLUMN)")
    g.add_argument("--n", type=int, help="samples per node (default: the whole file split, or 40000 per node)")
    g.add_argument("--batch-size", type=int, default=10, help="mini-batch per node per round (one local step)")
    g.add_argument("--schedule", default="all", help="drift schedule over nodes: all | staggered:GAP | subset:0,3,5")
    g.add_argument("--split", help=_SPLIT_HELP + " (default: one generator per node; files are split round-robin)")
    g.add_argument("--protocol", default="dynamic", help="nosync | continuous | periodic | fedavg | dynamic | lsgd")
    g.add_argument("--delta", type=float, help="dynamic: divergence threshold Δ")
    g.add_argument("--b", type=int, help="dynamic/periodic/fedavg: steps between checks")
    g.add_argument("--C", type=float, help="fedavg: fraction of nodes per round")
    g.add_argument("--tau", type=int, help="lsgd: steps between pulls")
    g.add_argument("--strength", type=float, help="lsgd: pull strength λ")
    g.add_argument("--compare", nargs="+", metavar="SPEC",
                   help='run a grid, e.g. "periodic:b=1,2,4,8" "dynamic:delta=0.1,1" nosync')
    g.add_argument("--out", default="simulate-out", help="folder for --compare's JSON and plots")
    g.add_argument("--window", type=int, default=500, help="rolling accuracy window (per node)")
    g.add_argument("--detector", default="adwin", help="drift detector run on every node's error stream (or none)")
    g.add_argument("--two-sided", action="store_true",
                   help="score every firing of the detector, also where the error fell (default: only rises; "
                        "step-size restarts are always one-sided)")
    g.add_argument("--json", help="write the figures as JSON (with --compare: comparison.json's rows, "
                                  "matched accuracy and verdict)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_guard_args(g)
    g.add_argument("--clip", metavar="FACTOR", default=4.0,
                   help="robust aggregation as the sync service's --clip (centered clipping of a model whose move "
                        "is longer than FACTOR times the nodes' typical long move); none: off")
    g.add_argument("--no-loss-guard", action="store_true",
                   help="no loss guard (default: as on a node, a classifier whose loss explodes gets its last good "
                        "model back and half its learning rate; the serial learner too)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("produce", help="publish per-node streams (with drift injection) into Kafka")
    _add_source_args(p)
    p.add_argument("--nodes", type=int, help="number of node streams (default 4; with --split key:COLUMN one per "
                                              "distinct value of COLUMN)")
    p.add_argument("--rate", type=float, default=2000.0, help="samples per second per node (0: as fast as possible)")
    p.add_argument("--schedule", default="all", help="drift schedule over nodes: all | staggered:GAP | subset:0,3,5")
    p.add_argument("--split", help=_SPLIT_HELP)
    p.add_argument("--n", type=int, help="samples per node (default: endless for generators, the file for files)")
    p.add_argument("--format", choices=("json", "binary"), default="json", help="record format")
    p.add_argument("--batch", type=int, default=100, help="samples per binary batch / per send round")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    p.add_argument("--max-seconds", type=float, help="stop after this many seconds of publishing (counted once connected to the broker)")
    _add_kafka_args(p)
    add_metrics_args(p)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("node", help="one node: consume its topic, test-then-train, sync by the protocol")
    _add_task_args(p)
    p.add_argument("--id", required=True, help="node id (its topic is <prefix>.samples.<id>), or auto: the sync "
                                                "service assigns the lowest free id (docker compose --scale)")
    p.add_argument("--id-timeout", type=float, default=60.0, help="auto: seconds to wait for the sync service to assign an id")
    p.add_argument("--max-pending", type=int, default=100_000, help="readings held while waiting for their late label")
    p.add_argument("--label-ttl", type=float, help="seconds a reading waits for its late label before it is dropped "
                                                   "(default: until --max-pending readings wait)")
    p.add_argument("--source", help="source whose features and classes fix the model layout (e.g. sea)")
    p.add_argument("--features", help="comma-separated feature names (instead of --source)")
    p.add_argument("--classes", help="comma-separated labels (instead of --source)")
    p.add_argument("--learner", default="logreg", help=_LEARNER_HELP)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-decay", type=float, metavar="TAU", help=_LR_DECAY_HELP)
    p.add_argument("--hidden", help="hidden layer sizes, e.g. 32,32")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help="optimizer of torch learners")
    p.add_argument("--scale", action=argparse.BooleanOptionalAction, default=None,
                   help="standardise features online, as simulate does; the scaler's statistics are synced with the "
                        "model (torch learners; default on)")
    p.add_argument("--protocol", default="dynamic:delta=0.5,b=1", help="protocol spec; must match the sync service")
    p.add_argument("--batch-size", type=int, default=10, help="samples per local update")
    p.add_argument("--seed", type=int, default=0, help="learner seed: every node must use the same")
    p.add_argument("--window", type=int, default=1000, help="rolling accuracy window")
    p.add_argument("--detector", default="adwin", help="drift detector (adwin, page_hinkley, kswin, ..., none)")
    p.add_argument("--sync-timeout", type=float, default=5.0,
                   help="seconds to wait for the sync service before going on")
    p.add_argument("--checkpoint-dir", help="keep checkpoints here and resume from the newest on restart")
    p.add_argument("--checkpoint-every", type=int, default=10_000,
                   help="samples between two checkpoints (and one at stop)")
    p.add_argument("--missing", choices=("impute", "skip"), default="impute",
                   help="missing feature values (NaN in a binary batch, null in JSON): impute = the mean of that "
                        "feature's values this node has read so far (no indicator column; a row missing a feature "
                        "never seen yet is skipped), skip = drop the row; counted in the status (default: impute)")
    p.add_argument("--no-predictions", dest="predictions", action="store_false",
                   help="do not publish predictions to <prefix>.predictions (default: publish; see `streamlearn tail`)")
    _add_guard_args(p)
    _add_sync_key_arg(p)
    p.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    _add_kafka_args(p)
    add_metrics_args(p)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("sync", help="the sync service: drives the protocol over Kafka")
    p.add_argument("--protocol", default="dynamic", help="protocol name or full spec, e.g. dynamic:delta=0.5,b=1")
    p.add_argument("--delta", type=float, help="dynamic: divergence threshold Δ")
    p.add_argument("--b", type=int, help="dynamic/periodic/fedavg: steps between checks")
    p.add_argument("--C", type=float, help="fedavg: fraction of nodes per round")
    p.add_argument("--tau", type=int, help="lsgd: steps between pulls")
    p.add_argument("--strength", type=float, help="lsgd: pull strength")
    p.add_argument("--max-nodes", type=int, default=64, help="largest number of nodes")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds before a requested model is given up on")
    p.add_argument("--id-lease", type=float, default=10.0, help="seconds an auto-assigned node id lives without renewal")
    p.add_argument("--id-grace", type=float, default=3.0, help="seconds after start during which running nodes re-register")
    p.add_argument("--seed", type=int, default=0, help="seed of the protocol's random choices")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max-norm", type=float, default=1e6, help="refuse models whose L2 norm is above this")
    # strings: checked (with their "none") by SyncConfig, which names the option and the value
    p.add_argument("--clip", metavar="FACTOR", default=4.0,
                   help="robust aggregation: clip a model whose move from the reference ||w - r|| is longer than "
                        "FACTOR times the median over nodes of each node's longest recent move (centered clipping); "
                        "none: off")
    p.add_argument("--max-reports-per-second", metavar="RATE", default=100.0,
                   help="records one node id may send per second on sync.up; the excess, and a node's records for "
                        "1 s after a move of it 10 times beyond the clip bound, are dropped and counted "
                        "(rate_limited); none: no limit")
    p.add_argument("--report-burst", metavar="N", default=100,
                   help="records one node id may send at once above --max-reports-per-second")
    p.add_argument("--max-params", type=int, default=10_000_000,
                   help="the largest model (entries) a node may join with; the first join sizes the model bank "
                        "(--max-nodes rows of that size), so a larger one is rejected, not allocated")
    p.add_argument("--state-dir", help="keep the reference and protocol state here and resume from it on restart "
                                         "(default: none, a restart starts from the first join)")
    p.add_argument("--shard", metavar="K|group",
                   help="with a sharded protocol (e.g. periodic:b=8,shards=4,root=2): run shard K (0..shards-1) "
                        "alone, or group: join the services that share the shards through a Kafka consumer group "
                        "(each runs the shards Kafka assigns it and takes over a stopped member's from "
                        "--state-dir/shard-K; give them a shared --state-dir). The service of shard 0 hosts the "
                        "root (default: one service for every node, an unsharded protocol)")
    _add_sync_key_arg(p)
    p.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    _add_kafka_args(p)
    add_metrics_args(p)
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("drift", help="inject a drift live into a running producer (control topic)")
    p.add_argument("--node", default="all", help="node id, or all")
    p.add_argument("--kind", required=True, help="drift kind (see `streamlearn streams`), e.g. label-permutation")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="drift parameter (repeatable)")
    p.add_argument("--bootstrap", metavar="HOST:PORT",
                   help="Kafka cluster of the producer (default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092)")
    p.add_argument("--prefix", help="topic prefix of the running pipeline (default: KAFKA_TOPIC_PREFIX, else "
                                    "streamlearn); `streamlearn demo` prints its own")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for a producer to apply it (exit 1 if none did; 0: do not wait)")
    p.set_defaults(func=cmd_drift)

    p = sub.add_parser("demo", help="the whole pipeline on this machine: broker, producer, nodes, sync service")
    _add_pipeline_task_arg(p)
    p.add_argument("--nodes", type=int, help="number of node processes (default 4; with --split key:COLUMN one per "
                                              "distinct value of COLUMN)")
    p.add_argument("--source", default="sea", help="source of the nodes' streams (see `streamlearn streams`), "
                                                   "csv:PATH with --label, or a connector's: jsonl:PATH, "
                                                   "mqtt:HOST[:PORT]/TOPIC (a {node} level names the node), "
                                                   "http:[HOST:]PORT (POST /ingest), each with --schema")
    p.add_argument("--schema", metavar="FILE", help="the stream's schema (TOML or JSON) of a jsonl, mqtt or http "
                                                    "source; the nodes take its features and classes")
    p.add_argument("--label", help="label column of a csv source")
    p.add_argument("--features", help="comma-separated feature columns of a csv source (default: all others; "
                                      "date/time text columns are dropped, with a note)")
    p.add_argument("--classes", help="comma-separated labels of a csv source; any other label is a bad record")
    p.add_argument("--categorical", action="append", default=[], metavar="COL=a|b|c",
                   help="categories of a text column of a csv source, one-hot encoded (repeatable)")
    p.add_argument("--on-bad-record", choices=("raise", "skip"), default="raise",
                   help="a bad csv record (e.g. a non-numeric value): stop with an error naming it, or skip it")
    p.add_argument("--missing", choices=("impute", "skip", "error"), default="impute", help=_MISSING_HELP)
    p.add_argument("--split", help=_SPLIT_HELP + " (default: one generator per node; a file round-robin)")
    p.add_argument("--drift", action="append", default=[], metavar="SPEC",
                   help="drift schedule (repeatable; default for generators label-permutation@20000 and "
                        "feature-rotation@40000:angle=90; none for a file)")
    p.add_argument("--schedule", default="all", help="all | staggered:GAP | subset:0,3,5")
    p.add_argument("--rate", type=float, default=1000.0, help="samples per second per node")
    p.add_argument("--learner", default="logreg", help="learner of every node; " + _LEARNER_HELP)
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--lr-decay", type=float, metavar="TAU", help=_LR_DECAY_HELP)
    p.add_argument("--protocol", default="dynamic:delta=0.5,b=1", help="protocol spec, e.g. periodic:b=8")
    p.add_argument("--batch-size", type=int, default=10, help="mini-batch per local step")
    p.add_argument("--duration", type=float, default=60.0, help="seconds to run (0: until Ctrl-C)")
    p.add_argument("--out", default="demo-out", help="folder for the plot and the process logs")
    p.add_argument("--seed", type=int, default=0, help="seed of the streams and learners")
    p.add_argument("--view-port", type=int, default=8050, help="port of the live page (-1: none; 0: any free port)")
    p.add_argument("--view-host", default="127.0.0.1", help="address of the live page (0.0.0.0 exposes it)")
    p.add_argument("--no-fork", dest="fork", action="store_false",
                   help="start every process as a fresh interpreter (each then spends seconds importing) instead of "
                        "forking it from one server that imported streamlearn once (Linux; the default there)")
    _add_guard_args(p)
    p.set_defaults(func=cmd_demo, source_param=[])

    from streamlearn.model_file import add_export_parser  # `streamlearn export` (and its command) live there

    add_export_parser(sub)
    from streamlearn.kafka.tail import add_tail_parser  # `streamlearn tail predictions`

    add_tail_parser(sub)
    from streamlearn.kafka.broker import add_broker_parser  # `streamlearn broker`

    add_broker_parser(sub)
    add_log_args(parser)  # before or after the subcommand, on every one of them
    return parser


def _add_kafka_args(p) -> None:
    """--bootstrap and --prefix: which Kafka cluster and which pipeline's topics (flags win over the environment)."""
    p.add_argument("--bootstrap", metavar="HOST:PORT",
                   help="Kafka bootstrap servers (default: KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092, waited "
                        "for: start it with `streamlearn broker`)")
    p.add_argument("--prefix", help="topic prefix of the pipeline (default: KAFKA_TOPIC_PREFIX, else streamlearn)")


def _add_sync_key_arg(p) -> None:
    """--sync-key-file PATH: the shared secret that signs and verifies sync records (streamlearn.kafka.signing)."""
    p.add_argument("--sync-key-file", metavar="PATH",
                   help="file holding the shared secret (>= 16 bytes, surrounding whitespace stripped) that signs "
                        "and verifies every sync record with HMAC-SHA256; give nodes and the sync service the same "
                        "(default: the STREAMLEARN_SYNC_KEY environment variable, else unsigned, with a warning)")


def _add_guard_args(p) -> None:
    """--guard WINDOW and --guard-margin NATS: guarded averaging (streamlearn.sync.guard)."""
    p.add_argument("--guard", type=int, metavar="WINDOW",
                   help="guarded averaging: a node keeps its last WINDOW learned samples (>= 10) and declines a model "
                        "from the sync whose mean log loss on them is above its own model's by more than "
                        "--guard-margin (default: off)")
    p.add_argument("--guard-margin", type=float, default=0.05, metavar="NATS",
                   help="with --guard: how much worse (nats of mean log loss) an arriving model may be (default 0.05)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # once, at the edge, for every command; --verbose (node, sync) is the older spelling of DEBUG
        level = "DEBUG" if getattr(args, "verbose", False) else args.log_level
        setup_logging(level, args.log_format)
        export_log_env(level, args.log_format)  # the demo's nodes, sync and producer log the same way
        return args.func(args)
    except StreamlearnError as e:
        hint = ""
        if isinstance(e, BadRecordError) and e.skippable and getattr(args, "on_bad_record", None) == "raise":
            hint = " (--on-bad-record skip skips such records and counts them)"
        print(f"streamlearn {args.command}: error: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
