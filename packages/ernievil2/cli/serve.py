"""`python -m ernievil2 serve CONFIG INDEX_DIR`: the HTTP search service and its web page."""
import argparse
import sys

from .common import guarded, parse_with_overrides


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 serve",
                                     description="Serve search over an index: GET /search?text=..., POST /search "
                                                 "(image upload), GET /healthz, and a web page at /.")
    parser.add_argument("config", help="inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    parser.add_argument("index_dir", metavar="INDEX_DIR")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image accepted (default 10)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests whose Host header is NAME (repeatable; '*' for any). The "
                             "bound address and localhost always are")
    parser.add_argument("--workers", type=int, default=2, help="threads decoding and embedding queries (default 2)")
    parser.add_argument("--queue", type=int, default=32,
                        help="queries that may wait for a worker; more are answered 503 (default 32)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a query is answered 504")
    parser.add_argument("--reload-every", type=float, default=2.0, metavar="SECONDS",
                        help="check INDEX_DIR for a rebuilt or synced index this often and swap it in without a "
                             "restart (0: only on POST /admin/reload; default 2)")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        import uvicorn

        from ..serve.app import load_app
        from ..serve.service import ServeSettings
        settings = ServeSettings(host=args.host, allow_hosts=tuple(args.allow_host),
                                 max_upload_bytes=int(args.max_upload_mb * (1 << 20)), workers=args.workers,
                                 queue_size=args.queue, timeout=args.timeout, reload_seconds=args.reload_every)
        app = load_app(args.config, overrides, args.index_dir, settings)
        print(f"serving {args.index_dir} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    return guarded(run)
