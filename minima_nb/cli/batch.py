"""``minima-nb batch list | status JOB | wait JOB | cancel JOB | cancel-all --prefix P``.

The provider batch jobs of a state file (the cache directory's, or ``PARASAIL_STATE_DIR``),
with the endpoint, key and model from the environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``,
``OPENAI_MODEL``) as for any backend. ``wait`` can be interrupted at any time: the batches keep
running remotely and ``wait`` again picks them up.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import MinimaError
from .args import fail, non_negative_float


def add_batch_command(subparsers: Any) -> None:
    """Register ``batch`` and its subcommands."""
    parser = subparsers.add_parser("batch", help="provider batch jobs: list, status, wait, cancel",
                                   description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache-dir", metavar="DIR", help="cache directory (default: $CACHE_DIR)")
    commands = parser.add_subparsers(dest="batch_command", metavar="COMMAND", required=True)
    commands.add_parser("list", help="every job: id, prefix, state, counts")
    for name, text in (("status", "poll a job once and print it"), ("wait", "wait until a job is final"),
                       ("cancel", "cancel a job (waits for its batches to stop)")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("job", metavar="JOB", help="a job id from 'batch list'")
        if name == "wait":
            sub.add_argument("--timeout", type=non_negative_float, metavar="S", help="give up after S seconds")
    everything = commands.add_parser("cancel-all", help="cancel every running job whose prefix starts with P")
    everything.add_argument("--prefix", required=True, metavar="P")
    parser.set_defaults(handler=_cmd_batch)


def _config(args: argparse.Namespace) -> Any:
    from ..config import MinimaLlmConfig

    overrides = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    return MinimaLlmConfig.from_env(**overrides)


def _print_job(info: dict[str, Any]) -> None:
    print(f"{info['job_id']}  prefix={info['prefix']!r}  {info['state']}  done={info['done']:,}  "
          f"failed={info['failed']:,}  pending={info['pending']:,}")
    for batch in info["batches"]:
        print(f"  batch {batch['batch_id'] or '<not created>'}  {batch['remote_status'] or batch['status']}  "
              f"{batch['completed'] or 0:,}/{batch['lines'] or 0:,} lines  round {batch['round']}")


def _cmd_batch(args: argparse.Namespace) -> int:
    from ..integrations.batchapi.job import BatchJob
    from ..integrations.batchapi.manage import batch_job_rows, cancel_all_batches

    try:
        config = _config(args)
        command = args.batch_command
        if command == "list":
            rows = batch_job_rows(config)
            if not rows:
                print("no batch jobs")
            for row in rows:
                print(f"{row['job_id']}  prefix={row['prefix']!r}  {row['state']}  batches={row['batches']}  "
                      f"done={row['done']:,}  failed={row['failed']:,}  pending={row['pending']:,}  "
                      f"created={row['created']:%Y-%m-%d %H:%M:%S}")
            return 0
        if command == "cancel-all":
            cancel_all_batches(config, args.prefix)
            return 0
        from ..engine.backend import OpenAIMinimaLlm

        backend = OpenAIMinimaLlm(config)  # for rows a job sends live (fallback="live")
        try:
            job = BatchJob.open(args.job, backend)
            if command == "status":
                job.status()
            elif command == "wait":
                job.wait(args.timeout)
            else:
                job.cancel()
            _print_job(job.info())
        finally:
            backend.close()
        return 0
    except MinimaError as exc:
        fail(str(exc))
        return 1
