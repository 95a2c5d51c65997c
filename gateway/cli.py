"""Command line: `gateway serve` runs the gateway; `gateway config check` validates a file."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from . import cli_client, logs
from . import config as config_mod


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
    serve.add_argument("--log-level", help="debug, info, warning or error (default info)")
    serve.add_argument("--log-format", choices=["auto", "json", "text"],
                       help="json (default when stderr is not a terminal) or text")
    serve.add_argument("--insecure", action="store_true",
                       help="allow serving beyond loopback with no credentials configured")
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
    if args.log_level:
        overrides["log_level"] = args.log_level
    if args.log_format:
        overrides["log_format"] = args.log_format
    if args.insecure:
        overrides["http"]["allow_insecure"] = True
    try:
        cfg = config_mod.load(args.config, overrides, dict(os.environ))
    except config_mod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_format)
    from aiohttp import web

    from .app import create_app

    logging.getLogger("gateway").info(
        "gateway listening on http://%s:%d/", cfg.http.host, cfg.http.port
    )
    app = create_app(cfg)
    # Everything imported so far (aiortc, av, numpy, scipy: ~110k objects) lives for the whole
    # process; frozen, a full collection no longer walks it, and the event loop no longer
    # pauses ~50 ms each time one runs mid-call.
    gc.collect()
    gc.freeze()
    web.run_app(app, host=cfg.http.host, port=cfg.http.port, print=None,
                shutdown_timeout=cfg.http.shutdown_timeout_s)
    logging.getLogger("gateway").info("gateway stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
