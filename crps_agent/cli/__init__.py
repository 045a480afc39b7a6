"""The `crps-agent` command line. Command groups live in one module each; heavy libraries
are imported inside commands so `crps-agent --help` starts fast."""

from __future__ import annotations

import os
import sys

import click

from crps_agent.cli.adapters import adapters, adopt, rollback
from crps_agent.cli.bench import bench
from crps_agent.cli.eval_cmd import eval_
from crps_agent.cli.export import export
from crps_agent.cli.insights import insights
from crps_agent.cli.mcp_cmd import mcp_
from crps_agent.cli.plugins_cmd import plugins
from crps_agent.cli.run import learn, solve
from crps_agent.cli.serve import serve
from crps_agent.cli.sim_cmd import sim
from crps_agent.cli.train import finetune
from crps_agent.cli.tree import tree


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crps-agent")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """crps-agent: an LLM agent that improves from its own attempts.

    It attempts tasks, contrasts its successes with its failures, distils the contrast into
    short insights stored in ChromaDB, and recalls them into future prompts.
    """


cli.add_command(learn)
cli.add_command(solve)
cli.add_command(insights)
cli.add_command(plugins)
cli.add_command(bench)
cli.add_command(tree)
cli.add_command(export)
cli.add_command(finetune)
cli.add_command(adopt)
cli.add_command(rollback)
cli.add_command(adapters)
cli.add_command(eval_)
cli.add_command(sim)
cli.add_command(mcp_)
cli.add_command(serve)


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors become one readable line on stderr (a traceback with --debug)."""
    from crps_agent.errors import CrpsError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("CRPS_DEBUG") == "1"
    if debug:  # accepted anywhere on the line, not only before the command
        args = ["--debug", *(a for a in args if a != "--debug")]
    try:
        cli.main(args=args, prog_name="crps-agent", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except CrpsError as exc:
        if debug:
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        click.echo(f"Error: unexpected {type(exc).__name__}: {exc} "
                   "(rerun with --debug for the traceback)", err=True)
        sys.exit(1)
