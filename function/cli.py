"""The command line: `classify URL...` (or `python -m function`), results on stdout only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import logs
from .api import MAX_TOP_K
from .config import ConfigError, load_settings
from .errors import ClassifierError
from .pipeline import Classifier

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _top_k(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    if not 1 <= value <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_TOP_K}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="classify",
        description="Classify bird images by URL with the configured TF Hub model "
        "(CLASSIFIER_* environment variables, see README).",
    )
    p.add_argument("sources", nargs="*", metavar="URL", help="image URLs")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line")
    p.add_argument("--top-k", type=_top_k, default=None, metavar="N",
                   help=f"predictions per image, 1-{MAX_TOP_K} (default: CLASSIFIER_TOP_K or 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no logs on stderr")
    p.add_argument("--preload", action="store_true",
                   help="download (and for litert, convert) the model into the cache, then exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.sources and not args.preload:
        parser().error("give at least one URL (or --preload)")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"classify: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings, quiet=args.quiet)
    if args.quiet:
        _silence_native_stderr()
    classifier = Classifier(settings)
    try:
        if args.preload:
            classifier.model().get()
            return EXIT_OK
        failed = False
        # Bounded batches: each is one model call, and results stream out as they come.
        for start in range(0, len(args.sources), settings.max_urls):
            batch = args.sources[start:start + settings.max_urls]
            for result in classifier.classify_urls(batch, args.top_k)["results"]:
                print(json.dumps(result) if args.json else _human(result), flush=True)
                failed = failed or "error" in result
    except ClassifierError as exc:
        print(f"classify: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED if failed else EXIT_OK


def _silence_native_stderr() -> None:
    """TensorFlow and LiteRT log from C++ straight to fd 2; -q sends that to /dev/null
    while our own error messages keep a private copy of the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(saved, "w", buffering=1)


def _human(result: dict) -> str:
    if "error" in result:
        error = result["error"]
        return f"{result['url']}\n  error: {error['code']}: {error['message']}"
    lines = [result["url"]]
    for rank, p in enumerate(result["predictions"], start=1):
        lines.append(f"  {rank}. {p['label']:<40} {p['score'] * 100:6.2f}%")
    return "\n".join(lines)
