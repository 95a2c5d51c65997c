"""Command line: `gateway serve` runs the gateway; `gateway config check` validates a file."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from . import cli_client, heap, logs, threads
from . import config as config_mod
from .cluster import workers
from .cluster.wire import default_node_name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Real-time audio gateway: WebRTC (WHIP/WHEP) and RTP in and out.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("-c", "--config", help="TOML configuration file (default: built-in)")
    serve.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="HTTP port (default 8080)")
    serve.add_argument(
        "--ice-host",
        action="append",
        metavar="ADDR",
        help="address to offer as an ICE host candidate; repeat for several "
        "(default: all interfaces except loopback)",
    )
    serve.add_argument("--webrtc-udp-port", type=int, metavar="PORT",
                       help="one UDP port for every WebRTC session's media, e.g. 8189 "
                       "(default: a port per session)")
    serve.add_argument("--log-level", help="debug, info, warning or error (default info)")
    serve.add_argument("--log-format", choices=["auto", "json", "text"],
                       help="json (default when stderr is not a terminal) or text")
    serve.add_argument("--insecure", action="store_true",
                       help="allow serving beyond loopback with no credentials configured")
    serve.add_argument("--workers", metavar="N|auto",
                       help="worker processes on the same ports (default 1; auto: one per "
                       "core); more than 1 starts an embedded nats-server unless "
                       "--nats-url is given")
    serve.add_argument("--nats-url", action="append", metavar="URL",
                       help="NATS server of the cluster to join; repeat for several")
    serve.add_argument("--node-name", help="this node's name in the cluster (default: host)")
    check = sub.add_parser("config", help="configuration tools")
    check.add_argument("action", choices=["check"], help="check: validate a file and exit")
    check.add_argument("file", help="TOML file to validate")
    cli_client.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("streams", "outputs"):
        return cli_client.run(args)
    if args.command == "config":
        try:
            config_mod.load(args.file, environ=dict(os.environ))
        except config_mod.ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.file}: ok")
        return 0

    overrides: dict = {"http": {}, "webrtc": {}}
    if args.host:
        overrides["http"]["host"] = args.host
    if args.port:
        overrides["http"]["port"] = args.port
    if args.ice_host:
        overrides["webrtc"]["host_addresses"] = args.ice_host
    if args.webrtc_udp_port is not None:
        overrides["webrtc"]["udp_port"] = args.webrtc_udp_port
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.log_format:
        overrides["log_format"] = args.log_format
    if args.insecure:
        overrides["http"]["allow_insecure"] = True
    cluster: dict = {}
    if args.nats_url:
        cluster["nats_url"] = args.nats_url
    if args.node_name:
        cluster["node_name"] = args.node_name
    if args.workers and workers.WORKER_ENV not in os.environ:
        if args.workers != "auto" and not args.workers.isdigit():
            print("error: --workers takes a number or auto", file=sys.stderr)
            return 2
        cluster["workers"] = 0 if args.workers == "auto" else int(args.workers)
    if cluster:
        overrides["cluster"] = cluster
    try:
        cfg = config_mod.load(args.config, overrides, dict(os.environ))
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_format)
    worker = os.environ.get(workers.WORKER_ENV)
    count = workers.worker_count(cfg.cluster.workers)
    if worker is None and count > 1:
        supervisor = workers.Supervisor(
            _without_workers(argv if argv is not None else sys.argv[1:])[1:], count,
            cfg.cluster.nats_url, cfg.cluster.node_name or default_node_name(),
            cfg.http.shutdown_timeout_s)
        logging.getLogger("gateway").info(
            "gateway listening on %s://%s:%d/ with %d workers",
            "https" if cfg.http.tls_cert else "http", cfg.http.host, cfg.http.port, count)
        return asyncio.run(supervisor.run())
    from .app import create_app
    from .web import server
    from .web.keys import GATEWAY
    from .web.tls import server_tls

    try:
        tls = server_tls(cfg.http)
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("gateway").info(
        "gateway listening on %s://%s:%d/", "https" if tls else "http", cfg.http.host,
        cfg.http.port)
    app = create_app(cfg, worker=int(worker) if worker is not None else None,
                     siblings=[n for n in os.environ.get(workers.SIBLINGS_ENV, "").split(",") if n])
    heap.settle()  # freeze the start-up heap; full collections when garbage is there
    app[GATEWAY].heap = heap.Keeper()  # and, every few seconds, the sessions' objects
    loop = asyncio.new_event_loop()
    loop.set_default_executor(threads.io_executor(cfg.recording.io_threads))
    try:
        loop.run_until_complete(
            server.serve(app, cfg.http.host, cfg.http.port, cfg.http.shutdown_timeout_s,
                         reuse_port=worker is not None, tls=tls))
    except config_mod.ConfigError as exc:  # found while starting: NATS refused us, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    logging.getLogger("gateway").info("gateway stopped")
    return 0


#: Options the supervisor decides for each worker (passed in its environment instead).
_SUPERVISOR_OPTIONS = ("--workers", "--node-name", "--nats-url")


def _without_workers(argv: list[str]) -> list[str]:
    """The command line a worker gets: the supervisor's, without what differs per worker."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _SUPERVISOR_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(o + "=" for o in _SUPERVISOR_OPTIONS)):
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
