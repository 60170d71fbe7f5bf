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
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        import uvicorn

        from ..serve.app import load_app
        app = load_app(args.config, overrides, args.index_dir, int(args.max_upload_mb * (1 << 20)))
        print(f"serving {args.index_dir} on http://{args.host}:{args.port}/", file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    return guarded(run)
