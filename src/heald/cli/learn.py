"""``heald learn``: the learned success rate of each remedy per incident category
(:mod:`heald.learn`)."""

from __future__ import annotations

import typer
from rich.table import Table

from heald.cli._common import JsonOpt, app, config, open_store, out, print_json


@app.command()
def learn(category: str | None = typer.Option(None, "--category", help="Only this incident category."),
          json_out: bool = JsonOpt) -> None:
    """Show what heald learned from outcomes: per incident category and remedy, the attempts
    that healed and that did not, and the success rate (mean of the Beta posterior) the plan's
    Thompson sampling draws from."""
    from heald.learn import learned_rows

    rows = learned_rows(open_store(config(), write=False), category)
    if json_out:
        print_json(rows)
        return
    if not rows:
        out.print("no outcomes recorded yet" + (f" for category {category!r}" if category else "")
                  + ": every plan follows its runbook's order until one is.")
        return
    table = Table(title="learned success rates")
    for col, justify in (("category", "left"), ("remedy", "left"), ("healed", "right"), ("not healed", "right"),
                         ("success rate", "right"), ("", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        rate = r["success_rate"]
        colour = "green" if rate >= 0.7 else "yellow" if rate >= 0.4 else "red"
        table.add_row(r["category"], r["remedy"], str(r["successes"]), str(r["failures"]),
                      f"[{colour}]{rate:.0%}[/]", f"[{colour}]{'█' * round(rate * 10)}[/]")
    out.print(table)
