"""hsm-cli: the admin's command line for hsmd.

    hsm-cli ping                   # any verb by name: prints its whole answer as JSON
    hsm-cli getHsmConfig rpc
    hsm-cli createVirtualDisk local 1073741824
    hsm-cli config dump            # the running hsmd's effective config
    hsm-cli config dump --config /etc/hsm/hsm.conf   # what hsmd would run with
    hsm-cli errors
    hsm-cli task wait TASK_ID
    hsm-cli image create 10G | snapshot ID | copy ID | list | info ID | remove ID
    hsm-cli repo list | check [REPO] | fix [REPO]

The words (config, errors, image, repo) print a table, or the one id a script
needs; -o json (or --json) prints the whole answer instead, --noheadings drops
tables' header line. A verb's argument that parses as JSON (a number, true,
{"a": 1}, null) is sent as that value; anything else is sent as a string.
A failure is told on stderr with its code and message. Exit status: 0 when the
answer's status code is 0, 1 when it is not, 2 when hsmd could not be asked.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import xmlrpc.client
from typing import Any, TextIO

from hsm import cli_images, errors
from hsm import config as hsmconfig
from hsm.rpc.client import (
    DEFAULT_ADDRESS,
    DEFAULT_UNIX_SOCKET,
    ServiceProxy,
    TlsFiles,
    default_address,
    unix_path,
)
from hsm.tasks.states import DONE

EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE = 0, 1, 2


def parse_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _print_json(value: Any, out: TextIO) -> None:
    json.dump(value, out, indent=2, sort_keys=True)
    out.write("\n")


def _exit_for(answer: Any) -> int:
    if isinstance(answer, dict) and answer.get("status", {}).get("code", 0) != 0:
        return EXIT_FAILED
    return EXIT_OK


def report_error(status: dict) -> None:
    print(f"hsm-cli: error {status.get('code')}: {status.get('message')}", file=sys.stderr)


def show(result: cli_images.Result, as_json: bool, headings: bool = True) -> int:
    """Print a command's result on stdout (its view, or with `as_json` its whole answer), a failure on stderr;
    returns the exit status."""
    if as_json:
        _print_json(result.answer, sys.stdout)
    else:
        view = result.view
        for line in view.lines(headings) if isinstance(view, cli_images.Table) else view:
            sys.stdout.write(line + "\n")
        for note in result.notes:
            print(f"hsm-cli: {note}", file=sys.stderr)
    error = result.error()
    if error:
        report_error(error)
        return EXIT_FAILED
    return EXIT_OK


def _format_ini(values: dict[str, dict[str, Any]]) -> str:
    lines = []
    for section, options in values.items():
        lines.append(f"[{section}]")
        for name, value in options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, list):
                value = ", ".join(value)
            elif (section, name) in (("supervdsm", "mode"), ("rpc", "unix_socket_mode")):
                value = f"0{value:o}"
            lines.append(f"{name} = {value}")
        lines.append("")
    return "\n".join(lines)


def config_command(args: argparse.Namespace, proxy_factory, as_json: bool) -> int:
    if args.action == "sample":
        sys.stdout.write(hsmconfig.sample())
        return EXIT_OK
    if args.config:
        values = hsmconfig.load(args.config).as_wire()  # what a running hsmd would answer
    else:
        answer = proxy_factory().getHsmConfig()
        if _exit_for(answer) != EXIT_OK:
            return show(cli_images.Result(answer), as_json)
        values = answer["config"]
    if as_json:
        _print_json(values, sys.stdout)
    else:
        sys.stdout.write(_format_ini(values))
    return EXIT_OK


def errors_command(as_json: bool) -> int:
    table = [{"code": cls.code, "name": cls.__name__, "message": cls.message} for cls in errors.all_errors()]
    if as_json:
        _print_json(table, sys.stdout)
    else:
        for row in table:
            print(f"{row['code']:>5}  {row['name']:<42} {row['message']}")
    return EXIT_OK


def _progress_line(status: dict, width: int = 30) -> tuple[str, str]:
    """(bar, plain) renderings of one task status."""
    percent = int(status.get("percentComplete", -1))
    stage = status.get("stage") or "-"
    state = status.get("state", "")
    if percent < 0:
        bar = "[" + "?" * width + "]   ?%"
    else:
        filled = width * min(percent, 100) // 100
        bar = f"[{'#' * filled}{' ' * (width - filled)}] {percent:3d}%"
    return f"{bar} stage {stage} {state}", f"state={state} stage={stage} percent={percent}"


def task_wait(proxy: ServiceProxy, task_id: str, interval: float, out: TextIO, as_json: bool = False) -> int:
    """Poll until the task is done; a bar on a terminal, a line per change otherwise; then its status as JSON."""
    answer = cli_images.poll(lambda: proxy.getTaskStatus(task_id),
                             lambda answer: answer["taskStatus"].get("state") in DONE, out, interval,
                             lambda answer: _progress_line(answer["taskStatus"])[0],
                             lambda answer: _progress_line(answer["taskStatus"])[1])
    if _exit_for(answer) != EXIT_OK:
        return show(cli_images.Result(answer), as_json)
    status = answer["taskStatus"]
    _print_json(status, out)
    if status.get("taskResult") == "success":
        return EXIT_OK
    report_error({"code": status.get("code"), "message": f"task {task_id} ended {status.get('taskResult')}: "
                                                         f"{status.get('message')}"})
    return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsm-cli", parents=[cli_images.output_options()],
                                     description="The admin's command line for hsmd.",
                                     epilog="Any other word is a verb: hsm-cli VERB [ARG...] prints its answer as JSON")
    parser.add_argument("--address", default=os.environ.get("HSM_ADDRESS"),
                        help="hsmd's HOST:PORT or unix:/path/to/socket (default $HSM_ADDRESS, else hsm.conf's "
                             f"[rpc] unix_socket or {DEFAULT_UNIX_SOCKET} if it exists, else {DEFAULT_ADDRESS})")
    parser.add_argument("--tls", nargs=3, metavar=("KEY", "CERT", "CA"),
                        help="connect with TLS using this client key and certificate, trusting CA")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")
    parser.add_argument("verb", help="a verb, or one of: config, errors, task, image, repo")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the verb's arguments")
    return parser


def _sub_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"hsm-cli {command}", parents=[cli_images.output_options()])
    if command == "config":
        parser.add_argument("action", choices=["dump", "sample"])
        parser.add_argument("--config", help="compute from this hsm.conf instead of asking hsmd")
    elif command == "task":
        parser.add_argument("action", choices=["wait"])
        parser.add_argument("task_id")
        parser.add_argument("--interval", type=float, default=0.5)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tls = TlsFiles(*args.tls) if args.tls else None
    if args.address is None:
        args.address = DEFAULT_ADDRESS if tls else default_address()
    elif tls and unix_path(args.address) is not None:
        print("hsm-cli: --tls is not used with a unix: address", file=sys.stderr)
        return EXIT_UNREACHABLE

    made: list[ServiceProxy] = []

    def proxy() -> ServiceProxy:
        made.append(ServiceProxy(args.address, tls=tls, timeout=args.timeout))
        return made[-1]

    try:
        if args.verb in ("config", "errors", "task"):
            sub = _sub_parser(args.verb).parse_args(args.args)
            as_json = (sub.output or args.output) == "json"
            if args.verb == "config":
                return config_command(sub, proxy, as_json)
            if args.verb == "errors":
                return errors_command(as_json)
            return task_wait(proxy(), sub.task_id, sub.interval, sys.stdout, as_json)
        if args.verb in ("image", "repo"):
            if args.verb == "image":
                sub = cli_images.parser().parse_args(args.args)
                result = cli_images.image_command(sub, proxy())
            else:
                sub = cli_images.repo_parser().parse_args(args.args)
                result = cli_images.repo_command(sub, proxy())
            return show(result, (sub.output or args.output) == "json", not (sub.noheadings or args.noheadings))
        return show(cli_images.Result(proxy().call(args.verb, *map(parse_argument, args.args))), as_json=True)
    except KeyboardInterrupt:  # Ctrl-C while waiting: what hsmd started goes on
        print("hsm-cli: interrupted; hsmd goes on with what it started", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (hsm-cli ... | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except xmlrpc.client.Fault as e:
        print(f"hsm-cli: hsmd refused the call: {e.faultString} (fault {e.faultCode})", file=sys.stderr)
    except (TimeoutError, OSError, ssl.SSLError, xmlrpc.client.ProtocolError) as e:
        print(f"hsm-cli: cannot reach hsmd at {args.address}: {e}", file=sys.stderr)
    except errors.ConfigError as e:
        print(f"hsm-cli: {e}", file=sys.stderr)
    finally:
        for made_proxy in made:
            made_proxy.close()
    return EXIT_UNREACHABLE


if __name__ == "__main__":
    sys.exit(main())
