"""The command line: `classify URL|PATH|GLOB...` (or `python -m function`), results on stdout only.

A cold run can be no faster than its slowest download plus one model call, so the
first batch starts downloading before anything the downloads do not need is imported
(numpy, Pillow, the runtime, the progress bar): those imports and the model load
happen while the images arrive.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import itertools
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import NoReturn

from . import fetch, files, logs
from .config import ConfigError, Settings, choose_model, load_settings, model_specs
from .errors import BadRequest, ClassifierError, UnknownModel
from .options import MAX_TOP_K, check_top_k
from .source import Source

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)  # anything else is a local path or glob


def _top_k(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {raw!r}") from None
    try:
        return check_top_k(value)  # the API's own bounds
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _regex(raw: str) -> re.Pattern[str]:
    try:
        return re.compile(raw)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {exc}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="classify",
        description="Classify bird images by URL or local file with the configured TF Hub model "
        "(CLASSIFIER_* environment variables, see README).",
    )
    p.add_argument("sources", nargs="*", metavar="SOURCE",
                   help="image URLs, files, directories (their files; all levels with -r) "
                   "or quoted glob patterns like 'photos/**/*.jpg'")
    p.add_argument("-r", "--recursive", action="store_true", help="walk directories' subdirectories too")
    p.add_argument("--match", type=_regex, default=re.compile(files.IMAGE_FILES), metavar="REGEX",
                   help="keep files found in directories and globs whose path this matches "
                   "(default: image extensions)")
    p.add_argument("--model", default=None, metavar="NAME",
                   help="a model from CLASSIFIER_MODELS (default: birds)")
    p.add_argument("--json", action="store_true", help="one JSON object per image and line")
    p.add_argument("--top-k", type=_top_k, default=None, metavar="N",
                   help=f"predictions per image, 1-{MAX_TOP_K} (default: CLASSIFIER_TOP_K or 3)")
    p.add_argument("-q", "--quiet", action="store_true", help="no logs on stderr")
    p.add_argument("--preload", action="store_true",
                   help="download (and for litert, convert) every configured model, or only --model's, "
                        "into the cache, then exit")
    return p


def run() -> NoReturn:
    """The `classify` command and `python -m function`: main(), then exit with the garbage
    collector frozen. The interpreter's last collections over numpy, requests, Pillow and
    the runtime took ~40 ms after the last result was out (docs/performance.md); exit
    hooks (log handlers, TensorFlow's temporary files) still run."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.sources and not args.preload:
        parser().error("give at least one URL, file, directory or glob (or --preload)")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"classify: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings, quiet=args.quiet)
    if args.quiet:
        warnings.simplefilter("ignore")  # libraries' own warnings (pkg_resources) too
        _silence_native_stderr()
    try:
        choose_model(model_specs(settings), args.model)
    except UnknownModel as exc:  # a usage error: nothing was tried yet
        print(f"classify: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _preload(settings, args.model) if args.preload else _classify(args, settings)
    except ClassifierError as exc:
        print(f"classify: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_FAILED


def _preload(settings: Settings, name: str | None) -> int:
    """Every configured model, or only `name`, so a baked image never downloads one."""
    from .pipeline import Classifier

    classifier = Classifier(settings)
    for lazy in [classifier.model(name)] if name else classifier.models.values():
        lazy.get()
    return EXIT_OK


def _classify(args: argparse.Namespace, settings: Settings) -> int:
    session = fetch.make_session(settings)
    # Bounded batches of lazily found sources: each is one model call, and its results
    # stream out before the next batch is even listed.
    batches = _batches(_sources(args, settings, session), settings.max_urls)
    with concurrent.futures.ThreadPoolExecutor(settings.fetch_workers, thread_name_prefix="early") as early:
        first = [_started(early, source) for source in next(batches)]
        # Imported only now, while the first batch downloads (see the module's docstring).
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        from .pipeline import Classifier

        classifier = Classifier(settings, session)
        failed = False
        progress = tqdm(unit="img", file=sys.stderr, disable=args.quiet or not sys.stderr.isatty())
        with progress, logging_redirect_tqdm([logging.getLogger("function")]):
            for batch in itertools.chain([first], batches):
                results = classifier.classify(batch, args.top_k, args.model)["results"]
                with tqdm.external_write_mode(file=sys.stdout):
                    for result in results:
                        print(json.dumps(result) if args.json else _human(result), flush=True)
                        failed = failed or "error" in result
                progress.update(len(batch))
    return EXIT_FAILED if failed else EXIT_OK


def _sources(args: argparse.Namespace, settings: Settings, session: fetch.Session) -> Iterator[Source]:
    """In argument order: URLs as given, local arguments expanded as they are reached."""
    for arg in args.sources:
        if URL.match(arg):
            yield fetch.url_source(session, arg, settings)
        else:
            yield from files.sources(arg, args.recursive, args.match, settings.max_image_bytes)


def _started(pool: concurrent.futures.Executor, source: Source) -> Source:
    """`source` with its load already running in `pool`; loading it waits for that."""
    return Source(source.name, pool.submit(source.load).result)


def _batches(items: Iterable[Source], size: int) -> Iterator[list[Source]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


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
