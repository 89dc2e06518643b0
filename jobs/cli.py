"""`netmon-jobs`: the cost job, the simulator and the lake validator.

Every flag can also come from the environment variable named in its help. Bad input prints one
`error: ...` line and exits 2.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import sys

UTC = dt.timezone.utc


class CliError(Exception):
    """Bad command-line input."""


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


def _env(name: str, default=None):
    v = os.environ.get(name)
    return v if v not in (None, "") else default


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="netmon-jobs", description="netmon batch jobs over the lake")
    sub = p.add_subparsers(dest="command", metavar="{cost,simulate,validate}")
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
    c.add_argument("--quiet", action="store_true", help="no progress lines")
    sub.add_parser("simulate", help="write a simulated cluster's lake (see netmon-jobs simulate --help)",
                   add_help=False)
    sub.add_parser("validate", help="check the lake's files against the contract", add_help=False)
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
    res = R.run_cost_job(opts)
    print(sm.format_summary(res.summary, hours=len(res.hours_computed), retiered=len(res.hours_retiered),
                            rows_in=res.rows_in, files=res.files_read, quarantined=res.quarantined,
                            duplicates=len(res.duplicates), seconds=res.seconds))
    return 0


def _delegate(module: str, argv: list[str], what: str) -> int:
    if importlib.util.find_spec(module) is None:
        raise CliError(f"{what} is not implemented yet ({module} is missing)")
    mod = importlib.import_module(module)
    if not hasattr(mod, "main"):
        raise CliError(f"{what} is not implemented yet ({module}.main is missing)")
    rc = mod.main(argv)
    return int(rc or 0)


def _error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input or an unreachable lake: one line, exit 2."""
    types: list[type[BaseException]] = [CliError, ValueError, FileNotFoundError, PermissionError]
    from lake.storage import LakeError  # noqa: PLC0415
    types.append(LakeError)
    for mod, name in (("jobs.run", "JobError"), ("jobs.config", "ConfigError"), ("simulator.simulate", "SimulateError"),
                      ("jobs.validate", "ValidateError"), ("jobs.ipranges", "IPRangesError")):
        m = sys.modules.get(mod)
        if m is not None and isinstance(getattr(m, name, None), type):
            types.append(getattr(m, name))
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        if argv and argv[0] in ("simulate", "validate"):
            rc = _delegate({"simulate": "simulator.simulate", "validate": "jobs.validate"}[argv[0]], argv[1:], argv[0])
        else:
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
            rc = _cost(args)
    except Exception as exc:  # noqa: BLE001 - filtered below
        if not isinstance(exc, _error_types()) or os.environ.get("NETMON_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
