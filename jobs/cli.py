"""`netmon-jobs`: the cost job, the simulator, the lake validator, the report and SQL.

Every flag can also come from the environment variable named in its help. Every failure prints
one `error: ...` line: bad input, an unreachable or failing lake, a full disk or a refused
permission (also inside Ray tasks) exit 2; an unexpected internal error exits 1 (NETMON_DEBUG=1
shows its traceback). SIGTERM and SIGINT stop the job cleanly: the local Ray it started is shut
down, and it exits 143 / 130.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import signal
import sys

UTC = dt.timezone.utc


class CliError(Exception):
    """Bad command-line input."""


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt, so no `except Exception` on
    the way out swallows it and every `finally` runs: the local Ray is shut down)."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise Terminated()


def parse_time(text: str) -> dt.datetime:
    """ISO 8601 date or date-time; naive means UTC (`2026-03-02`, `2026-03-02T10:00`, `...Z`)."""
    t = text.strip()
    if t.endswith("Z") or t.endswith("z"):
        t = t[:-1] + "+00:00"
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        raise CliError(f"invalid time {text!r}: expected ISO 8601, e.g. 2026-03-02T10:00Z") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise CliError(f"invalid --cell-rows {text!r}: expected a positive integer") from None
    if n <= 0:
        raise CliError(f"invalid --cell-rows {text!r}: expected a positive integer")
    return n


def _env(name: str, default=None):
    v = os.environ.get(name)
    return v if v not in (None, "") else default


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netmon-jobs", description="netmon batch jobs over the lake")
    sub = p.add_subparsers(dest="command", metavar="{cost,simulate,validate,report,sql,views,release}")
    c = sub.add_parser("cost", help="resolve, classify and price new raw flows (a Ray job)",
                       description="Cost the raw flows not yet processed (or every hour in "
                                   "[--start, --end), recomputed) and write costs/ tables.")
    c.add_argument("--lake", default=_env("NETMON_LAKE"), help="lake URL: dir, file://, s3://... [NETMON_LAKE]")
    c.add_argument("--start", default=_env("NETMON_START"), type=parse_time,
                   help="recompute hours overlapping [start, end) (ISO 8601, UTC) [NETMON_START]")
    c.add_argument("--end", default=_env("NETMON_END"), type=parse_time, help="see --start [NETMON_END]")
    c.add_argument("--ray-address", default=_env("RAY_ADDRESS"),
                   help="Ray cluster address; default: a local Ray on loopback [RAY_ADDRESS]")
    c.add_argument("--config", default=_env("NETMON_JOB_CONFIG"), help="job config YAML/JSON [NETMON_JOB_CONFIG]")
    c.add_argument("--ip-ranges", default=_env("NETMON_IP_RANGES"),
                   help="directory of published cloud IP ranges [NETMON_IP_RANGES]")
    c.add_argument("--s3-endpoint", default=_env("NETMON_S3_ENDPOINT"),
                   help="S3 endpoint URL (MinIO, moto) [NETMON_S3_ENDPOINT]")
    c.add_argument("--executor", default=_env("NETMON_EXECUTOR", "ray"), choices=("ray", "inline"),
                   help="ray (default: a local Ray, or the cluster at --ray-address) or inline (the same "
                        "tasks in this process: small lakes, profiling) [NETMON_EXECUTOR]")
    c.add_argument("--wait", default=float(_env("NETMON_WAIT", 0)), type=float, metavar="SECONDS",
                   help="if another cost run holds the lake's lease, wait up to SECONDS for it "
                        "(default 0: fail at once) [NETMON_WAIT]")
    c.add_argument("--lateness", default=float(_env("NETMON_LATENESS_H", 48)), type=float, metavar="HOURS",
                   help="look for late raw files this many hours before the newest committed hour "
                        "(older ones: use --start/--end) [NETMON_LATENESS_H]")
    c.add_argument("--cell-rows", default=_env("NETMON_CELL_ROWS"), type=_positive_int,
                   help="raw rows per work cell; a task's memory follows from it (default 400000) "
                        "[NETMON_CELL_ROWS]")
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    sub.add_parser("simulate", help="write a simulated cluster's lake (see netmon-jobs simulate --help)",
                   add_help=False)
    sub.add_parser("validate", help="check the lake's files against the contract", add_help=False)
    sub.add_parser("report", help="write a self-contained HTML cost report for a date range", add_help=False)
    sub.add_parser("sql", help="run one DuckDB query over exactly the committed cost files", add_help=False)
    sub.add_parser("views", help="print DuckDB views over exactly the committed cost files", add_help=False)
    sub.add_parser("release", help="move quarantined files back so the next run costs them "
                                   "(see netmon-jobs release --help)", add_help=False)
    return p


def _cost(args) -> int:
    from jobs import run as R  # noqa: PLC0415 - keeps `--help` fast
    from jobs import summary as sm  # noqa: PLC0415
    if not args.lake:
        raise CliError("--lake is required (or set NETMON_LAKE)")
    if args.wait < 0 or args.lateness < 0:
        raise CliError("--wait and --lateness must not be negative")
    opts = R.JobOptions(
        lake_url=args.lake, s3_endpoint=args.s3_endpoint, start=args.start, end=args.end,
        ray_address=args.ray_address, config_path=args.config, ip_ranges_dir=args.ip_ranges,
        wait_s=args.wait, executor=args.executor, lateness=dt.timedelta(hours=args.lateness), progress=None if args.quiet else sys.stderr,
    )
    if args.cell_rows is not None:
        opts.cell_rows = int(args.cell_rows)
    res = R.run_cost_job(opts)
    print(sm.format_summary(res.summary, hours=len(res.hours_computed), retiered=len(res.hours_retiered),
                            rows_in=res.rows_in, files=res.files_read, quarantined=res.quarantined,
                            duplicates=len(res.duplicates), seconds=res.seconds,
                            inventory_gaps=res.inventory_gaps, renamed=len(res.hours_renamed)))
    return 0


def _delegate(target: str, argv: list[str], what: str) -> int:
    module, _, func = target.partition(":")
    func = func or "main"
    if importlib.util.find_spec(module) is None:
        raise CliError(f"{what} is not implemented yet ({module} is missing)")
    mod = importlib.import_module(module)
    if not hasattr(mod, func):
        raise CliError(f"{what} is not implemented yet ({module}.{func} is missing)")
    rc = getattr(mod, func)(argv)
    return int(rc or 0)


def _error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or an unreachable lake: one line, exit 2."""
    types: list[type[BaseException]] = [CliError, ValueError, OSError]
    from lake.storage import LakeError  # noqa: PLC0415
    types.append(LakeError)
    for mod, name in (("jobs.run", "JobError"), ("jobs.config", "ConfigError"), ("simulator.simulate", "SimulateError"),
                      ("jobs.validate", "ValidateError"), ("jobs.ipranges", "IPRangesError"),
                      ("jobs.release", "ReleaseError")):
        m = sys.modules.get(mod)
        if m is not None and isinstance(getattr(m, name, None), type):
            types.append(getattr(m, name))
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    delegates = {"simulate": "simulator.simulate", "validate": "jobs.validate", "report": "jobs.report",
                 "release": "jobs.release", "sql": "jobs.sqlviews:sql_main", "views": "jobs.sqlviews:views_main"}
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        if argv and argv[0] in delegates:
            rc = _delegate(delegates[argv[0]], argv[1:], argv[0])
        else:
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
            rc = _cost(args)
    except Exception as exc:  # noqa: BLE001 - every failure is one line
        signalled = _signalled(exc)
        if isinstance(signalled, Terminated):
            print("error: terminated (SIGTERM)", file=sys.stderr)
            return _terminated()
        if isinstance(signalled, KeyboardInterrupt):
            print("error: interrupted", file=sys.stderr)
            return 130
        if os.environ.get("NETMON_DEBUG"):
            raise
        if isinstance(exc, _error_types()):
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
        print(f"error: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(NETMON_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return _terminated()
    except SystemExit as exc:
        # Ray's own SIGTERM handler (active while it starts, and in some of its code paths)
        # exits with the signal number after stopping its processes: report it the same way
        if exc.code != signal.SIGTERM:
            raise
        print("error: terminated (SIGTERM)", file=sys.stderr)
        return _terminated()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return rc


def _signalled(exc: BaseException) -> BaseException | None:
    """The SIGTERM or Ctrl-C behind `exc`: a signal that lands while Ray's compiled code runs
    surfaces as that code's SystemError, with the signal's exception as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (Terminated, KeyboardInterrupt)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _terminated() -> int:
    """143 after SIGTERM (the executor has shut the job's local Ray down on the way out)."""
    return 143


def _main_thread() -> bool:
    import threading  # noqa: PLC0415
    return threading.current_thread() is threading.main_thread()


def _one_line(exc: BaseException) -> str:
    """The message without line breaks; OSErrors keep their path (`[Errno 28] ...: '/lake/x'`)."""
    return " ".join(str(exc).split())[:1000] or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
